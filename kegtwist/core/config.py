"""Settings of the pure core, with the defaults a Kegbot owner expects.

Option names match the ``[pours]``, ``[auth]`` and ``[[taps]]`` tables of
the TOML config file (see ``tap-configs/kegbot.toml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OfflinePolicy = Literal["deny", "cached"]


@dataclass(frozen=True, slots=True)
class PourSettings:
    idle_seconds: float = 10.0
    """An anonymous pour ends this long after its last tick."""
    min_volume_ml: float = 10.0
    """Smaller pours (drips, line purges) are counted but not recorded."""
    max_delta_ticks: int = 4400
    """A jump above this between two readings is garbage, not beer."""
    max_pour_seconds: float = 600.0
    """Ghost-pour guard: no pour lasts longer; its valve closes."""
    valve_refresh_seconds: float = 2.0
    """The board drops a relay 10 s after the last command."""
    progress_seconds: float = 0.25
    """At most one progress update per pour per this interval."""
    fresh_boot_seconds: float = 10.0
    """A board whose hello reports less uptime has just booted: its meters
    counted from 0, so their baselines are 0 whatever the checkpoint says."""
    untapped_hold_hours: float = 24.0
    """A drink on a meter with no tap waits this long for one, then becomes
    a dead letter."""


@dataclass(frozen=True, slots=True)
class AuthDevice:
    """How tokens from one reader behave."""

    captive: bool = True
    """Removing the token ends the pour (an iButton held in a socket)."""
    idle_seconds: float = 10.0
    max_volume_ml: float | None = None
    """After this much (counted from authentication) the pour ends."""
    taps: tuple[str, ...] | None = None
    """Meter names this reader serves; None means every tap."""


DEFAULT_AUTH_DEVICES: dict[str, AuthDevice] = {
    "core.onewire": AuthDevice(captive=True, idle_seconds=120.0),
    "core.rfid": AuthDevice(captive=False, idle_seconds=20.0),
}
# A reader the config does not name: captive, like the classic core's default.
UNKNOWN_AUTH_DEVICE = AuthDevice(captive=True, idle_seconds=10.0)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    offline_policy: OfflinePolicy = "deny"
    """What a token does when the server cannot be asked: open nothing."""
    offline_cache_seconds: float = 86400.0
    """With ``cached``: how recently the token must have been confirmed."""
    devices: dict[str, AuthDevice] = field(default_factory=lambda: dict(DEFAULT_AUTH_DEVICES))

    def device(self, name: str) -> AuthDevice:
        return self.devices.get(name, UNKNOWN_AUTH_DEVICE)


@dataclass(frozen=True, slots=True)
class TapConfig:
    """One tap: the meter that measures it, and the valve that opens it."""

    meter: str
    ml_per_tick: float
    relay: str | None = None
    name: str | None = None
    post_volume: bool = False
    """Post ``volume_ml`` with the drink (the config file set ``ml_per_tick``),
    so the server records the volume the owner calibrated, not its own."""


@dataclass(frozen=True, slots=True)
class ThermoSettings:
    record_interval_seconds: float = 60.0
    lost_after_seconds: float = 120.0
    min_celsius: float = -20.0
    max_celsius: float = 80.0


@dataclass(frozen=True, slots=True)
class CoreConfig:
    pours: PourSettings = field(default_factory=PourSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    thermo: ThermoSettings = field(default_factory=ThermoSettings)
    taps: tuple[TapConfig, ...] = ()
