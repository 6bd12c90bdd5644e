"""The Kegnet event catalogue: JSON on the wire <-> typed values.

Pure: no Twisted, no I/O, no clock.  The wire form is the classic one,
``{"event": NAME, "data": {...}}``, with the classic field names, so
existing accessory daemons keep working.  Each event may carry an extra
``origin`` in ``data`` (an instance id; classic receivers ignore unknown
fields) so that a daemon can drop its own echoes.

Decoding never raises.  Whatever comes off the bus is one of:

* an event value, checked field by field;
* :class:`Ignored`: an event name we do not know (forward compatibility) or
  an internal name of the classic core (``QuitEvent`` from any Redis client
  stopped it) that is never acted on from the wire;
* :class:`Rejected`: not UTF-8, not JSON, not an object, over 64 KiB
  (UTF-8 bytes, checked before parsing), or a field of the wrong type (a reading of ``"abc"``, ``"100"``, ``null``, ``1e400``,
  ``true``, a negative number).  The reason names the field.

Times are Unix seconds in the values, ISO 8601 with a UTC offset on the
wire; ISO or Unix seconds are accepted on input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

MAX_MESSAGE_BYTES = 64 * 1024
U32_MAX = 2**32 - 1
# Times outside [1970, 9999] cannot be written back as ISO 8601 (encode would
# raise), and no pour happened then: rejected on input.
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z
INTERNAL_EVENTS = frozenset(
    {
        "Ping",
        "StartedEvent",
        "QuitEvent",
        "HeartbeatSecondEvent",
        "HeartbeatMinuteEvent",
        "SyncEvent",
    }
)


@dataclass(frozen=True, slots=True)
class MeterUpdate:
    """A meter's cumulative tick count (kegboard daemon)."""

    NAME: ClassVar[str] = "MeterUpdate"
    meter_name: str
    reading: int
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class TokenAuthEvent:
    """A token presented (``added``) or taken away (``removed``)."""

    NAME: ClassVar[str] = "TokenAuthEvent"
    meter_name: str
    auth_device_name: str
    token_value: str
    status: Literal["added", "removed"]
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class ThermoEvent:
    NAME: ClassVar[str] = "ThermoEvent"
    sensor_name: str
    sensor_value: float
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class FlowRequest:
    NAME: ClassVar[str] = "FlowRequest"
    meter_name: str
    request: Literal["start_flow", "stop_flow", "report_status"]
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class ControllerConnectedEvent:
    """``uptime_seconds`` is kegtwist's addition (classic programs ignore
    it): a remote board that has just booted counts its meters from 0."""

    NAME: ClassVar[str] = "ControllerConnectedEvent"
    controller_name: str
    origin: str | None = None
    uptime_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class FlowUpdate:
    """A pour's progress (core); times are Unix seconds."""

    NAME: ClassVar[str] = "FlowUpdate"
    flow_id: int
    meter_name: str
    state: Literal["active", "idle", "completed"]
    username: str | None
    start_time: float
    last_activity_time: float
    ticks: int
    volume_ml: float
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class DrinkCreatedEvent:
    """The server recorded a pour as drink ``drink_id`` (core)."""

    NAME: ClassVar[str] = "DrinkCreatedEvent"
    flow_id: int
    drink_id: int
    meter_name: str
    start_time: float
    end_time: float
    username: str | None
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class SetRelayOutputEvent:
    """Open (``enabled``) or close (``disabled``) a valve (core)."""

    NAME: ClassVar[str] = "SetRelayOutputEvent"
    output_name: str
    output_mode: Literal["enabled", "disabled"]
    origin: str | None = None


