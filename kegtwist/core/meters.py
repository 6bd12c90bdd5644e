"""Cumulative tick counters to deltas: the meter rules.

A Kegboard reports each meter's tick count since power-up (u32).  Rules:

* The first reading is only a baseline.
* Deltas are modulo 2**32: a counter that wraps is not a reset.
* A reading that goes down (and is not a small wrap) is a board reset: the
  new reading is what was poured since the reset.
* A delta above ``max_delta_ticks`` is garbage (a line glitch, a corrupt
  reading from a remote daemon): it is discarded, and it does *not* become
  the baseline, so the classic 0, 500, -400, 500 counts 500, not 1,400.
  If the next reading agrees with the discarded one (a small step from it),
  the meter really moved (readings were missed while nobody listened): the
  baseline follows without counting the jump, so a meter never gets stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WRAP = 2**32

Verdict = Literal["baseline", "ticks", "reset", "wrap", "garbage", "rebased", "same"]


@dataclass(slots=True)
class MeterState:
    last: int | None = None
    suspect: int | None = None  # the last reading discarded as garbage

    def update(self, reading: int, max_delta: int) -> tuple[int, Verdict]:
        """Ticks poured since the previous reading, and what happened."""
        reading %= WRAP
        last = self.last
        if last is None:
            self.last = reading
            return 0, "baseline"
        if reading == last:
            self.suspect = None
            return 0, "same"
        delta = (reading - last) % WRAP
        if delta <= max_delta:
            self.last = reading
            self.suspect = None
            return delta, ("wrap" if reading < last else "ticks")
        suspect = self.suspect
        if suspect is not None and 0 <= reading - suspect <= max_delta:
            self.last = reading
            self.suspect = None
            return reading - suspect, "rebased"
        if reading < last and reading <= max_delta:
            self.last = reading
            self.suspect = None
            return reading, "reset"
        self.suspect = reading
        return 0, "garbage"
