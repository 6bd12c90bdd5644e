"""The Twisted side of Kegboards: ports, discovery, naming, reconnection.

A thin adapter around :mod:`kegtwist.protocol.kbsp`.  One :class:`BoardLink` per
device node (or TCP bridge) opens the port, pings until a hello names the
board, turns messages into :mod:`kegtwist.core.inputs` values with full names,
watches the hello heartbeat and reopens with backoff.  :class:`BoardService`
turns ``--kegboard`` specs into links, rescans globs and keeps board names
unique.

Decisions:

* A board is named by its hello, never by its port: the host pings on open
  (the boot hello is usually missed) and every 2 s until one arrives.
  Messages that come before the hello are held (at most 64) and handed on
  once the board has a name, so the first meter reading is not lost.
* No hello for 30 s (the board sends one every 10 s) means the board is hung
  or gone: the port is closed, the board reported gone, and the port
  reopened, which on an Arduino also resets the board.
* A second board claiming a name in use is refused: its messages are
  ignored and its port stays open so that it is accepted, at its next hello,
  once the first board is gone.
* Explicit paths and ``tcp:`` bridges are reopened forever, backoff capped at
  5 s; glob matches are dropped when their node disappears and a rescan every
  2 s picks up new nodes (a replugged board often comes back as ``ttyUSB1``).
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kegtwist.backoff import Backoff
from kegtwist.boards import naming
from kegtwist.boards.spec import AUTO_GLOBS, BoardSpec, parse_board_spec, parse_board_specs
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    BoardInput,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)
from kegtwist.protocol import kbsp
from kegtwist.ratelimit import RateLimiter

BAUD_RATE = 115200
PING_INTERVAL = 2.0
HELLO_TIMEOUT = 30.0
RESCAN_INTERVAL = 2.0
PENDING_LIMIT = 64
REJECT_LOG_INTERVAL = 60.0

InputSink = Callable[[BoardInput], None]
FrameObserver = Callable[["BoardLink", kbsp.Event], None]


# --- protocol -------------------------------------------------------------


_CLOSED = Failure(ConnectionDone("port closed"))


class KegboardProtocol(Protocol):
    """Moves bytes between a transport and the codec; no policy here."""

    def __init__(self, link: BoardLink) -> None:
        self.link = link
        self.decoder = kbsp.Decoder()

    def connectionMade(self) -> None:
        self.link.port_opened(self)

    def dataReceived(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            self.link.frame_received(event)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        self.link.port_closed(self, reason)

    def send(self, message: kbsp.Message) -> None:
        assert self.transport is not None
        self.transport.write(kbsp.encode(message))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


Opener = Callable[[KegboardProtocol], "defer.Deferred[Any]"]


def serial_opener(reactor: Any, device: str) -> Opener:
    """Open ``device`` with Twisted's SerialPort (synchronous, may raise),
    exclusively: a port another program holds (another daemon, a
    kegboard-* tool) fails with :class:`~kegtwist.boards.serial_lock.PortInUseError`
    and is left alone (see :mod:`kegtwist.boards.serial_lock`)."""

    def open_port(proto: KegboardProtocol) -> defer.Deferred[Any]:
        from kegtwist.boards.serial_lock import exclusive_serial_port

        try:
            exclusive_serial_port()(proto, device, reactor, baudrate=BAUD_RATE)
        except Exception as e:  # pyserial raises SerialException/OSError/ValueError
            return defer.fail(e)
        return defer.succeed(None)

    return open_port


def tcp_opener(reactor: Any, spec: str) -> Opener:
    """Connect to a serial-over-TCP bridge (ser2net) given as tcp:HOST:PORT."""
    host, _, port = spec[4:].rpartition(":")
    host = host.strip("[]").replace(":", "\\:")  # endpoint strings escape colons
    endpoint = clientFromString(reactor, f"tcp:host={host}:port={port}")

    def open_port(proto: KegboardProtocol) -> defer.Deferred[Any]:
        connecting: defer.Deferred[Any] = endpoint.connect(Factory.forProtocol(lambda: proto))
        return connecting

    return open_port


def describe_open_error(device: str, error: BaseException) -> str:
    """A line a Kegbot owner can act on."""
    err = getattr(error, "errno", None)
    text = str(error) or type(error).__name__
    if err == errno.EBUSY:  # serial_lock.PortInUseError, or TIOCEXCL refusing open()
        return (
            f"{device} is in use by another program (another kegbot daemon, "
            "kegboard-monitor, kegboard-info or kegboard-set-serial)"
        )
    if err == errno.EACCES or "Permission denied" in text:
        return (
            f"permission denied opening {device}: add the daemon's user to the "
            "'dialout' group (see README, serial-port permissions)"
        )
    if err == errno.ENOENT or "No such file" in text or "could not open port" in text:
        return f"{device} is not there (unplugged?): {text}"
    return f"cannot open {device}: {text}"


# --- one board ------------------------------------------------------------


class BoardLink:
    """One device node or bridge, and the board behind it if any."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        service: BoardService,
        device: str,
        opener: Opener,
        clock: IReactorTime,
        *,
        from_glob: bool = False,
    ) -> None:
        self.service = service
        self.device = device
        self.opener = opener
        self.clock = clock
        self.from_glob = from_glob
        self.state = "closed"  # closed, opening, waiting, named, refused, stopped
        self.name: str | None = None
        self.hello: kbsp.Hello | None = None
        self.protocol: KegboardProtocol | None = None
        self.backoff = Backoff(initial=0.5, factor=2.0, maximum=5.0)
        self._reopen: IDelayedCall | None = None
        self._ping: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None
        self._pending: list[kbsp.Message] = []
        self._pings_unanswered = 0
        self._last_open_error: str | None = None
        self._closed: defer.Deferred[None] | None = None
        # Garbage on the line (a wrong baud rate, another device) is logged
        # at most once a minute per kind, with a count.
        self._log_limit = RateLimiter(REJECT_LOG_INTERVAL)

    def __repr__(self) -> str:
        return f"<BoardLink {self.device} {self.state} name={self.name}>"

    # lifecycle

    def start(self) -> None:
        if self.state in ("closed",):
            self._open()

    def stop(self) -> defer.Deferred[None]:
        """Close the port; the Deferred fires once it is closed."""
        previous = self.state
        self.state = "stopped"
        self._cancel_timers()
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        if self.protocol is not None and previous in ("waiting", "named", "refused"):
            self._closed = defer.Deferred()
            self.protocol.close()
            return self._closed
        return defer.succeed(None)

    def _open(self) -> None:
        self.state = "opening"
        self._reopen = None
        proto = KegboardProtocol(self)
        d = self.opener(proto)
        d.addErrback(self._open_failed)

    def _open_failed(self, failure: Failure) -> None:
        if self.state == "stopped":
            return
        self.state = "closed"
        message = describe_open_error(self.device, failure.value or Exception("unknown error"))
        if message != self._last_open_error:
            self.log.warn(
                "Kegboard {device}: {problem}; retrying", device=self.device, problem=message
            )
            self._last_open_error = message
        else:
            self.log.debug("Kegboard {device}: {problem}", device=self.device, problem=message)
        self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        if self.state == "stopped":
            return
        if self.from_glob and not os.path.exists(self.device):
            # The node is gone; the next rescan creates a link if it returns.
            self.service.forget(self)
            return
        delay = self.backoff.next_delay()
        self._reopen = self.clock.callLater(delay, self._open)

    # called by the protocol

    def port_opened(self, proto: KegboardProtocol) -> None:
        if self.state == "stopped":
            proto.close()
            return
        self.protocol = proto
        self.state = "waiting"
        self._last_open_error = None
        self._pings_unanswered = 0
        self.log.info("Opened {device}; pinging for the board's hello", device=self.device)
        self._send_ping()

    def port_closed(self, proto: KegboardProtocol, reason: Failure) -> None:
        if proto is not self.protocol:
            return
        self.protocol = None
        self._cancel_timers()
        self._pending.clear()
        if self.name is not None:
            self._release(reason.getErrorMessage() or "port closed")
        if self.state == "stopped":
            if self._closed is not None:
                closed, self._closed = self._closed, None
                closed.callback(None)
            return
        self.state = "closed"
        self.log.info(
            "Port {device} closed: {reason}", device=self.device, reason=reason.getErrorMessage()
        )
        self._schedule_reopen()

    def frame_received(self, event: kbsp.Event) -> None:
        observer = self.service.frame_observer
        if observer is not None:
            observer(self, event)
        if self.state == "stopped":  # the observer may have stopped us
            return
        if isinstance(event, kbsp.FrameRejected):
            self._rejected(event)
            return
        if isinstance(event, kbsp.Hello):
            self._hello(event)
            return
        if isinstance(event, kbsp.UnknownMessage):
            if self._log_limit.allow("unknown", self.clock.seconds()):
                self.log.warn(
                    "Kegboard {device}: unknown message 0x{message_id:02x} ignored{more}",
                    device=self.device,
                    message_id=event.message_id,
                    more=self._log_limit.note("unknown"),
                )
            return
        if self.state == "named":
            self._deliver(event)
        elif self.state == "waiting" and len(self._pending) < PENDING_LIMIT:
            self._pending.append(event)

    # sending

    def send(self, message: kbsp.Message) -> bool:
        """Send a command; False if the port is not open."""
        if self.protocol is None or self.state not in ("waiting", "named", "refused"):
            return False
        self.protocol.send(message)
        return True

    @property
    def stats(self) -> kbsp.DecoderStats | None:
        return self.protocol.decoder.stats if self.protocol is not None else None

    # internals

    def _send_ping(self) -> None:
        self._ping = None
        if self.protocol is None:
            return
        if self._pings_unanswered * PING_INTERVAL == HELLO_TIMEOUT:
            self.log.warn(
                "No Kegboard answered on {device} for {seconds:.0f} s; still pinging",
                device=self.device,
                seconds=self._pings_unanswered * PING_INTERVAL,
            )
        self.protocol.send(kbsp.Ping())
        self._pings_unanswered += 1
        self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping)

    def _hello(self, hello: kbsp.Hello) -> None:
        self.hello = hello
        self._pings_unanswered = 0
        self.backoff.reset()
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        self._arm_watchdog()
        name = naming.board_name(hello.serial_number)
        if self.state == "named" and name == self.name:
            return
        if self.name is not None and name != self.name:
            self._release("renamed to " + name)
        if self.service.claim(name, self):
            if self.state == "refused":
                self.log.info(
                    "Board on {device} now accepted as {board}", device=self.device, board=name
                )
            self.name = name
            self.state = "named"
            self.log.info(
                "Kegboard {board} connected on {device} (firmware {firmware})",
                board=name,
                device=self.device,
                firmware=hello.firmware_version,
            )
            self.service.emit(
                BoardConnected(
                    name,
                    self.device,
                    hello.firmware_version,
                    hello.serial_number or "",
                    hello.uptime_seconds,
                )
            )
            pending, self._pending = self._pending, []
            for message in pending:
                self._deliver(message)
        else:
            self.state = "refused"
            self._pending.clear()

    def _deliver(self, message: kbsp.Message) -> None:
        name = self.name
        assert name is not None
        emit = self.service.emit
        if isinstance(message, kbsp.MeterStatus):
            meter = naming.full_name(name, message.meter_name)
            self.log.debug("{meter} reads {ticks}", meter=meter, ticks=message.meter_reading)
            emit(MeterReading(meter, message.meter_reading))
        elif isinstance(message, kbsp.AuthToken):
            emit(
                TokenEvent(
                    naming.auth_device_name(message.device_name),
                    naming.token_value(message.token),
                    message.attached,
                )
            )
        elif isinstance(message, kbsp.TemperatureReading):
            emit(ThermoReading(naming.full_name(name, message.sensor_name), message.celsius))
        elif isinstance(message, kbsp.OutputStatus):
            emit(RelayStatus(naming.full_name(name, message.output_name), message.output_reading))
        else:
            self.log.debug("{board}: {message}", board=name, message=message)

    def _release(self, reason: str) -> None:
        name = self.name
        if name is None:
            return
        self.name = None
        self.service.release(name, self)
        self.log.warn(
            "Kegboard {board} on {device} gone: {reason}",
            board=name,
            device=self.device,
            reason=reason,
        )
        self.service.emit(BoardGone(name, self.device, reason))

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(HELLO_TIMEOUT)
        else:
            self._watchdog = self.clock.callLater(HELLO_TIMEOUT, self._hello_timeout)

    def _hello_timeout(self) -> None:
        self._watchdog = None
        if self.protocol is None:
            return
        if self.name is not None:
            self._release(f"no hello for {HELLO_TIMEOUT:.0f} s")
        self.protocol.close()

    def _cancel_timers(self) -> None:
        for call in (self._ping, self._watchdog):
            if call is not None and call.active():
                call.cancel()
        self._ping = self._watchdog = None

    def _rejected(self, event: kbsp.FrameRejected) -> None:
        if self._log_limit.allow("rejected", self.clock.seconds()):
            self.log.warn(
                "Kegboard {device}: rejected {count} frame(s), latest: {reason}",
                device=self.device,
                count=1 + self._log_limit.take_suppressed("rejected"),
                reason=event.reason,
            )


