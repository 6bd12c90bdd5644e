"""One Kegboard port's session as a pure state machine.

No Twisted, no I/O, no clock: every input is a method that takes the time
as an argument and returns what to do (:data:`Output` values, in order:
frames to send, :mod:`kegtwist.core.inputs` values, log notices, "open the
port", "close the port").  :attr:`BoardSession.deadline` is when
:meth:`BoardSession.tick` wants to be called next (a ping, the hello
watchdog or a reopen), or None.  :mod:`kegtwist.boards.link` runs it on a
real port with one DelayedCall.

States (:class:`State`) and what moves between them::

    IDLE    --start-------------------------------> OPENING   [OpenPort]
    OPENING --opened------------------------------> PINGING   [Send(Ping)]
    OPENING --open_failed-------------------------> BACKOFF
    PINGING --tick, every 2 s---------------------> PINGING   [Send(Ping)]
    PINGING, NAMED, REFUSED --hello, name granted-> NAMED     [BoardConnected]
    NAMED   --hello, same name--------------------> NAMED     (watchdog re-armed)
    PINGING, NAMED, REFUSED --hello, name taken---> REFUSED
    NAMED, REFUSED --tick, no hello for 30 s------> CLOSING   [BoardGone, ClosePort]
    PINGING, NAMED, REFUSED, CLOSING --closed-----> BACKOFF   [BoardGone if named]
    BACKOFF --tick, after the backoff delay-------> OPENING   [OpenPort]
    any --stop------------------------------------> STOPPED   [ClosePort if open]

Decisions:

* A board is named by its hello, never by its port: the boot hello is
  usually missed, so the host pings until one comes (warning once after
  30 s).  Messages before it are held (at most 64) and handed on once the
  board has a name, so the first meter reading is not lost.
* No hello for 30 s (the board sends one every 10 s): hung or gone.  The
  port is reopened, which on an Arduino also resets the board.
* Names are claimed through ``claim`` (the registry of
  :class:`~kegtwist.boards.service.BoardService`).  A board whose name is
  taken is refused once, loudly; every hello claims again, so it is
  accepted once the first board is gone.
* Reopening backs off from 0.5 s to at most 5 s; a hello resets it.
* Rejected frames and unknown messages: logged at most once a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from kegtwist.backoff import Backoff
from kegtwist.boards import naming
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

PING_INTERVAL = 2.0
HELLO_TIMEOUT = 30.0
PENDING_LIMIT = 64
REJECT_LOG_INTERVAL = 60.0


class State(Enum):
    IDLE = "idle"  # not started
    OPENING = "opening"  # the port is being opened
    PINGING = "pinging"  # port open, pinging every 2 s until a hello names the board
    NAMED = "named"  # the hello's name is this board's: messages become inputs
    REFUSED = "refused"  # another port's board holds the name: messages are dropped
    CLOSING = "closing"  # no hello for 30 s: the port is being closed
    BACKOFF = "backoff"  # the port closed or failed to open: reopened at the deadline
    STOPPED = "stopped"  # for good


PORT_OPEN = frozenset({State.PINGING, State.NAMED, State.REFUSED, State.CLOSING})
CAN_SEND = frozenset({State.PINGING, State.NAMED, State.REFUSED})

Level = Literal["debug", "info", "warn", "error"]


@dataclass(frozen=True, slots=True)
class Send:
    """Write this message to the port."""

    message: kbsp.Message


@dataclass(frozen=True, slots=True)
class OpenPort:
    """Open the port; answer with :meth:`BoardSession.opened` or
    :meth:`BoardSession.open_failed`."""


@dataclass(frozen=True, slots=True)
class ClosePort:
    """Close the port; answer with :meth:`BoardSession.closed`."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A log line: a Twisted logger format string and its fields."""

    level: Level
    format: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.format.format(**self.fields)


Output = Send | OpenPort | ClosePort | Notice | BoardInput


Claim = Callable[[str], "str | None"]
"""Claim a board name: None if it is now ours, else the device of the port
whose board holds it."""
Release = Callable[[str], None]
"""Give a claimed board name back."""


