"""KBSP v1 messages: one dataclass per message id, with its field specs.

Pure data, no codec: :mod:`kegtwist.protocol.kbsp` frames, encodes and
decodes these (and re-exports every name here, so ``kbsp.Hello`` works).
Each message class carries its ``MESSAGE_ID`` and its ``FIELDS``, the
tag-length-value layout of its payload; the field names are the
dataclass's attributes, in order.  See ``docs/kbsp.md``, Messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Literal

# --- field specs ----------------------------------------------------------

Kind = Literal["u8", "u16", "u32", "u64", "i32", "str", "bytes", "output"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload field: its tag, the attribute it fills, its wire kind,
    and whether a frame without it is a payload error."""

    tag: int
    name: str
    kind: Kind
    required: bool = False


# --- messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Board identity; sent on ping, after reset and every 10 s."""

    MESSAGE_ID: ClassVar[int] = 0x01
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "firmware_version", "u16"),
        FieldSpec(0x02, "protocol_version", "u16"),
        FieldSpec(0x03, "serial_number", "str"),
        FieldSpec(0x04, "uptime_millis", "u32"),
        FieldSpec(0x05, "uptime_days", "u32"),
    )
    firmware_version: int | None = None
    protocol_version: int | None = None
    serial_number: str | None = None
    uptime_millis: int | None = None
    uptime_days: int | None = None

    @property
    def uptime_seconds(self) -> float | None:
        """Time since the board booted (its counters started at 0 then)."""
        if self.uptime_millis is None:
            return None
        return (self.uptime_days or 0) * 86_400.0 + self.uptime_millis / 1000.0


@dataclass(frozen=True, slots=True)
class BoardConfiguration:
    MESSAGE_ID: ClassVar[int] = 0x02
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "board_name", "str"),
        FieldSpec(0x02, "baud_rate", "u16"),
        FieldSpec(0x03, "update_interval", "u16"),
        FieldSpec(0x04, "watchdog_timeout", "u16"),
    )
    board_name: str | None = None
    baud_rate: int | None = None
    update_interval: int | None = None
    watchdog_timeout: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class MeterStatus:
    """Cumulative tick count of one meter since the board powered up.

    Not ``frozen`` (treat it as immutable all the same): a frozen
    dataclass's ``__init__`` goes through ``object.__setattr__``, which made
    construction 40 % of the decoder's cost per meter frame."""

    MESSAGE_ID: ClassVar[int] = 0x10
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "meter_name", "str", True),
        FieldSpec(0x02, "meter_reading", "u32", True),
    )
    meter_name: str
    meter_reading: int


@dataclass(frozen=True, slots=True)
class TemperatureReading:
    MESSAGE_ID: ClassVar[int] = 0x11
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "sensor_name", "str", True),
        FieldSpec(0x02, "sensor_reading", "i32", True),
    )
    sensor_name: str
    sensor_reading: int  # millionths of a degree Celsius

    @property
    def celsius(self) -> float:
        return self.sensor_reading / 1_000_000


@dataclass(frozen=True, slots=True)
class OutputStatus:
    MESSAGE_ID: ClassVar[int] = 0x12
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "output_name", "str", True),
        FieldSpec(0x02, "output_reading", "output", True),
    )
    output_name: str
    output_reading: bool


@dataclass(frozen=True, slots=True)
class OnewirePresence:
    """Deprecated by the firmware; decoded so that it is not 'unknown'."""

    MESSAGE_ID: ClassVar[int] = 0x13
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "device_id", "u64", True),
        FieldSpec(0x02, "status", "u8"),
    )
    device_id: int
    status: int | None = None


@dataclass(frozen=True, slots=True)
class AuthToken:
    """A token presented to (status 1) or taken from (status 0) a reader."""

    MESSAGE_ID: ClassVar[int] = 0x14
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "device_name", "str", True),
        FieldSpec(0x02, "token", "bytes", True),
        FieldSpec(0x03, "status", "u8", True),
    )
    device_name: str
    token: bytes  # raw, as the reader sent it (big-endian)
    status: int

    @property
    def attached(self) -> bool:
        return self.status != 0


@dataclass(frozen=True, slots=True)
class Ping:
    """Host command: answer with a hello."""

    MESSAGE_ID: ClassVar[int] = 0x81
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = ()


@dataclass(frozen=True, slots=True)
class SetOutput:
    """Host command: switch relay ``output_id`` (0..15) on or off."""

    MESSAGE_ID: ClassVar[int] = 0x84
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(0x01, "output_id", "u8", True),
        FieldSpec(0x02, "output_mode", "output", True),
    )
    output_id: int
    output_mode: bool


@dataclass(frozen=True, slots=True)
class SetSerialNumber:
    """Host command; the board accepts it only while it has no serial."""

    MESSAGE_ID: ClassVar[int] = 0x85
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (FieldSpec(0x01, "serial_number", "str", True),)
    serial_number: str


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A well-formed frame whose message id this codec does not know."""

    message_id: int
    payload: bytes


KnownMessage = (
    Hello
    | BoardConfiguration
    | MeterStatus
    | TemperatureReading
    | OutputStatus
    | OnewirePresence
    | AuthToken
    | Ping
    | SetOutput
    | SetSerialNumber
)
Message = KnownMessage | UnknownMessage

MESSAGE_TYPES: Final[tuple[type[KnownMessage], ...]] = (
    Hello,
    BoardConfiguration,
    MeterStatus,
    TemperatureReading,
    OutputStatus,
    OnewirePresence,
    AuthToken,
    Ping,
    SetOutput,
    SetSerialNumber,
)

__all__ = [
    "MESSAGE_TYPES",
    "AuthToken",
    "BoardConfiguration",
    "FieldSpec",
    "Hello",
    "Kind",
    "KnownMessage",
    "Message",
    "MeterStatus",
    "OnewirePresence",
    "OutputStatus",
    "Ping",
    "SetOutput",
    "SetSerialNumber",
    "TemperatureReading",
    "UnknownMessage",
]
