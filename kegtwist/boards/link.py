"""One Kegboard port on Twisted: the protocol, the link, the openers.

:class:`BoardLink` runs a :class:`~kegtwist.boards.session.BoardSession` on a
real port: bytes go through the KBSP decoder into the session, the
session's outputs are carried out (frames written, inputs handed to the
service, notices logged, the port opened or closed), and its deadline is
kept by one DelayedCall.  No policy here: that is the session's (one port)
and :class:`~kegtwist.boards.service.BoardService`'s (all ports).

Ports are opened by an :data:`Opener`: :func:`serial_opener` (exclusively,
see :mod:`kegtwist.boards.serial_lock`) or :func:`tcp_opener` (a
serial-over-TCP bridge such as ser2net).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from kegtwist.backoff import Backoff
from kegtwist.boards.session import (
    BoardSession,
    ClosePort,
    Notice,
    OpenPort,
    Output,
    Send,
    State,
)
from kegtwist.core.inputs import BoardInput
from kegtwist.protocol import kbsp

BAUD_RATE = 115200

FrameObserver = Callable[["BoardLink", kbsp.Event], None]

_CLOSED = Failure(ConnectionDone("port closed"))
_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


class LinkOwner(TypingProtocol):
    """What a link needs from the service that owns it."""

    @property
    def frame_observer(self) -> FrameObserver | None: ...

    def claim(self, name: str, link: BoardLink) -> str | None: ...

    def release(self, name: str, link: BoardLink) -> None: ...

    def emit(self, item: BoardInput) -> None: ...

    def port_down(self, link: BoardLink) -> None: ...


# --- protocol -------------------------------------------------------------


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
        service: LinkOwner,
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
        self.session = BoardSession(
            device,
            claim=lambda name: service.claim(name, self),
            release=lambda name: service.release(name, self),
        )
        self.protocol: KegboardProtocol | None = None
        self._timer: IDelayedCall | None = None
        self._due: float | None = None
        self._closed: defer.Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<BoardLink {self.device} {self.state.value} name={self.name}>"

    @property
    def state(self) -> State:
        return self.session.state

    @property
    def name(self) -> str | None:
        """The board's name, while it holds one."""
        return self.session.name

    @property
    def hello(self) -> kbsp.Hello | None:
        """The board's latest hello."""
        return self.session.hello

    @property
    def backoff(self) -> Backoff:
        return self.session.backoff

    @property
    def stats(self) -> kbsp.DecoderStats | None:
        return self.protocol.decoder.stats if self.protocol is not None else None

    # lifecycle

    def start(self) -> None:
        self._apply(self.session.start(self.clock.seconds()))

    def stop(self) -> defer.Deferred[None]:
        """Close the port; the Deferred fires once it is closed."""
        outputs = self.session.stop()
        if self.protocol is None or not any(isinstance(o, ClosePort) for o in outputs):
            self._apply(outputs)
            return defer.succeed(None)
        closed = self._closed = defer.Deferred()
        self._apply(outputs)
        return closed

    def send(self, message: kbsp.Message) -> bool:
        """Send a command; False if the port is not open."""
        if self.protocol is None or not self.session.can_send:
            return False
        self.protocol.send(message)
        return True

    # called by the protocol

    def port_opened(self, proto: KegboardProtocol) -> None:
        self.protocol = proto
        self._apply(self.session.opened(self.clock.seconds()))

    def port_closed(self, proto: KegboardProtocol, reason: Failure) -> None:
        if proto is not self.protocol:
            return
        self.protocol = None
        self._apply(self.session.closed(self.clock.seconds(), reason.getErrorMessage()))
        if self._closed is not None:
            closed, self._closed = self._closed, None
            closed.callback(None)
        elif self.session.state is State.BACKOFF:
            self.service.port_down(self)

    def frame_received(self, event: kbsp.Event) -> None:
        observer = self.service.frame_observer
        if observer is not None:
            observer(self, event)  # it may stop us: the session then ignores the event
        self._apply(self.session.receive(event, self.clock.seconds()))

    # internals

    def _open(self) -> None:
        d = self.opener(KegboardProtocol(self))
        d.addErrback(self._open_failed)

    def _open_failed(self, failure: Failure) -> None:
        problem = describe_open_error(self.device, failure.value or Exception("unknown error"))
        self._apply(self.session.open_failed(self.clock.seconds(), problem))
        if self.session.state is State.BACKOFF:
            self.service.port_down(self)

    def _apply(self, outputs: Iterable[Output]) -> None:
        """Carry out the session's outputs, in order, then keep its deadline.
        Opening may call back into the session at once (serial ports open
        synchronously); what it did is in the session's state by then."""
        for output in outputs:
            if isinstance(output, Notice):
                self.log.emit(_LEVELS[output.level], output.format, **output.fields)
            elif isinstance(output, Send):
                if self.protocol is not None:
                    self.protocol.send(output.message)
            elif isinstance(output, OpenPort):
                self._open()
            elif isinstance(output, ClosePort):
                if self.protocol is not None:
                    self.protocol.close()
            else:
                self.service.emit(output)
        self._schedule()

    def _schedule(self) -> None:
        """One DelayedCall, at the session's deadline (or none)."""
        due = self.session.deadline
        timer = self._timer
        if timer is not None and timer.active():
            if due is None:
                timer.cancel()
                self._timer = None
            elif due != self._due:
                timer.reset(max(0.0, due - self.clock.seconds()))
        elif due is not None:
            self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick)
        self._due = due

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if self._due is not None:
            # Due by definition: a float rounding in callLater must not make
            # the session think it is early.
            now = max(now, self._due)
        self._apply(self.session.tick(now))


__all__ = [
    "BAUD_RATE",
    "BoardLink",
    "FrameObserver",
    "KegboardProtocol",
    "LinkOwner",
    "Opener",
    "describe_open_error",
    "serial_opener",
    "tcp_opener",
]
