"""Exponential backoff as a pure policy: the caller owns the clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``.

    ``jitter`` in [0, 1] spreads each delay over ``[d * (1 - jitter), d]`` so
    that many clients retrying together do not hammer a server in step;
    ``uniform`` is injectable so tests are deterministic.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        if self.jitter:
            delay = self.uniform(delay * (1.0 - self.jitter), delay)
        return delay

    def reset(self) -> None:
        self.attempts = 0
