"""The pure core: pours, tokens, valves and temperatures (no I/O, no clock).

Inputs and the time in, effects and the next deadline out: no Twisted, no
I/O, no clock reads (``tests/test_purity.py`` checks the imports).  The
rules are in ``docs/pour-rules.md``; :class:`Core` (:mod:`.machine`)
dispatches each input to the module whose rules it concerns: ``meters``,
``pours`` (with ``held``), ``tokens``, ``valves`` (with ``relays``) and
``thermo``; deadlines are in ``timers``, what survives a crash in
``checkpoint``.
"""

from kegtwist.core.config import (
    AuthDevice,
    AuthSettings,
    CoreConfig,
    PourSettings,
    TapConfig,
    ThermoSettings,
)
from kegtwist.core.machine import Core
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
from kegtwist.core.stats import CoreStats

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
