"""What a Kegboard tells the rest of the program, as typed values.

The board adapter produces these with full names (``<board>.<name>``); the
core consumes them, whether they came from a local serial port or, later,
from Kegnet.  Pure values: no time in them; whoever feeds the core adds
"now".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BoardConnected:
    """A board answered with a hello and owns its name."""

    board: str
    device: str
    firmware_version: int | None = None
    serial_number: str = ""
    uptime_seconds: float | None = None
    """From the hello: a board up for seconds has just counted from 0."""


@dataclass(frozen=True, slots=True)
class BoardGone:
    """A named board vanished: port closed, I/O error, or no hello for 30 s."""

    board: str
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class MeterReading:
    """A meter's cumulative tick count (u32; restarts at 0 on board reset)."""

    meter_name: str
    ticks: int


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A token put on (``present``) or taken from a reader.

    ``meter_name`` None means every tap (the classic ``__all_taps__``).
    """

    auth_device: str
    token_value: str
    present: bool
    meter_name: str | None = None


@dataclass(frozen=True, slots=True)
class ThermoReading:
    sensor_name: str
    celsius: float


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """The board's report that a relay changed state."""

    relay_name: str
    on: bool


BoardInput = BoardConnected | BoardGone | MeterReading | TokenEvent | ThermoReading | RelayStatus
