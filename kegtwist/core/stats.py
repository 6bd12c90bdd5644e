"""The core's counters, for the status screen and for tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CoreStats:
    """Counters for the status screen and for tests.

    Every tick a meter counts (see :mod:`kegtwist.core.meters`) ends in a
    drink (recorded, held for a tap, or a dead letter), in a pour still in
    progress, or in one of two counters: ``ticks_not_recorded`` (pours under
    ``min_volume_ml``) and ``cleaning_ticks`` (flow while a valve was open by
    hand).
    """

    readings: int = 0
    garbage_readings: int = 0
    resets: int = 0
    wraps: int = 0
    untapped_ticks: int = 0
    pours_started: int = 0
    drinks: int = 0
    pours_not_recorded: int = 0
    ticks_not_recorded: int = 0
    ghost_pours: int = 0
    tokens_denied: int = 0
    lookups_failed: int = 0
    temperatures_recorded: int = 0
    temperatures_dropped: int = 0
    cleaning_ticks: int = 0
