"""Cumulative tick counters to deltas: the meter rules.

A Kegboard reports each meter's tick count since power-up (u32).  Rules
(``docs/pour-rules.md``, "Meters"):

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
* A board whose hello reports less than ``fresh_boot_seconds`` of uptime
  has just booted and counted from 0: its meters' baselines become 0
  (whatever the checkpoint holds, until the board next connects), so a
  first report of N ticks is N ticks poured (still subject to
  ``max_delta_ticks``).
* Only baselines survive a restart (the checkpoint): a discarded reading
  and a board's fresh boot are forgotten, as the board says hello again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kegtwist.core.config import PourSettings
from kegtwist.core.inputs import MeterReading
from kegtwist.core.model import Effect, Notice
from kegtwist.core.stats import CoreStats

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


class Meters:
    """Every meter's baseline, and which boards have just booted."""

    def __init__(self, settings: PourSettings, stats: CoreStats) -> None:
        self.settings = settings
        self.stats = stats
        self.states: dict[str, MeterState] = {}
        self.fresh_boards: set[str] = set()  # booted just now: meters start at 0

    def read(self, item: MeterReading, out: list[Effect]) -> int:
        """The ticks a reading adds (0 for a baseline, garbage, no change)."""
        stats = self.stats
        stats.readings += 1
        meter = self.states.get(item.meter_name)
        if meter is None:
            fresh = item.meter_name.rpartition(".")[0] in self.fresh_boards
            meter = self.states[item.meter_name] = MeterState(last=0 if fresh else None)
        delta, verdict = meter.update(item.ticks, self.settings.max_delta_ticks)
        if verdict == "garbage":
            stats.garbage_readings += 1
            out.append(
                Notice(
                    "warn",
                    "Discarded reading {ticks} of {meter}: a jump of more than {limit} ticks",
                    {
                        "ticks": item.ticks,
                        "meter": item.meter_name,
                        "limit": self.settings.max_delta_ticks,
                    },
                )
            )
            return 0
        if verdict == "reset":
            stats.resets += 1
            out.append(
                Notice(
                    "info",
                    "{meter} restarted from {ticks} (board reset)",
                    {"meter": item.meter_name, "ticks": item.ticks},
                )
            )
        elif verdict == "wrap":
            stats.wraps += 1
        return delta

    def board_connected(self, board: str, uptime: float | None, out: list[Effect]) -> None:
        """A hello: a board up less than ``fresh_boot_seconds`` counts from 0."""
        if uptime is not None and uptime < self.settings.fresh_boot_seconds:
            self.fresh_boards.add(board)
            prefix = board + "."
            for name, meter in self.states.items():
                if name.startswith(prefix):
                    meter.last = 0
                    meter.suspect = None
            out.append(
                Notice(
                    "info",
                    "{board} booted {uptime:.1f} s ago: its meters count from 0",
                    {"board": board, "uptime": uptime},
                )
            )
        else:
            self.fresh_boards.discard(board)

    def baselines(self) -> dict[str, int]:
        """What the checkpoint keeps: every meter's last counted reading."""
        return {name: m.last for name, m in self.states.items() if m.last is not None}

    def restore(self, baselines: dict[str, int]) -> None:
        for name, last in baselines.items():
            self.states[name] = MeterState(last=last)
