"""The pure core: pours, tokens, valves and temperatures (no I/O, no clock)."""

from kegtwist.core.config import (
    AuthDevice,
    AuthSettings,
    CoreConfig,
    PourSettings,
    TapConfig,
    ThermoSettings,
)
from kegtwist.core.machine import Core, CoreStats
from kegtwist.core.model import (
    CoreInput,
    Effect,
    FlowRequest,
    LookupToken,
    ManualValve,
    Notice,
    PourSnapshot,
    PourUpdate,
    RecordDrink,
    RecordTemperature,
    RegisterController,
    SensorState,
    SetRelay,
    TapsChanged,
    TokenLookupResult,
)

__all__ = [
    "AuthDevice",
    "AuthSettings",
    "Core",
    "CoreConfig",
    "CoreInput",
    "CoreStats",
    "Effect",
    "FlowRequest",
    "LookupToken",
    "ManualValve",
    "Notice",
    "PourSettings",
    "PourSnapshot",
    "PourUpdate",
    "RecordDrink",
    "RecordTemperature",
    "RegisterController",
    "SensorState",
    "SetRelay",
    "TapConfig",
    "TapsChanged",
    "ThermoSettings",
    "TokenLookupResult",
]
