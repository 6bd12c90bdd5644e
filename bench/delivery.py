"""Delivery to a Kegbot Server on loopback: the catch-up after a long
outage, and the latency of one pour when all is well.

(a) 10,000 drinks queued in an outbox (a temp directory, fsync on, as in
    production), then the delivery service starts against the loopback fake
    server of the tests (twisted.web, same process, same reactor): drinks
    recorded per second, median of 3 runs.
(b) 200 pours, one at a time: the time from the pour's end (its drink handed
    to the outbox, as the core does) to the drink being recorded by the
    server; median and 95th percentile.  Target: under 100 ms median.

Run: python bench/delivery.py [--backlog N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def drink(flow_id: int, end: float) -> Any:
    from kegtwist.core import RecordDrink

    return RecordDrink(
        flow_id, "kegboard.flow0", 500, 183.5, "alice", "core.rfid", end - 5, end, 5.0, "idle"
    )


async def backlog_run(reactor: Any, count: int) -> float:
    from fakeserver import API_KEY, FakeKegbotServer
    from twisted.internet import task

    from kegtwist.delivery import DeliveryService
    from kegtwist.outbox import Outbox
    from kegtwist.server import KegbotServerClient

    fake = FakeKegbotServer()
    fake.listen(reactor)
    outbox = Outbox(tempfile.mkdtemp(prefix="delivery-bench-"))
    outbox.open()
    now = time.time() - 3600
    for i in range(count):
        outbox.add_drink(drink(i + 1, now + i * 0.01))
    client = KegbotServerClient(reactor, fake.url, API_KEY)
    delivery = DeliveryService(outbox, client, reactor)
    start = time.perf_counter()
    delivery.startService()
    while len(fake.drinks) < count:
        await task.deferLater(reactor, 0.01)
    seconds = time.perf_counter() - start
    await delivery.stopService()
    await client.close()
    await fake.close()
    outbox.close()
    assert len(fake.drinks) == count
    return count / seconds


async def latency_run(reactor: Any, pours: int) -> list[float]:
    from fakeserver import API_KEY, FakeKegbotServer
    from twisted.internet import defer

    from kegtwist.delivery import DeliveryService
    from kegtwist.outbox import Outbox
    from kegtwist.server import KegbotServerClient

    fake = FakeKegbotServer()
    recorded: list[float] = []
    waiter: list[defer.Deferred[None]] = []
    original = fake.record_drink

    def record(meter: str, form: dict[str, str]) -> dict[str, Any]:
        result = original(meter, form)
        recorded.append(time.perf_counter())
        if waiter and not waiter[0].called:
            reactor.callLater(0, waiter[0].callback, None)
        return result

    fake.record_drink = record  # type: ignore[method-assign]
    fake.listen(reactor)
    outbox = Outbox(tempfile.mkdtemp(prefix="delivery-bench-"))
    outbox.open()
    client = KegbotServerClient(reactor, fake.url, API_KEY)
    delivery = DeliveryService(outbox, client, reactor)
    delivery.startService()
    latencies = []
    for i in range(pours):
        waiter[:] = [defer.Deferred()]
        start = time.perf_counter()
        outbox.add_drink(drink(i + 1, time.time()))  # what the core's listener does
        delivery.wake()
        await waiter[0]
        latencies.append(recorded[-1] - start)
    await delivery.stopService()
    await client.close()
    await fake.close()
    outbox.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pours", type=int, default=200)
    args = parser.parse_args()
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    results: dict[str, Any] = {}

    async def everything() -> None:
        results["rates"] = [await backlog_run(reactor, args.backlog) for _ in range(args.runs)]
        results["latency"] = await latency_run(reactor, args.pours)

    def done(outcome: object) -> object:
        reactor.stop()
        return outcome

    reactor.callWhenRunning(lambda: defer.ensureDeferred(everything()).addBoth(done))
    reactor.run()
    rates = results["rates"]
    latency = sorted(results["latency"])
    p95 = latency[int(len(latency) * 0.95) - 1]
    print(
        f"delivery: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(f"backlog of {args.backlog:,}: median {statistics.median(rates):,.0f} drinks/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")  # fmt: skip
    print(f"pour end -> on the server, {len(latency)} pours: median {statistics.median(latency) * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {latency[-1] * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
