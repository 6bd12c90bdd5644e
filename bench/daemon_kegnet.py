"""Kegnet consumption by the whole daemon, measured from outside.

A real ``twistd -n kegbot --role core`` process, its taps (one per meter,
M of them) from a loopback fake Kegbot Server in a helper process, takes N
classic ``MeterUpdate`` messages (``{"event": "MeterUpdate", "data":
{"meter_name": ..., "reading": ...}}``, round robin over the M meters, the
first reading of each meter a baseline, then 1 to 10 more ticks each time)
that this process publishes into a real redis-server as fast as Redis takes
them: pipelined PUBLISH on a raw socket, commands built before the clock
starts.  Redis's pub/sub output limit is lifted so that the backlog a burst
makes is buffered, not cut (the default disconnects a subscriber 8 MB
behind for 60 s, or 32 MB behind at once).

Measured, per run, on the daemon's process only (``/proc/PID/task/*/
schedstat``, sampled every 5 ms):

* messages/s: N / (from the first PUBLISH to the moment the daemon stops
  working: the first 200 ms in which it neither ran nor waited for a CPU
  for more than 5 % of the time);
* CPU us per message: the daemon's CPU over the same span / N (includes
  the FlowUpdates it publishes and their echoes, as in real life);
* RSS when consumption ended, and its peak over the run (VmHWM);
* the tick audit: with ``[pours] idle_seconds = 1`` every pour ends a
  second after its last tick; the drinks the fake server recorded per meter
  must sum to exactly the ticks published per meter (last reading - first).
  A mismatch is printed per meter and makes the exit status 1.

``--profile FILE`` adds one more run under twistd's cProfile
(``--profile FILE --profiler=cprofile --savestats``), not counted in the
figures, and prints its top functions by tottime.

Run: .venv/bin/python bench/daemon_kegnet.py [--runs R] [--quick] [--messages N] [--meters M]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import daemonbench as db

TARGET_RATE = 50_000  # messages/s, at least
TARGET_CPU_US = 15.0  # CPU us per message, at most


def build_burst(meters: list[str], count: int, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """Pipelined PUBLISH commands in ~64 KiB blobs, and ticks per meter."""
    rng = random.Random(seed)
    first = {m: rng.randrange(0, 1_000_000) for m in meters}
    reading = dict(first)
    blobs: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for i in range(count):
        meter = meters[i % len(meters)]
        if i >= len(meters):  # the first message of each meter is its baseline
            reading[meter] += rng.randint(1, 10)
        cmd = db.publish_cmd(db.meter_update(meter, reading[meter]))
        chunk.append(cmd)
        size += len(cmd)
        if size >= 65536:
            blobs.append(b"".join(chunk))
            chunk, size = [], 0
    if chunk:
        blobs.append(b"".join(chunk))
    return blobs, {m: reading[m] - first[m] for m in meters}


def run_once(
    work: Path, count: int, meter_count: int, seed: int, profile: Path | None = None
) -> dict:
    redis = db.new_run(work)
    fake = daemon = None
    try:
        db.unlimit_pubsub_buffers(redis)
        meters = [f"kegboard-b{i:04d}.flow0" for i in range(meter_count)]
        fake = db.FakeServerProcess(work, [db.MeterSpec(m) for m in meters])
        options = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
        daemon = db.Daemon(
            work,
            db.core_daemon_args(redis, fake, "core"),
            config=db.FAST_POURS,
            twistd_options=options,
        )
        db.wait_ready(daemon, redis, taps=meter_count)
        blobs, expected = build_burst(meters, count, seed)
        time.sleep(1.0)  # settle: start-up work done
        sampler = db.CpuSampler(daemon.pid, 0.005)
        sampler.start()
        time.sleep(0.2)
        sock, replies = db.redis_connection(redis.port)
        t0 = time.monotonic()
        for blob in blobs:
            sock.sendall(blob)
        t_sent = time.monotonic()
        if not replies.wait_for(count, 300):
            raise RuntimeError(f"Redis acknowledged {replies.replies} of {count} PUBLISH")
        t_acked = time.monotonic()
        sock.close()
        deadline = time.monotonic() + 300
        t_end = None
        while t_end is None:
            time.sleep(0.1)
            t_end = db.busy_until(sampler.snapshot(), t0)
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon never went quiet")
        rss_end = db.rss_mib(daemon.pid)
        sampler.stop()
        samples = sampler.snapshot()
        used = db.at(samples, t_end) - db.at(samples, t0)
        span = t_end - t0
        drinks = db.wait_for_drinks(fake, expected, timeout=120, alive=daemon.alive)
        result = {
            "rate": count / span,
            "cpu_us": used.cpu_ns / 1e3 / count,
            "cpu_share": used.cpu_ns / 1e9 / span,
            "wait_ms": used.wait_ns / 1e6,
            "span": span,
            "publish_s": t_sent - t0,
            "acked_s": t_acked - t0,
            "unheard": replies.unheard,
            "rss": rss_end,
            "hwm": db.hwm_mib(daemon.pid),
            "threads": db.thread_count(daemon.pid),
            "stat_cpu": db.stat_cpu_seconds(daemon.pid),
            "audit": db.audit(expected, drinks),
        }
        result["exit"] = daemon.stop()
        result["notes"] = daemon.problems()
        return result
    finally:
        db.shut_down(redis, fake=fake, daemon=daemon)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs (default 5, --quick 3)")
    parser.add_argument(
        "--messages", type=int, default=None, help="N (default 200,000; --quick 50,000)"
    )
    parser.add_argument("--meters", type=int, default=100, help="M (default 100)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--profile", type=Path, default=None, help="also one cProfile'd run, stats to this file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    db.check_venv()
    runs = args.runs or (3 if args.quick else 5)
    count = args.messages or (50_000 if args.quick else 200_000)
    info, work = db.begin(
        f"daemon_kegnet: {count:,} MeterUpdate over {args.meters} meters into `twistd kegbot "
        f"--role core`, {runs} run(s)",
        "kegnet",
    )
    results = []
    failed = False
    for i in range(runs):
        r = run_once(work / f"run{i + 1}", count, args.meters, seed=i + 1)
        results.append(r)
        a = r["audit"]
        print(
            f"  run {i + 1}: {r['rate']:,.0f} msg/s ({r['span']:.2f} s; Redis took the burst in "
            f"{r['publish_s']:.2f} s), {r['cpu_us']:.2f} us CPU/msg ({100 * r['cpu_share']:.0f} % "
            f"of a core; {r['wait_ms']:.0f} ms waiting for a CPU), RSS {r['rss']:.1f} MiB "
            f"(peak {r['hwm']:.1f}), audit {'ok' if a.ok else 'FAILED'} "
            f"({a.drinks} drinks), exit {r['exit']}",
            flush=True,
        )
        failed = db.report_run(r) or failed
    rate = db.median(r["rate"] for r in results)
    cpu = db.median(r["cpu_us"] for r in results)
    rss = db.median(r["rss"] for r in results)
    hwm = db.median(r["hwm"] for r in results)
    print()
    print(f"## daemon_kegnet ({count:,} messages, {args.meters} meters, median of {runs})")
    print(db.machine_line(info))
    print(
        f"throughput      {rate:>10,.0f} msg/s    target >= {TARGET_RATE:,}: "
        f"{db.verdict(rate >= TARGET_RATE)}   runs {db.fmt_runs([r['rate'] for r in results], ',.0f')}"
    )
    print(
        f"CPU per message {cpu:>10.2f} us       target <= {TARGET_CPU_US:g}: "
        f"{db.verdict(cpu <= TARGET_CPU_US)}   runs {db.fmt_runs([r['cpu_us'] for r in results], '.2f')}"
    )
    print(
        f"CPU-bound rate  {1e6 / cpu:>10,.0f} msg/s    (1 / CPU per message: the rate with a core "
        f"to itself; the measured rate also pays for time spent waiting for a CPU, median "
        f"{db.median(r['wait_ms'] for r in results):.0f} ms a run)"
    )
    print(f"RSS at the end  {rss:>10.1f} MiB      (peak {hwm:.1f} MiB)")
    first = results[0]["audit"]
    print(
        f"tick audit      {db.audits_exact(results)} "
        f"({first.published:,} ticks over {first.meters} meters in run 1)"
    )
    if args.profile is not None:
        print(f"\nprofiled run (not in the figures), stats in {args.profile} ...", flush=True)
        r = run_once(work / "profile", count, args.meters, seed=99, profile=args.profile.resolve())
        print(
            f"  under cProfile: {r['rate']:,.0f} msg/s, {r['cpu_us']:.2f} us CPU/msg, audit "
            f"{'ok' if r['audit'].ok else 'FAILED'}"
        )
        if args.profile.exists():
            print(db.profile_top(args.profile, 25))
        else:
            print("  no profile written (did the daemon stop cleanly?)")
    return db.finish(work, args.keep, failed)


if __name__ == "__main__":
    sys.exit(main())