Event = (
    MeterUpdate
    | TokenAuthEvent
    | ThermoEvent
    | FlowRequest
    | ControllerConnectedEvent
    | FlowUpdate
    | DrinkCreatedEvent
    | SetRelayOutputEvent
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid Kegnet event; ``reason`` is short and
    stable (it keys the counters), ``detail`` says more."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message we must not act on (unknown or internal name)."""

    reason: str
    event: str


Decoded = Event | Rejected | Ignored


@dataclass
class KegnetStats:
    """Counters; ``reasons`` is keyed by the decoder's own fixed reason names
    (never by anything from the wire), so it stays small."""

    received: int = 0
    decoded: int = 0
    rejected: int = 0
    ignored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, result: Decoded) -> None:
        self.received += 1
        if isinstance(result, Rejected):
            self.rejected += 1
            self.reasons[result.reason] = self.reasons.get(result.reason, 0) + 1
        elif isinstance(result, Ignored):
            self.ignored += 1
            self.reasons[result.reason] = self.reasons.get(result.reason, 0) + 1
        else:
            self.decoded += 1


# --- encoding --------------------------------------------------------------


def iso_time(seconds: float) -> str:
    """Unix seconds -> ISO 8601 with milliseconds and a UTC offset."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _wire_data(event: Event) -> dict[str, Any]:
    if isinstance(event, FlowUpdate):
        data: dict[str, Any] = {
            "flow_id": event.flow_id,
            "meter_name": event.meter_name,
            "state": event.state,
            "username": event.username,
            "start_time": iso_time(event.start_time),
            "last_activity_time": iso_time(event.last_activity_time),
            "ticks": event.ticks,
            "volume_ml": event.volume_ml,
        }
    elif isinstance(event, DrinkCreatedEvent):
        data = {
            "flow_id": event.flow_id,
            "drink_id": event.drink_id,
            "meter_name": event.meter_name,
            "start_time": iso_time(event.start_time),
            "end_time": iso_time(event.end_time),
            "username": event.username,
        }
    elif isinstance(event, ControllerConnectedEvent):
        data = {"controller_name": event.controller_name}
        if event.uptime_seconds is not None:
            data["uptime_seconds"] = event.uptime_seconds
    else:
        data = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "origin"}
    if event.origin is not None:
        data["origin"] = event.origin
    return data


def encode(event: Event) -> bytes:
    """The classic wire form (compact JSON; receivers ignore whitespace)."""
    message = {"event": event.NAME, "data": _wire_data(event)}
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


# --- decoding --------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _str(data: dict[str, Any], name: str, *, optional: bool = False) -> str:
    value = data.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _Bad("bad_field", f"{name} must be a string, got {_show(value)}")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad("bad_field", f"{name} must be a string or null, got {_show(value)}")
    return value


def _int(data: dict[str, Any], name: str, low: int = 0, high: int | None = None) -> int:
    value = data.get(name)
    # bool is an int in Python, never a count on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise _Bad("bad_field", f"{name} must be an integer, got {_show(value)}")
    if value < low or (high is not None and value > high):
        raise _Bad("out_of_range", f"{name} {value} is out of range")
    return value


def _float(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad("bad_field", f"{name} must be a number, got {_show(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Bad("out_of_range", f"{name} must be finite")
    return number


def _time(data: dict[str, Any], name: str) -> float:
    """ISO 8601 (a naive time is taken as UTC) or Unix seconds."""
    value = data.get(name)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
        except (ValueError, OverflowError):
            raise _Bad("bad_field", f"{name} is not an ISO 8601 time: {_show(value)}") from None
    else:
        seconds = _float(data, name)
    if not 0.0 <= seconds <= MAX_TIME:
        raise _Bad("out_of_range", f"{name} {_show(value)} is not between 1970 and 9999")
    return seconds


def _choice(data: dict[str, Any], name: str, choices: tuple[str, ...]) -> Any:
    value = data.get(name)
    if value not in choices:
        raise _Bad("bad_field", f"{name} must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shown(value: object) -> str:
    """A value from the wire as a log line may show it: repr (no newline
    or control character gets through) and at most 40 characters (a name
    may be 64 KiB long)."""
    return _show(value)


def _meter_update(d: dict[str, Any], origin: str | None) -> Event:
    return MeterUpdate(_str(d, "meter_name"), _int(d, "reading", 0, U32_MAX), origin)


def _token(d: dict[str, Any], origin: str | None) -> Event:
    return TokenAuthEvent(
        _str(d, "meter_name", optional=True),
        _str(d, "auth_device_name"),
        _str(d, "token_value"),
        _choice(d, "status", ("added", "removed")),
        origin,
    )


def _thermo(d: dict[str, Any], origin: str | None) -> Event:
    return ThermoEvent(_str(d, "sensor_name"), _float(d, "sensor_value"), origin)


def _flow_request(d: dict[str, Any], origin: str | None) -> Event:
    return FlowRequest(
        _str(d, "meter_name"),
        _choice(d, "request", ("start_flow", "stop_flow", "report_status")),
        origin,
    )


def _controller(d: dict[str, Any], origin: str | None) -> Event:
    uptime = None if d.get("uptime_seconds") is None else _float(d, "uptime_seconds")
    return ControllerConnectedEvent(_str(d, "controller_name"), origin, uptime)


def _flow_update(d: dict[str, Any], origin: str | None) -> Event:
    return FlowUpdate(
        _int(d, "flow_id"),
        _str(d, "meter_name"),
        _choice(d, "state", ("active", "idle", "completed")),
        _opt_str(d, "username"),
        _time(d, "start_time"),
        _time(d, "last_activity_time"),
        _int(d, "ticks"),
        _float(d, "volume_ml"),
        origin,
    )


def _drink_created(d: dict[str, Any], origin: str | None) -> Event:
    return DrinkCreatedEvent(
        _int(d, "flow_id"),
        _int(d, "drink_id"),
        _str(d, "meter_name"),
        _time(d, "start_time"),
        _time(d, "end_time"),
        _opt_str(d, "username"),
        origin,
    )


def _set_relay(d: dict[str, Any], origin: str | None) -> Event:
    return SetRelayOutputEvent(
        _str(d, "output_name"), _choice(d, "output_mode", ("enabled", "disabled")), origin
    )


_DECODERS = {
    "MeterUpdate": _meter_update,
    "TokenAuthEvent": _token,
    "ThermoEvent": _thermo,
    "FlowRequest": _flow_request,
    "ControllerConnectedEvent": _controller,
    "FlowUpdate": _flow_update,
    "DrinkCreatedEvent": _drink_created,
    "SetRelayOutputEvent": _set_relay,
}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _size(raw: bytes | str) -> int:
    """Bytes on the wire; a str is measured as UTF-8 only when it could be
    over the limit (a character is at most 4 bytes)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return len(raw)
    if len(raw) * 4 <= MAX_MESSAGE_BYTES:
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