# --- all boards -----------------------------------------------------------


class BoardService(Service):
    """All configured boards: discovery, unique names, input fan-out."""

    log: ClassVar[Logger] = Logger()
    name = "kegboards"

    def __init__(
        self,
        specs: list[BoardSpec],
        sink: InputSink,
        reactor: Any,
        clock: IReactorTime | None = None,
        *,
        frame_observer: FrameObserver | None = None,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        self.specs = list(specs)
        self.sink = sink
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.frame_observer = frame_observer
        self.rescan_interval = rescan_interval
        self.links: dict[str, BoardLink] = {}
        self.boards: dict[str, BoardLink] = {}
        self._rescan: LoopingCall | None = None
        self._waiting_logged = False
        self.relay_states: dict[str, bool] = {}
        self._relay_waiters: list[tuple[set[str], defer.Deferred[set[str]]]] = []

    @property
    def globs(self) -> list[str]:
        return [s.value for s in self.specs if s.kind == "glob"]

    def startService(self) -> None:
        super().startService()
        if not self.specs:
            self.log.info("No Kegboard configured (--kegboard none)")
            return
        for spec in self.specs:
            if spec.kind == "path":
                self._add_link(spec.value, serial_opener(self.reactor, spec.value))
            elif spec.kind == "tcp":
                self._add_link(spec.value, tcp_opener(self.reactor, spec.value))
        if self.globs:
            self._rescan = LoopingCall(self.rescan)
            self._rescan.clock = self.clock
            self._rescan.start(self.rescan_interval, now=True)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self._rescan is not None and self._rescan.running:
            self._rescan.stop()
        self._rescan = None
        links = list(self.links.values())
        self.links.clear()
        return defer.gatherResults([link.stop() for link in links], consumeErrors=True)

    def rescan(self) -> None:
        """Open links for new nodes matching the globs."""
        found = sorted({path for pattern in self.globs for path in glob.glob(pattern)})
        for path in found:
            if path not in self.links:
                self._add_link(path, serial_opener(self.reactor, path), from_glob=True)
        if not self.links and not self._waiting_logged:
            self._waiting_logged = True
            self.log.warn(
                "Waiting for a Kegboard on {patterns} (rescanning every {interval:g} s; "
                "use --kegboard PATH, tcp:HOST:PORT or none)",
                patterns=", ".join(self.globs),
                interval=self.rescan_interval,
            )
        elif self.links:
            self._waiting_logged = False

    def _add_link(self, device: str, opener: Opener, *, from_glob: bool = False) -> BoardLink:
        link = BoardLink(self, device, opener, self.clock, from_glob=from_glob)
        self.links[device] = link
        link.start()
        return link

    def forget(self, link: BoardLink) -> None:
        if self.links.get(link.device) is link:
            del self.links[link.device]
            self.log.info("{device} is gone", device=link.device)

    # names

    def claim(self, name: str, link: BoardLink) -> bool:
        holder = self.boards.get(name)
        if holder is not None and holder is not link:
            if link.state != "refused":
                self.log.error(
                    "Refusing the Kegboard on {device}: its name {board} is already used by "
                    "the board on {other}; give one of them a serial number "
                    "(kegboard-set-serial)",
                    device=link.device,
                    board=name,
                    other=holder.device,
                )
            return False
        self.boards[name] = link
        return True

    def release(self, name: str, link: BoardLink) -> None:
        if self.boards.get(name) is link:
            del self.boards[name]

    def emit(self, item: BoardInput) -> None:
        if isinstance(item, RelayStatus):
            self.relay_states[item.relay_name] = item.on
            if not item.on:
                for waiter in list(self._relay_waiters):
                    names, d = waiter
                    names.discard(item.relay_name)
                    if not names:
                        self._relay_waiters.remove(waiter)
                        d.callback(set())
        self.sink(item)

    def wait_relays_off(self, relay_names: set[str], timeout: float) -> defer.Deferred[set[str]]:
        """Fires once every named relay on a board of ours reported off, or
        after ``timeout`` with the ones that did not confirm."""
        names = {
            name
            for name in relay_names
            if (parsed := naming.split_relay_name(name)) is not None and parsed[0] in self.boards
        }
        if not names:
            return defer.succeed(set())
        d: defer.Deferred[set[str]] = defer.Deferred()
        waiter = (names, d)
        self._relay_waiters.append(waiter)

        def expire() -> None:
            if waiter in self._relay_waiters:
                self._relay_waiters.remove(waiter)
                d.callback(set(names))

        call = self.clock.callLater(timeout, expire)

        def done(result: set[str]) -> set[str]:
            if call.active():
                call.cancel()
            return result

        return d.addCallback(done)

    # commands

    def send(self, board: str, message: kbsp.Message) -> bool:
        link = self.boards.get(board)
        return link.send(message) if link is not None else False

    def set_relay(self, relay_name: str, on: bool) -> bool:
        """Switch ``<board>.relayN``; False if that board is not here."""
        parsed = naming.split_relay_name(relay_name)
        if parsed is None:
            self.log.warn("Not a relay name: {relay}", relay=relay_name)
            return False
        board, output_id = parsed
        return self.send(board, kbsp.SetOutput(output_id, on))

    def owns(self, board: str) -> bool:
        return board in self.boards


__all__ = [
    "AUTO_GLOBS",
    "BoardLink",
    "BoardService",
    "BoardSpec",
    "KegboardProtocol",
    "parse_board_spec",
    "parse_board_specs",
]
