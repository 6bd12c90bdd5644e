"""Drinks held for a tap: untapped pours that ended, waiting for their meter's tap.

Rules (``docs/pour-rules.md``, "Untapped meters"):

* When a pour on a meter with no known tap ends with ticks, its drink is
  *held*: kept in the checkpoint, across restarts, never dropped.
* When a tap for the meter becomes known, the held drink is recorded with
  every tick at that tap's ``ml_per_tick``; ``min_volume_ml`` applies then
  (a smaller one is counted, ``ticks_not_recorded``, not recorded).
* After ``untapped_hold_hours`` from its last tick it becomes a drink with
  the ``dead_reason`` "no tap for <meter>": a dead letter the outbox keeps
  for the operator (``kegbot-outbox dead``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from kegtwist.core.config import PourSettings, TapConfig
from kegtwist.core.model import Effect, Notice, RecordDrink
from kegtwist.core.stats import CoreStats
from kegtwist.core.timers import Timers


@dataclass(slots=True)
class HeldDrink:
    """A pour that ended on a meter with no tap, waiting for one."""

    drink: RecordDrink
    end_mono: float


class Held:
    def __init__(self, settings: PourSettings, stats: CoreStats, timers: Timers) -> None:
        self.settings = settings
        self.stats = stats
        self.timers = timers
        self.drinks: dict[int, HeldDrink] = {}  # flow id -> drink without a tap

    def hold(self, drink: RecordDrink, end_mono: float) -> None:
        self.drinks[drink.flow_id] = HeldDrink(drink, end_mono)
        self.timers.arm(
            "hold", str(drink.flow_id), end_mono + self.settings.untapped_hold_hours * 3600
        )

    def record_tapped(self, taps: Mapping[str, TapConfig], out: list[Effect]) -> None:
        """Taps became known: the drinks held for them are recorded."""
        for flow_id, held in list(self.drinks.items()):
            drink = held.drink
            tap = taps.get(drink.meter_name)
            if tap is None:
                continue
            del self.drinks[flow_id]
            self.timers.disarm("hold", str(flow_id))
            volume = drink.ticks * tap.ml_per_tick
            recorded = volume >= self.settings.min_volume_ml
            out.append(
                Notice(
                    "info",
                    "Held pour {flow_id} on {meter} now has a tap: {ticks} ticks, {volume_ml:.1f} mL{extra}",
                    {
                        "flow_id": flow_id,
                        "meter": drink.meter_name,
                        "ticks": drink.ticks,
                        "volume_ml": volume,
                        "extra": "" if recorded else ", not recorded (too small)",
                    },
                )
            )
            if recorded:
                self.stats.drinks += 1
                out.append(replace(drink, volume_ml=volume, post_volume=tap.post_volume))
            else:
                self.stats.pours_not_recorded += 1
                self.stats.ticks_not_recorded += drink.ticks

    def expire_due(self, key: str, when: float, mono: float, out: list[Effect]) -> None:
        """No tap came in time: the drink becomes a dead letter."""
        held = self.drinks.pop(int(key), None)
        if held is None:
            return
        meter = held.drink.meter_name
        out.append(
            Notice(
                "error",
                "Pour {flow_id} on {meter} ({ticks} ticks) waited {hours:g} h for a "
                "tap: kept as a dead letter (kegbot-outbox dead)",
                {
                    "flow_id": held.drink.flow_id,
                    "meter": meter,
                    "ticks": held.drink.ticks,
                    "hours": self.settings.untapped_hold_hours,
                },
            )
        )
        out.append(replace(held.drink, dead_reason=f"no tap for {meter}"))
