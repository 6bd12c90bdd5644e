"""Pours: one per tap, from the first tick to the drink.

Rules (``docs/pour-rules.md``, "Pours" and "Untapped meters"), and the
decisions taken where the sources are silent:

* One pour per tap.  Ticks on a tap with no pour start an anonymous one;
  anonymous pours never open a valve (tokens do: :mod:`kegtwist.core.tokens`).
* A pour ends when idle longer than its limit after its last tick (or after
  its start, for an authorised pour that has not flowed yet), on a stop
  request, when its captive token is removed, after ``max_pour_seconds`` (the
  ghost-pour guard), or when its drinker's ``max_volume_ml`` is reached.
  Duration is measured to the last tick, never to the timeout.  An ending
  pour closes the valve it opened.
* A completed pour becomes a drink if it has ticks and at least
  ``min_volume_ml``; otherwise it is counted (``pours_not_recorded``,
  ``ticks_not_recorded``), not recorded.  A pour that flowed while its
  valve was open by hand is cleaning, never a drink (``cleaning_ticks``).
* Volume is ticks x the tap's ``ml_per_tick``; the pour keeps the tap it
  started on even if the tap table changes under it.
* Flow ids count up from ``first_flow_id``; the adapter seeds it from the
  wall clock so ids stay unique across restarts.
* Ticks on a meter with no tap are never dropped: they make an *untapped*
  pour like any other (anonymous, no valve, volume unknown; one warning per
  meter).  A pour in progress gets its tap as soon as one is known; one
  that ends untapped leaves its drink held for a tap
  (:mod:`kegtwist.core.held`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kegtwist.core.config import AuthDevice, PourSettings, TapConfig
from kegtwist.core.held import Held
from kegtwist.core.model import Effect, Notice, PourSnapshot, PourUpdate, RecordDrink
from kegtwist.core.relays import Relays
from kegtwist.core.stats import CoreStats
from kegtwist.core.timers import Timers

TokenKey = tuple[str, str]
"""(auth_device, token_value)."""


@dataclass(slots=True)
class Pour:
    flow_id: int
    tap: TapConfig
    start_mono: float
    start_wall: float
    idle_seconds: float
    last_tick_mono: float | None = None
    last_tick_wall: float | None = None
    ticks: int = 0
    username: str | None = None
    auth_device: str | None = None
    token: TokenKey | None = None
    captive: bool = False
    max_volume_ml: float | None = None
    ticks_at_auth: int = 0
    valve_open: bool = False
    last_progress_mono: float | None = None
    cleaning: bool = False
    untapped: bool = False  # no tap known yet: ``tap`` is a placeholder

    @property
    def meter_name(self) -> str:
        return self.tap.meter

    @property
    def volume_ml(self) -> float:
        return self.ticks * self.tap.ml_per_tick

    def idle_deadline(self) -> float:
        base = self.last_tick_mono if self.last_tick_mono is not None else self.start_mono
        return base + self.idle_seconds

    def snapshot(self) -> PourSnapshot:
        last_mono = self.last_tick_mono if self.last_tick_mono is not None else self.start_mono
        last_wall = self.last_tick_wall if self.last_tick_wall is not None else self.start_wall
        return PourSnapshot(
            flow_id=self.flow_id,
            meter_name=self.meter_name,
            username=self.username,
            auth_device=self.auth_device,
            ticks=self.ticks,
            volume_ml=self.volume_ml,
            start_wall=self.start_wall,
            last_activity_wall=last_wall,
            duration_seconds=max(0.0, last_mono - self.start_mono),
        )


class Pours:
    """The pours in progress (``active``, by meter)."""

    def __init__(
        self,
        settings: PourSettings,
        stats: CoreStats,
        timers: Timers,
        relays: Relays,
        held: Held,
        first_flow_id: int,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.timers = timers
        self.relays = relays
        self.active: dict[str, Pour] = {}
        self.held = held
        self.untapped_warned: set[str] = set()
        self.next_flow_id = first_flow_id

    # --- starting, flowing, ending ---------------------------------------

    def start(self, tap: TapConfig, mono: float, wall: float, out: list[Effect]) -> Pour:
        pour = Pour(
            flow_id=self.next_flow_id,
            tap=tap,
            start_mono=mono,
            start_wall=wall,
            idle_seconds=self.settings.idle_seconds,
            last_progress_mono=mono,
            cleaning=tap.meter in self.relays.cleaning,
        )
        self.next_flow_id += 1
        self.active[tap.meter] = pour
        self.stats.pours_started += 1
        self.timers.arm("pour", tap.meter, pour.idle_deadline())
        self.timers.arm("ghost", tap.meter, mono + self.settings.max_pour_seconds)
        out.append(PourUpdate(pour.snapshot(), "active"))
        return pour

    def start_untapped(self, meter: str, mono: float, wall: float, out: list[Effect]) -> Pour:
        """Ticks with no tap: a pour all the same, its drink held for a tap."""
        pour = self.start(TapConfig(meter, 0.0), mono, wall, out)
        pour.untapped = True
        if meter not in self.untapped_warned:
            self.untapped_warned.add(meter)
            out.append(
                Notice(
                    "warn",
                    "Ticks on {meter}, which has no tap: pour {flow_id} is kept and recorded once "
                    "a tap for {meter} is known (on the Kegbot Server or in [[taps]]); "
                    "after {hours:g} h it becomes a dead letter",
                    {
                        "meter": meter,
                        "flow_id": pour.flow_id,
                        "hours": self.settings.untapped_hold_hours,
                    },
                )
            )
        return pour

    def add_ticks(
        self,
        meter: str,
        delta: int,
        taps: Mapping[str, TapConfig],
        mono: float,
        wall: float,
        out: list[Effect],
    ) -> None:
        """Counted ticks go to the meter's pour, started if there is none."""
        pour = self.active.get(meter)
        if pour is None:
            tap = taps.get(meter)
            if tap is None:
                pour = self.start_untapped(meter, mono, wall, out)
            else:
                pour = self.start(tap, mono, wall, out)
        if pour.untapped:
            self.stats.untapped_ticks += delta
        pour.ticks += delta
        pour.last_tick_mono = mono
        pour.last_tick_wall = wall
        limit = pour.max_volume_ml
        if limit is not None and (pour.ticks - pour.ticks_at_auth) * pour.tap.ml_per_tick >= limit:
            self.end(pour.meter_name, "max_volume", out)
            return
        last = pour.last_progress_mono
        if last is None or mono - last >= self.settings.progress_seconds:
            pour.last_progress_mono = mono
            out.append(PourUpdate(pour.snapshot(), "active"))

    def authorise(self, pour: Pour, username: str, key: TokenKey, device: AuthDevice) -> None:
        """The pour is ``username``'s now; its idle timer restarts."""
        if pour.username is None:
            pour.ticks_at_auth = pour.ticks  # adopted: earlier volume is theirs, not their limit's
        pour.username = username
        pour.auth_device = key[0]
        pour.token = key
        pour.captive = device.captive
        pour.idle_seconds = device.idle_seconds
        pour.max_volume_ml = device.max_volume_ml
        self.timers.arm("pour", pour.meter_name, pour.idle_deadline())

    def end(self, meter: str, reason: str, out: list[Effect]) -> None:
        pour = self.active.pop(meter)
        self.timers.disarm("pour", meter)
        self.timers.disarm("ghost", meter)
        self.timers.disarm("valve", meter)
        if pour.valve_open and pour.tap.relay:
            pour.valve_open = False
            self.relays.turn_off(pour.tap.relay, "pour_end", out)
        snapshot = pour.snapshot()
        if pour.cleaning:
            self.stats.cleaning_ticks += pour.ticks
            out.append(PourUpdate(snapshot, "completed", "cleaning", False))
            out.append(
                Notice(
                    "info",
                    "Cleaning on {meter}: {ticks} ticks, {volume_ml:.0f} mL (not a drink)",
                    {"meter": meter, "ticks": pour.ticks, "volume_ml": snapshot.volume_ml},
                )
            )
            return
        drink = RecordDrink(
            flow_id=pour.flow_id,
            meter_name=meter,
            ticks=pour.ticks,
            volume_ml=snapshot.volume_ml,
            username=pour.username,
            auth_device=pour.auth_device,
            start_wall=snapshot.start_wall,
            end_wall=snapshot.last_activity_wall,
            duration_seconds=snapshot.duration_seconds,
            reason=reason,
            post_volume=pour.tap.post_volume,
        )
        if pour.untapped:
            out.append(PourUpdate(snapshot, "completed", reason, False, held=True))
            if pour.ticks > 0:
                end_mono = (
                    pour.last_tick_mono if pour.last_tick_mono is not None else pour.start_mono
                )
                self.held.hold(drink, end_mono)
            return
        recorded = pour.ticks > 0 and snapshot.volume_ml >= self.settings.min_volume_ml
        out.append(PourUpdate(snapshot, "completed", reason, recorded))
        if recorded:
            self.stats.drinks += 1
            out.append(drink)
        else:
            self.stats.pours_not_recorded += 1
            self.stats.ticks_not_recorded += pour.ticks

    def end_all(self, reason: str, out: list[Effect]) -> None:
        for meter in list(self.active):
            self.end(meter, reason, out)

    def resume(self, pour: Pour, out: list[Effect]) -> None:
        """A pour from the checkpoint carries on (its valve stays closed)."""
        meter = pour.meter_name
        self.active[meter] = pour
        self.timers.arm("pour", meter, pour.idle_deadline())
        self.timers.arm("ghost", meter, pour.start_mono + self.settings.max_pour_seconds)
        out.append(
            Notice(
                "info",
                "Resumed pour {flow_id} on {meter}: {ticks} ticks so far",
                {"flow_id": pour.flow_id, "meter": meter, "ticks": pour.ticks},
            )
        )

    def take_taps(self, taps: Mapping[str, TapConfig]) -> None:
        """Taps became known: untapped pours in progress get theirs."""
        for meter, pour in self.active.items():
            tap = taps.get(meter)
            if pour.untapped and tap is not None:
                pour.tap = tap
                pour.untapped = False

    # --- deadlines ------------------------------------------------------------

    def idle_due(self, meter: str, when: float, mono: float, out: list[Effect]) -> None:
        pour = self.active.get(meter)
        if pour is None:
            return
        deadline = pour.idle_deadline()
        if deadline > mono:  # ticks came since: check again later
            self.timers.arm("pour", meter, deadline)
        else:
            self.end(meter, "idle", out)

    def ghost_due(self, meter: str, when: float, mono: float, out: list[Effect]) -> None:
        if meter in self.active:
            self.stats.ghost_pours += 1
            out.append(
                Notice(
                    "warn",
                    "Pour on {meter} ran {seconds:.0f} s: ended by the ghost-pour guard (max_pour_seconds)",
                    {"meter": meter, "seconds": self.settings.max_pour_seconds},
                )
            )
            self.end(meter, "max_duration", out)
