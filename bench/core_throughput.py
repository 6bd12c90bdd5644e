"""The pure core's throughput: meter readings per second with 500 taps
pouring at once, and the cost per reading.

500 taps, each with a pour in progress; readings arrive round robin, each
meter rising by a few ticks per reading, the time advancing 20 us per
reading (50,000 readings/s of simulated time, so progress updates and
deadlines fire as they would at that rate).  Every effect is produced and
dropped, as the adapter would hand them on.  Medians of several runs.

Run: python bench/core_throughput.py [--readings N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from kegtwist.core import Core, CoreConfig, TapConfig
from kegtwist.core.inputs import MeterReading

TAPS = 500


def run(readings: int) -> tuple[float, int, int]:
    taps = tuple(TapConfig(f"kegboard-b{i:03d}.flow0", 0.37, None) for i in range(TAPS))
    core = Core(CoreConfig(taps=taps), first_flow_id=1)
    names = [t.meter for t in taps]
    inputs = [MeterReading(names[i % TAPS], (i // TAPS) * 7) for i in range(readings)]
    wall0 = 1_800_000_000.0
    effects = 0
    handle = core.handle
    start = time.perf_counter()
    mono = 0.0
    for item in inputs:
        mono += 0.00002
        effects += len(handle(item, mono, wall0 + mono))
        if core.next_deadline() is not None and core.next_deadline() <= mono:  # type: ignore[operator]
            effects += len(core.advance(mono, wall0 + mono))
    seconds = time.perf_counter() - start
    assert len(core.pours) == TAPS
    return readings / seconds, effects, core.stats.readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"core_throughput: {platform.machine()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; {TAPS} taps pouring, {args.readings:,} readings per run")  # fmt: skip
    rates = []
    for _ in range(args.runs):
        rate, effects, counted = run(args.readings)
        assert counted == args.readings
        rates.append(rate)
    median = statistics.median(rates)
    print(f"median {median:,.0f} readings/s ({1e6 / median:.2f} us per reading); "
          f"runs: {', '.join(f'{r:,.0f}' for r in rates)}; effects per run: {effects:,}")  # fmt: skip
    print(f"target (>= 100,000 readings/s): {'met' if median >= 100_000 else 'MISSED'}")


if __name__ == "__main__":
    main()
