"""Checks of configuration values: each takes where the value came from
(``pours.idle_seconds``, ``$KEGBOT_API_URL``) and the value, and returns the
value or raises :class:`ConfigError` with one line a person can act on.

Pure: shared by the config file (:mod:`kegtwist.daemon.settings`) and the
option table (:mod:`kegtwist.daemon.option_table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the file."""


Check = Callable[[str, Any], Any]


def number(
    minimum: float | None = None, positive: bool = False, maximum: float | None = None
) -> Check:
    """A finite number; ``maximum`` bounds what would switch a guard off
    (an idle time of 1e308 s, a ghost guard of 1e12 s)."""

    def check(where: str, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        low = "0 (exclusive)" if positive else f"{minimum:g}" if minimum is not None else None
        span = f" (range {low} to {maximum:g})" if low is not None and maximum is not None else ""
        if positive and value <= 0:
            raise ConfigError(f"{where}: must be greater than 0, got {value!r}{span}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where}: must be at least {minimum:g}, got {value!r}{span}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{where}: must be at most {maximum:g}, got {value!r}{span}")
        return float(value)

    return check


def integer(minimum: int = 0) -> Check:
    def check(where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{where}: must be at least {minimum}, got {value!r}")
        return value

    return check


def string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def string_list(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def choice(*choices: str) -> Check:
    def check(where: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check
