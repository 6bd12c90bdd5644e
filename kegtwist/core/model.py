"""The core's inputs and effects: plain values, nothing that does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kegtwist.core.config import TapConfig
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)

# --- inputs beyond what boards send --------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLookupResult:
    """The server's answer about a token, or why there is none.

    ``error`` set means the server could not be asked (down, slow, bad
    key): the offline policy decides.  Otherwise ``username`` None or
    ``enabled`` False means the token opens nothing.
    """

    auth_device: str
    token_value: str
    username: str | None = None
    enabled: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FlowRequest:
    meter_name: str
    request: Literal["start_flow", "stop_flow", "report_status"]


@dataclass(frozen=True, slots=True)
class ManualValve:
    """An operator opens or closes a tap's valve by hand, e.g. for cleaning.

    While open, what flows is line cleaning, not a drink: it is counted and
    logged, never recorded.  The ghost-pour guard closes it after
    ``max_pour_seconds`` if nobody does.
    """

    relay_name: str
    on: bool


@dataclass(frozen=True, slots=True)
class TapsChanged:
    taps: tuple[TapConfig, ...]


CoreInput = (
    BoardConnected
    | BoardGone
    | MeterReading
    | TokenEvent
    | ThermoReading
    | RelayStatus
    | TokenLookupResult
    | FlowRequest
    | TapsChanged
    | ManualValve
)

# --- effects ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetRelay:
    """Command a valve; ``reason`` says why (pour, refresh, pour_end, ...)."""

    relay_name: str
    on: bool
    reason: str


@dataclass(frozen=True, slots=True)
class LookupToken:
    auth_device: str
    token_value: str


@dataclass(frozen=True, slots=True)
class PourSnapshot:
    """A pour as others see it (FlowUpdate on Kegnet, the log, manhole)."""

    flow_id: int
    meter_name: str
    username: str | None
    auth_device: str | None
    ticks: int
    volume_ml: float
    start_wall: float
    last_activity_wall: float
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class PourUpdate:
    """A pour started, progressed, or ended (``state`` completed).

    ``reason`` on the end: idle, stopped, token_removed, max_duration,
    max_volume, replaced, shutdown.  ``recorded`` says whether a drink
    follows; a pour too small, or with no ticks, is counted but not recorded.
    """

    pour: PourSnapshot
    state: Literal["active", "completed"]
    reason: str | None = None
    recorded: bool = False
    held: bool = False
    """Ended on a meter with no tap: the drink waits for one (not lost)."""


@dataclass(frozen=True, slots=True)
class RecordDrink:
    """A completed pour to record: the drink, with its true times."""

    flow_id: int
    meter_name: str
    ticks: int
    volume_ml: float
    username: str | None
    auth_device: str | None
    start_wall: float
    end_wall: float
    duration_seconds: float
    reason: str
    post_volume: bool = False
    """Send ``volume_ml`` to the server (the owner calibrated the tap)."""
    dead_reason: str | None = None
    """Set when the drink cannot be delivered (no tap for its meter in
    time): the outbox keeps it as a dead letter for the operator."""


@dataclass(frozen=True, slots=True)
class RecordTemperature:
    sensor_name: str
    celsius: float
    wall: float


@dataclass(frozen=True, slots=True)
class RegisterController:
    """A board appeared; the server should know it and its meters."""

    board: str


@dataclass(frozen=True, slots=True)
class SensorState:
    """A temperature sensor went silent (``lost``) or came back."""

    sensor_name: str
    lost: bool


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a person should read: the adapter logs it at ``level``."""

    level: Literal["debug", "info", "warn", "error"]
    message: str
    fields: dict[str, object] = field(default_factory=dict)


Effect = (
    SetRelay
    | LookupToken
    | PourUpdate
    | RecordDrink
    | RecordTemperature
    | RegisterController
    | SensorState
    | Notice
)
