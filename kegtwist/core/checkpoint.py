"""The checkpoint: what must survive a crash, as plain JSON values.

Version 1::

    {"version": 1,
     "next_flow_id": int,
     "meters": {meter: baseline},           # every meter's last counted reading
     "pours": [pour, ...],                  # pours in progress (see pour_state)
     "held": [RecordDrink fields, ...]}     # drinks waiting for a tap

The adapter (``kegtwist.daemon.core_service``) adds its own keys (the
drinks not yet in the outbox) and writes it atomically.

Decisions (``docs/pour-rules.md``, "Crash safety"):

* Times are stored as wall clock, since the monotonic clock of this process
  means nothing to the next one.  Read back, they are mapped onto the new
  monotonic clock, never into the future; a pour keeps its measured
  duration even if the wall clock moved.
* A restored pour keeps its ticks and drinker; its idle time counts from its
  last tick, so one that went idle meanwhile ends at once and is recorded.
  Its valve is not reopened: the drinker presents the token again.
* A restored pour keeps the whole tap it started on (its calibration: a tap
  from ``[[taps]]`` still posts ``volume_ml``), and a pour that flowed while
  its valve was open by hand stays cleaning (never a drink) until it ends,
  though the valve is not reopened.
* Reading is lenient: a missing key takes its default (``{"meters": ...}``
  alone is a valid state), so older files load (the tap's ``name`` and
  ``post_volume`` and the pour's ``cleaning`` came later, still version 1).
  A state is read whole before any of it is applied: one that cannot be
  read (``KeyError``, ``ValueError``, ``TypeError``) leaves the core as it
  was, and the daemon starts afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kegtwist.core.config import TapConfig
from kegtwist.core.held import HeldDrink
from kegtwist.core.model import RecordDrink
from kegtwist.core.pours import Pour

VERSION = 1


def pour_state(pour: Pour) -> dict[str, Any]:
    return {
        "flow_id": pour.flow_id,
        "tap": {
            "meter": pour.tap.meter,
            "ml_per_tick": pour.tap.ml_per_tick,
            "relay": pour.tap.relay,
            "name": pour.tap.name,
            "post_volume": pour.tap.post_volume,
        },
        "start_wall": pour.start_wall,
        "last_tick_wall": pour.last_tick_wall,
        "duration_seconds": pour.snapshot().duration_seconds,
        "ticks": pour.ticks,
        "idle_seconds": pour.idle_seconds,
        "username": pour.username,
        "auth_device": pour.auth_device,
        "token": list(pour.token) if pour.token else None,
        "captive": pour.captive,
        "max_volume_ml": pour.max_volume_ml,
        "ticks_at_auth": pour.ticks_at_auth,
        "untapped": pour.untapped,
        "cleaning": pour.cleaning,
    }


def pour_from_state(p: Mapping[str, Any], mono: float, wall: float) -> Pour:
    tap_data = p["tap"]
    tap = TapConfig(
        tap_data["meter"],
        float(tap_data["ml_per_tick"]),
        tap_data.get("relay"),
        tap_data.get("name"),
        bool(tap_data.get("post_volume")),
    )
    start_wall = float(p["start_wall"])
    last_wall = p.get("last_tick_wall")
    # Map wall times onto this process's monotonic clock; never into the future.
    start_mono = mono - max(0.0, wall - start_wall)
    last_mono = None if last_wall is None else mono - max(0.0, wall - float(last_wall))
    token = p.get("token")
    pour = Pour(
        flow_id=int(p["flow_id"]),
        tap=tap,
        start_mono=start_mono,
        start_wall=start_wall,
        idle_seconds=float(p["idle_seconds"]),
        last_tick_mono=last_mono,
        last_tick_wall=None if last_wall is None else float(last_wall),
        ticks=int(p["ticks"]),
        username=p.get("username"),
        auth_device=p.get("auth_device"),
        token=(token[0], token[1]) if token else None,
        captive=bool(p.get("captive")),
        max_volume_ml=p.get("max_volume_ml"),
        ticks_at_auth=int(p.get("ticks_at_auth", 0)),
        last_progress_mono=mono,
        cleaning=bool(p.get("cleaning")),
        untapped=bool(p.get("untapped")),
    )
    if last_mono is not None:
        # Keep the measured duration even if the wall clock moved.
        pour.start_mono = last_mono - float(p.get("duration_seconds", 0.0))
    return pour


def drink_state(drink: RecordDrink) -> dict[str, Any]:
    """A drink as plain JSON-able values."""
    return {name: getattr(drink, name) for name in RecordDrink.__dataclass_fields__}


def dump(
    next_flow_id: int,
    baselines: Mapping[str, int],
    pours: Iterable[Pour],
    held: Iterable[HeldDrink],
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "next_flow_id": next_flow_id,
        "meters": dict(baselines),
        "pours": [pour_state(p) for p in pours],
        "held": [drink_state(h.drink) for h in held],
    }


@dataclass(slots=True)
class Restored:
    """A checkpoint read back, its times on this process's monotonic clock."""

    next_flow_id: int
    baselines: dict[str, int]
    pours: list[Pour]
    held: list[HeldDrink]


def load(state: Mapping[str, Any], mono: float, wall: float) -> Restored:
    held = []
    for d in state.get("held", []):
        drink = RecordDrink(**d)
        held.append(HeldDrink(drink, mono - max(0.0, wall - drink.end_wall)))
    return Restored(
        next_flow_id=int(state.get("next_flow_id", 0)),
        baselines={name: int(last) for name, last in state.get("meters", {}).items()},
        pours=[pour_from_state(p, mono, wall) for p in state.get("pours", [])],
        held=held,
    )
