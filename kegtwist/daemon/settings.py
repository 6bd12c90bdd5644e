"""The TOML config file: parsed, checked, and turned into settings.

Every key is known; an unknown key or a value of the wrong type stops
start-up with one line naming the key and the file, because a typo in a
valve or pour setting must not silently fall back to a default.

The file's top level takes the daemon's command-line options (same names,
dashes as underscores, e.g. ``kegboard = ["/dev/ttyUSB0"]``) and the tables
``[pours]``, ``[auth]`` (with ``[auth.devices."core.rfid"]`` and so on) and
``[[taps]]``.  ``tap-configs/kegbot.toml`` shows them all.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kegtwist.core.config import (
    DEFAULT_AUTH_DEVICES,
    AuthDevice,
    AuthSettings,
    CoreConfig,
    PourSettings,
    TapConfig,
)
from kegtwist.daemon.checks import (
    Check,
    ConfigError,
    boolean,
    choice,
    integer,
    number,
    string,
    string_list,
)
from kegtwist.daemon.option_table import OPTIONS

MAX_IDLE_SECONDS = 3600.0
MAX_POUR_SECONDS = 86400.0
MAX_ML_PER_TICK = 100.0

POURS: dict[str, Check] = {
    "idle_seconds": number(positive=True, maximum=MAX_IDLE_SECONDS),
    "min_volume_ml": number(minimum=0),
    "max_delta_ticks": integer(minimum=1),
    "max_pour_seconds": number(positive=True, maximum=MAX_POUR_SECONDS),
    "valve_refresh_seconds": number(positive=True),
    "fresh_boot_seconds": number(minimum=0),
    "untapped_hold_hours": number(positive=True),
}
AUTH: dict[str, Check] = {
    "offline_policy": choice("deny", "cached"),
    "offline_cache_seconds": number(minimum=0),
}
AUTH_DEVICE: dict[str, Check] = {
    "captive": boolean,
    "idle_seconds": number(positive=True, maximum=MAX_IDLE_SECONDS),
    "max_volume_ml": number(positive=True),
    "taps": string_list,
}
TAP: dict[str, Check] = {
    "meter": string,
    "ml_per_tick": number(positive=True, maximum=MAX_ML_PER_TICK),
    "relay": string,
    "name": string,
}

# Daemon options the file may set: the option table's, by name.
OPTION_CHECKS: dict[str, Check] = {option.name: option.check for option in OPTIONS}


@dataclass
class FileSettings:
    core: CoreConfig = field(default_factory=CoreConfig)
    options: dict[str, Any] = field(default_factory=dict)


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return value


def _fields(where: str, table: Mapping[str, Any], checks: Mapping[str, Check]) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            known = ", ".join(sorted(checks))
            raise ConfigError(f"{where}.{key}: unknown key (known: {known})")
        out[key] = check(f"{where}.{key}", value)
    return out


def parse(data: Mapping[str, Any], source: str = "config") -> FileSettings:
    """Check a parsed TOML document; errors name ``source`` and the key."""
    try:
        return _parse(data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse(data: Mapping[str, Any]) -> FileSettings:
    pours = PourSettings(**_fields("pours", _table("pours", data.get("pours", {})), POURS))
    auth_table = dict(_table("auth", data.get("auth", {})))
    devices_table = _table("auth.devices", auth_table.pop("devices", {}))
    devices = dict(DEFAULT_AUTH_DEVICES)
    for name, table in devices_table.items():
        where = f'auth.devices."{name}"'
        values = _fields(where, _table(where, table), AUTH_DEVICE)
        base = devices.get(name, AuthDevice())
        devices[name] = AuthDevice(
            captive=values.get("captive", base.captive),
            idle_seconds=values.get("idle_seconds", base.idle_seconds),
            max_volume_ml=values.get("max_volume_ml", base.max_volume_ml),
            taps=values.get("taps", base.taps),
        )
    auth = AuthSettings(**_fields("auth", auth_table, AUTH), devices=devices)
    taps_value = data.get("taps", [])
    if not isinstance(taps_value, list):
        raise ConfigError(f"taps: expected [[taps]] tables, got {taps_value!r}")
    taps = []
    seen: set[str] = set()
    for i, table in enumerate(taps_value):
        where = f"taps[{i}]"
        values = _fields(where, _table(where, table), TAP)
        for required in ("meter", "ml_per_tick"):
            if required not in values:
                raise ConfigError(f"{where}: {required} is required")
        if values["meter"] in seen:
            raise ConfigError(f"{where}.meter: {values['meter']} is listed twice")
        seen.add(values["meter"])
        # The file's calibration is the owner's word: the drink is posted
        # with the volume it gives, or the server would compute another.
        taps.append(TapConfig(**values, post_volume=True))
    options = {}
    for key, value in data.items():
        if key in ("pours", "auth", "taps"):
            continue
        check = OPTION_CHECKS.get(key)
        if check is None:
            known = ", ".join(sorted([*OPTION_CHECKS, "pours", "auth", "taps"]))
            raise ConfigError(f"{key}: unknown key (known: {known})")
        options[key] = check(key, value)
    return FileSettings(CoreConfig(pours=pours, auth=auth, taps=tuple(taps)), options)


def load(path: str | Path) -> FileSettings:
    """Read and check a TOML file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, str(path))