class BoardSession:
    """The life of one device node (or TCP bridge) and the board behind it."""

    def __init__(
        self,
        device: str,
        claim: Claim,
        release: Release,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.device = device
        self._claim = claim
        self._release_name = release
        self.backoff = backoff if backoff is not None else Backoff(0.5, 2.0, 5.0)
        self.state = State.IDLE
        self.name: str | None = None
        self.hello: kbsp.Hello | None = None
        self.deadline: float | None = None
        self._pending: list[kbsp.Message] = []
        self._pings_unanswered = 0
        self._last_open_error: str | None = None
        # Garbage on the line (a wrong baud rate, another device) is logged
        # at most once a minute per kind, with a count.
        self._log_limit = RateLimiter(REJECT_LOG_INTERVAL)

    def __repr__(self) -> str:
        return f"<BoardSession {self.device} {self.state.value} name={self.name}>"

    @property
    def port_open(self) -> bool:
        return self.state in PORT_OPEN

    @property
    def can_send(self) -> bool:
        """Whether a command written now reaches an open port."""
        return self.state in CAN_SEND

    # --- inputs -----------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        if self.state is not State.IDLE:
            return []
        return self._open()

    def stop(self) -> list[Output]:
        """For good; closes the port if it is open (:meth:`closed` follows)."""
        was_open = self.port_open
        self.state = State.STOPPED
        self.deadline = None
        return [ClosePort()] if was_open else []

    def opened(self, now: float) -> list[Output]:
        if self.state is State.STOPPED:  # stopped while opening
            return [ClosePort()]
        self.state = State.PINGING
        self._last_open_error = None
        self._pings_unanswered = 0
        out: list[Output] = [self._say("info", "Opened {device}; pinging for the board's hello")]
        self._ping(now, out)
        return out

    def open_failed(self, now: float, problem: str) -> list[Output]:
        """``problem``: what went wrong, as a person can act on it."""
        if self.state is State.STOPPED:
            return []
        if problem == self._last_open_error:
            notice = self._say("debug", "Kegboard {device}: {problem}", problem=problem)
        else:
            self._last_open_error = problem
            notice = self._say("warn", "Kegboard {device}: {problem}; retrying", problem=problem)
        self._back_off(now)
        return [notice]

    def closed(self, now: float, reason: str) -> list[Output]:
        """The port closed (asked to, or not)."""
        self._pending.clear()
        out = self._release(reason or "port closed")
        if self.state is State.STOPPED:
            return out
        out.append(self._say("info", "Port {device} closed: {reason}", reason=reason))
        self._back_off(now)
        return out

    def receive(self, event: kbsp.Event, now: float) -> list[Output]:
        """A decoded frame, or a rejected one."""
        state = self.state
        if state is State.NAMED and type(event) is kbsp.MeterStatus:  # the common case
            return self._deliver(event)
        if state not in CAN_SEND:
            return []
        if isinstance(event, kbsp.FrameRejected):
            return self._rejected(event, now)
        if isinstance(event, kbsp.Hello):
            return self._hello(event, now)
        if isinstance(event, kbsp.UnknownMessage):
            return self._unknown(event, now)
        if state is State.NAMED:
            return self._deliver(event)
        if state is State.PINGING and len(self._pending) < PENDING_LIMIT:
            self._pending.append(event)
        return []

    def tick(self, now: float) -> list[Output]:
        """Do what is due at ``now``: ping, give up on a silent board, reopen."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        out: list[Output] = []
        if self.state is State.PINGING:
            self._ping(now, out)
        elif self.state in (State.NAMED, State.REFUSED):
            out = self._release(f"no hello for {HELLO_TIMEOUT:.0f} s")
            self.state = State.CLOSING
            out.append(ClosePort())
        elif self.state is State.BACKOFF:
            out = self._open()
        return out

    # --- internals --------------------------------------------------------

    def _say(self, level: Level, format: str, **fields: Any) -> Notice:
        return Notice(level, format, {"device": self.device, **fields})

    def _open(self) -> list[Output]:
        self.state = State.OPENING
        self.deadline = None
        return [OpenPort()]

    def _back_off(self, now: float) -> None:
        self.state = State.BACKOFF
        self.deadline = now + self.backoff.next_delay()

    def _ping(self, now: float, out: list[Output]) -> None:
        if self._pings_unanswered * PING_INTERVAL == HELLO_TIMEOUT:
            out.append(
                self._say(
                    "warn",
                    "No Kegboard answered on {device} for {seconds:.0f} s; still pinging",
                    seconds=self._pings_unanswered * PING_INTERVAL,
                )
            )
        out.append(Send(kbsp.Ping()))
        self._pings_unanswered += 1
        self.deadline = now + PING_INTERVAL

    def _hello(self, hello: kbsp.Hello, now: float) -> list[Output]:
        self.hello = hello
        self._pings_unanswered = 0
        self.backoff.reset()
        self.deadline = now + HELLO_TIMEOUT  # the watchdog
        name = naming.board_name(hello.serial_number)
        if self.state is State.NAMED and name == self.name:
            return []
        out: list[Output] = []
        if self.name is not None and name != self.name:
            out += self._release("renamed to " + name)
        holder = self._claim(name)
        if holder is not None:
            if self.state is not State.REFUSED:
                out.append(
                    self._say(
                        "error",
                        "Refusing the Kegboard on {device}: its name {board} is already used by "
                        "the board on {other}; give one of them a serial number "
                        "(kegboard-set-serial)",
                        board=name,
                        other=holder,
                    )
                )
            self.state = State.REFUSED
            self._pending.clear()
            return out
        if self.state is State.REFUSED:
            out.append(self._say("info", "Board on {device} now accepted as {board}", board=name))
        self.name = name
        self.state = State.NAMED
        out.append(
            self._say(
                "info",
                "Kegboard {board} connected on {device} (firmware {firmware})",
                board=name,
                firmware=hello.firmware_version,
            )
        )
        serial, firmware = hello.serial_number or "", hello.firmware_version
        out.append(BoardConnected(name, self.device, firmware, serial, hello.uptime_seconds))
        pending, self._pending = self._pending, []
        for message in pending:
            out += self._deliver(message)
        return out

    def _deliver(self, message: kbsp.Message) -> list[Output]:
        name = self.name
        assert name is not None
        if isinstance(message, kbsp.MeterStatus):
            meter = naming.full_name(name, message.meter_name)
            return [
                self._say(
                    "debug", "{meter} reads {ticks}", meter=meter, ticks=message.meter_reading
                ),
                MeterReading(meter, message.meter_reading),
            ]
        if isinstance(message, kbsp.AuthToken):
            return [
                TokenEvent(
                    naming.auth_device_name(message.device_name),
                    naming.token_value(message.token),
                    message.attached,
                )
            ]
        if isinstance(message, kbsp.TemperatureReading):
            return [ThermoReading(naming.full_name(name, message.sensor_name), message.celsius)]
        if isinstance(message, kbsp.OutputStatus):
            return [
                RelayStatus(naming.full_name(name, message.output_name), message.output_reading)
            ]
        return [self._say("debug", "{board}: {message}", board=name, message=message)]

    def _release(self, reason: str) -> list[Output]:
        name = self.name
        if name is None:
            return []
        self.name = None
        self._release_name(name)
        return [
            self._say(
                "warn",
                "Kegboard {board} on {device} gone: {reason}",
                board=name,
                reason=reason,
            ),
            BoardGone(name, self.device, reason),
        ]

    def _rejected(self, event: kbsp.FrameRejected, now: float) -> list[Output]:
        if not self._log_limit.allow("rejected", now):
            return []
        return [
            self._say(
                "warn",
                "Kegboard {device}: rejected {count} frame(s), latest: {reason}",
                count=1 + self._log_limit.take_suppressed("rejected"),
                reason=event.reason,
            )
        ]

    def _unknown(self, event: kbsp.UnknownMessage, now: float) -> list[Output]:
        if not self._log_limit.allow("unknown", now):
            return []
        return [
            self._say(
                "warn",
                "Kegboard {device}: unknown message 0x{message_id:02x} ignored{more}",
                message_id=event.message_id,
                more=self._log_limit.note("unknown"),
            )
        ]


__all__ = [
    "HELLO_TIMEOUT",
    "PENDING_LIMIT",
    "PING_INTERVAL",
    "BoardSession",
    "Claim",
    "ClosePort",
    "Notice",
    "OpenPort",
    "Output",
    "Release",
    "Send",
    "State",
]