# One decoder for every message: json.loads(..., parse_constant=...) built a
# new JSONDecoder per call, a quarter of the decode time (profiled).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def decode(raw: bytes | str) -> Decoded:
    """One message off the bus; never raises."""
    size = _size(raw)
    if size > MAX_MESSAGE_BYTES:
        return Rejected("oversized", f"{size} bytes, limit {MAX_MESSAGE_BYTES}")
    if not isinstance(raw, str):
        # Strictly UTF-8, as the facts say: json.loads(bytes) would guess
        # UTF-16/32 from the byte pattern and accept them.
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejected("invalid_utf8", f"byte {e.start}: {e.reason}")
    try:
        message = _JSON.decode(raw)
    except (ValueError, RecursionError) as e:
        return Rejected("invalid_json", str(e)[:80])
    if not isinstance(message, dict):
        return Rejected("not_an_object", f"a JSON {type(message).__name__}")
    name = message.get("event")
    if not isinstance(name, str):
        return Rejected("no_event_name", f"event is {_show(name)}")
    if name in INTERNAL_EVENTS:
        return Ignored("internal_event", name)
    decoder = _DECODERS.get(name)
    if decoder is None:
        return Ignored("unknown_event", name)
    data = message.get("data")
    if not isinstance(data, dict):
        return Rejected("bad_data", f"{name}: data is {_show(data)}")
    origin = data.get("origin")
    if origin is not None and not isinstance(origin, str):
        origin = None
    try:
        return decoder(data, origin)
    except _Bad as e:
        return Rejected(e.reason, f"{name}: {e.detail}")
