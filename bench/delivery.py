"""Delivery to a Kegbot Server on loopback: the catch-up after a long
outage, and the latency of one pour when all is well.

(a) 10,000 drinks queued in an outbox (a temp directory; queued with fsync
    off to save time, delivered with fsync on, as in production), then the
    delivery service starts against the loopback fake server of the tests
    (twisted.web, same process, same reactor): drinks recorded per second,
    median of 3 runs.
(b) 200 pours, one at a time, two ways:
    * outbox: from the drink handed to the outbox (``add_drink`` and
      ``wake``, what the daemon's core listener does) to the drink being
      recorded by the server;
    * daemon: the whole daemon as ``build()`` makes it (core service,
      checkpoint, outbox, delivery, tap sync; no board: meter readings are
      fed to the core), from the instant the core ends the pour (its idle
      timer fires) to the drink on the server; this includes the checkpoint
      written before the outbox sees the drink.
    Median and 95th percentile.  Target: under 100 ms median.

Run from the repository root: python bench/delivery.py [--backlog N] [--runs R] [--pours P]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

IDLE_SECONDS = 0.05  # (b, daemon): pours end this long after their last tick


def drink(flow_id: int, end: float) -> Any:
    from kegtwist.core import RecordDrink

    return RecordDrink(
        flow_id, "kegboard.flow0", 500, 183.5, "alice", "core.rfid", end - 5, end, 5.0, "idle"
    )


def on_record(fake: Any, reactor: Any) -> tuple[list[float], Callable[[], Any]]:
    """Stamp every drink the fake server records; ``arm()`` returns a
    Deferred that fires at the next one (so nothing polls)."""
    from twisted.internet import defer

    recorded: list[float] = []
    waiter: list[defer.Deferred[None]] = []
    original = fake.record_drink

    def record(meter: str, form: dict[str, str]) -> dict[str, Any]:
        result = original(meter, form)
        recorded.append(time.perf_counter())
        if waiter and not waiter[0].called:
            reactor.callLater(0, waiter[0].callback, None)
        return result

    def arm() -> defer.Deferred[None]:
        waiter[:] = [defer.Deferred()]
        return waiter[0]

    fake.record_drink = record
    return recorded, arm


async def backlog_run(reactor: Any, count: int) -> tuple[float, float]:
    """Drinks per second delivered from a backlog of ``count``; also the
    mean cost of one ``add_drink`` while queueing it (fsync off)."""
    from fakeserver import API_KEY, FakeKegbotServer
    from twisted.internet import task

    from kegtwist.delivery.client import KegbotServerClient
    from kegtwist.delivery.outbox import Outbox
    from kegtwist.delivery.service import DeliveryService

    fake = FakeKegbotServer()
    fake.listen(reactor)
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as directory:
        outbox = Outbox(Path(directory), fsync=False)
        outbox.open()
        now = time.time() - 3600
        start = time.perf_counter()
        for i in range(count):
            outbox.add_drink(drink(i + 1, now + i * 0.01))
        add_seconds = (time.perf_counter() - start) / count
        outbox.close()
        outbox = Outbox(Path(directory))  # fsync on, as the daemon runs it
        outbox.open()
        client = KegbotServerClient(reactor, fake.url, API_KEY)
        delivery = DeliveryService(outbox, client, reactor)
        start = time.perf_counter()
        delivery.startService()
        while len(fake.drinks) < count:
            await task.deferLater(reactor, 0.005, lambda: None)
        seconds = time.perf_counter() - start
        await delivery.stopService()
        await client.close()
        await fake.close()
        outbox.close()
    assert len(fake.drinks) == count, "a drink was recorded twice"
    return count / seconds, add_seconds


async def outbox_latency(reactor: Any, pours: int) -> list[float]:
    """(b, outbox): RecordDrink handed to the outbox -> on the server."""
    from fakeserver import API_KEY, FakeKegbotServer

    from kegtwist.delivery.client import KegbotServerClient
    from kegtwist.delivery.outbox import Outbox
    from kegtwist.delivery.service import DeliveryService

    fake = FakeKegbotServer()
    recorded, arm = on_record(fake, reactor)
    fake.listen(reactor)
    latencies = []
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as directory:
        outbox = Outbox(Path(directory))
        outbox.open()
        client = KegbotServerClient(reactor, fake.url, API_KEY)
        delivery = DeliveryService(outbox, client, reactor)
        delivery.startService()
        for i in range(pours):
            arrived = arm()
            start = time.perf_counter()
            outbox.add_drink(drink(i + 1, time.time()))  # what the core's listener does
            delivery.wake()
            await arrived
            latencies.append(recorded[-1] - start)
        await delivery.stopService()
        await client.close()
        await fake.close()
        outbox.close()
    return latencies


async def daemon_latency(reactor: Any, pours: int) -> list[float]:
    """(b, daemon): the core ends the pour -> on the server, whole daemon."""
    from fakeserver import API_KEY, FakeKegbotServer
    from twisted.internet import defer, task

    from kegtwist.core import RecordDrink
    from kegtwist.core.inputs import MeterReading
    from kegtwist.daemon.compose import build
    from kegtwist.daemon.options import Options

    fake = FakeKegbotServer()
    recorded, arm = on_record(fake, reactor)
    fake.listen(reactor)
    latencies = []
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as directory:
        config = Path(directory) / "kegbot.toml"
        config.write_text(
            f'[pours]\nidle_seconds = {IDLE_SECONDS}\n\n[[taps]]\nmeter = "kegboard.flow0"\n'
            "ml_per_tick = 0.5\n"
        )
        options = Options()
        options.parseOptions(
            [
                "--config", str(config), "--kegboard", "none", "--api-url", fake.url,
                "--api-key", API_KEY, "--redis-url", "none", "--state-dir", directory,
            ]
        )  # fmt: skip
        daemon = build(options, reactor)
        assert daemon.core is not None
        core = daemon.core.core
        ended: list[float] = []
        advance = core.advance

        def stamped(mono: float, wall: float) -> list[Any]:
            effects = advance(mono, wall)
            if any(isinstance(e, RecordDrink) for e in effects):
                ended.append(time.perf_counter())  # the pour just ended
            return effects

        core.advance = stamped  # type: ignore[method-assign]
        daemon.startService()
        reading = 1000
        daemon.core.feed(MeterReading("kegboard.flow0", reading))  # the baseline
        for _ in range(pours):
            arrived = arm()
            reading += 500
            daemon.core.feed(MeterReading("kegboard.flow0", reading))
            await arrived
            latencies.append(recorded[-1] - ended[-1])
        # Stop only once delivery is idle: stopping it while a POST is in
        # flight hung (see RESULTS-delivery.md).
        while len(daemon.outbox or ()) or daemon.delivery is None or daemon.delivery.state != "ok":
            await task.deferLater(reactor, 0.005, lambda: None)
        await task.deferLater(reactor, 0.01, lambda: None)
        await defer.maybeDeferred(daemon.stopService)
        await fake.close()
    assert len(fake.drinks) == pours and all(d["ticks"] == 500 for d in fake.drinks)
    return latencies


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {model}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def describe(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (
        f"{name}, {len(ordered)} pours: median {statistics.median(ordered) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pours", type=int, default=200)
    args = parser.parse_args()
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    results: dict[str, Any] = {}

    async def everything() -> None:
        results["backlog"] = [await backlog_run(reactor, args.backlog) for _ in range(args.runs)]
        results["outbox"] = await outbox_latency(reactor, args.pours)
        results["daemon"] = await daemon_latency(reactor, args.pours)

    def done(outcome: object) -> object:
        results["outcome"] = outcome
        reactor.stop()
        return None

    reactor.callWhenRunning(lambda: defer.ensureDeferred(everything()).addBoth(done))
    reactor.run()
    if "daemon" not in results:
        print(results.get("outcome"), file=sys.stderr)
        sys.exit(1)
    rates = [rate for rate, _ in results["backlog"]]
    adds = [add for _, add in results["backlog"]]
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        f"(a) backlog of {args.backlog:,}: median {statistics.median(rates):,.0f} drinks/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); "
        f"queueing it: {statistics.median(adds) * 1e6:,.0f} us per add_drink without fsync"
    )
    print("(b) " + describe("outbox: handed to the outbox -> on the server", results["outbox"]))
    print("(b) " + describe("daemon: core ends the pour -> on the server", results["daemon"]))


if __name__ == "__main__":
    main()
