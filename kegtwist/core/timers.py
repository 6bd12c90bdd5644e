"""Deadlines: a heap of (when, kind, key), checked by generation.

The core never polls: every rule with a time limit arms a deadline here, and
:meth:`Timers.next_deadline` tells the adapter when to wake the core.

Decisions:

* One deadline per (kind, key).  Arming again supersedes the earlier one,
  disarming cancels it.  Neither touches the heap: each (kind, key) has a
  generation, and an entry whose generation is no longer current is skipped
  when it is popped.  So :meth:`Timers.next_deadline` may name a superseded
  entry's time; waking then is harmless (nothing runs), and far cheaper
  than removing entries from a heap.
* Deadlines due at the same time run in the order they were armed.
* :meth:`Timers.due` pops lazily: a handler that arms a deadline already
  due (a valve refresh that fell behind) sees it run in the same pass.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

TimerKind = Literal["pour", "ghost", "valve", "clean", "clean_guard", "hold", "sensor"]
"""pour: a pour's idle limit; ghost: its max_pour_seconds; valve: re-command
an authorised pour's valve; clean, clean_guard: the same for a valve opened
by hand; hold: a drink waiting for a tap; sensor: a silent thermometer."""


@dataclass(slots=True)
class _Timer:
    """A heap entry; stale ones are skipped when popped."""

    when: float
    seq: int
    kind: TimerKind
    key: str
    generation: int

    def __lt__(self, other: _Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


@dataclass(frozen=True, slots=True)
class Due:
    """A deadline that has come: what it was for, and when it was due."""

    kind: TimerKind
    key: str
    when: float


class Timers:
    """The core's deadlines, on the monotonic clock."""

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._seq = 0
        self._generation: dict[tuple[TimerKind, str], int] = {}

    def arm(self, kind: TimerKind, key: str, when: float) -> None:
        """Wake at ``when`` for (kind, key), superseding any earlier deadline."""
        gen_key = (kind, key)
        generation = self._generation.get(gen_key, 0) + 1
        self._generation[gen_key] = generation
        self._seq += 1
        heapq.heappush(self._heap, _Timer(when, self._seq, kind, key, generation))

    def disarm(self, kind: TimerKind, key: str) -> None:
        """Cancel the deadline of (kind, key), if any."""
        gen_key = (kind, key)
        if gen_key in self._generation:
            self._generation[gen_key] += 1

    def next_deadline(self) -> float | None:
        """The earliest deadline in the heap (possibly a superseded one)."""
        return self._heap[0].when if self._heap else None

    def due(self, mono: float) -> Iterator[Due]:
        """Pop, one by one, the current deadlines due at ``mono``."""
        heap = self._heap
        while heap and heap[0].when <= mono:
            timer = heapq.heappop(heap)
            if self._generation.get((timer.kind, timer.key)) != timer.generation:
                continue  # superseded or disarmed
            yield Due(timer.kind, timer.key, timer.when)
