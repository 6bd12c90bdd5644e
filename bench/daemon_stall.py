"""Reactor stalls of the whole daemon while taps pour and drinks are
journaled on a disk whose fsync is slow.

The daemon is ``twistd kegbot --role core`` started through
``python bench/daemonbench.py twistd --slow-fsync S --probe FILE -- ...``:
twistd's own ``run()`` in a process where ``os.fsync`` does the real fsync
and then sleeps S (default 50 ms, a slow SD card or a busy disk), and where
a 5 ms ``LoopingCall``, started by ``reactor.callWhenRunning``, notes the
gap between its calls.  A gap over the 5 ms interval is time the reactor
could not turn: nothing read from Redis, no valve command, no timer.  The
wrapper writes every gap (with its CLOCK_MONOTONIC time) and every fsync
(start, duration, thread) to FILE at exit, so the bench keeps only the
measurement window and can say which stalls were fsyncs.

Scenario per run: T taps (default 100) on the fake Kegbot Server; a
publisher process pours on each over Kegnet, 4 readings a second of 5-15
ticks, for P s (default 4), the taps starting ``--stagger`` s apart in all
(default 4), so drinks end and are journaled while other taps still pour
(``[pours] idle_seconds = 1``).  The window runs from the first reading to
the moment every tick is recorded on the server (tick audit as in
``daemon_kegnet.py``).  Target: no stall over 20 ms.

Run: .venv/bin/python bench/daemon_stall.py [--runs R] [--quick] [--fsync-ms 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import daemonbench as db

TARGET_STALL_MS = 20.0


def run_once(
    work: Path, taps: int, fsync_s: float, pour_s: float, stagger: float, seed: int
) -> dict:
    redis = db.new_run(work)
    fake = daemon = publisher = None
    probe = work / "probe.json"
    try:
        meters = [f"kegboard-s{i:04d}.flow0" for i in range(taps)]
        fake = db.FakeServerProcess(work, [db.MeterSpec(m) for m in meters])
        daemon = db.Daemon(
            work,
            db.core_daemon_args(redis, fake, "core"),
            config=db.FAST_POURS,
            wrapper=["--slow-fsync", str(fsync_s), "--probe", str(probe)],
        )
        db.wait_ready(daemon, redis, taps=taps)
        time.sleep(1.0)
        before = daemon.sched()
        publisher = db.PublisherProcess(
            work,
            redis.port,
            meters,
            hz=4,
            ticks=(5, 15),
            pour_seconds=pour_s,
            stagger=stagger,
            seed=seed,
        )
        t_start = publisher.wait_started()
        result = publisher.wait(stagger + pour_s + 120)
        t_poured = result["end"]
        expected = db.published_ticks(result)
        drinks = db.wait_for_drinks(fake, expected, timeout=180, alive=daemon.alive)
        t_recorded = time.monotonic()
        used = daemon.sched() - before
        rss = db.rss_mib(daemon.pid)
        exit_status = daemon.stop()
        if not probe.exists():
            raise RuntimeError(f"the wrapper wrote no probe file:\n{daemon.log[-3000:]}")
        data = json.loads(probe.read_text())
        interval = data["interval"]
        gaps = [(t, g) for t, g in data["gaps"] if t_start <= t <= t_recorded]
        fsyncs = [f for f in data["fsyncs"] if t_start <= f[0] <= t_recorded]
        values = sorted(g for _, g in gaps)
        top = sorted(gaps, key=lambda x: -x[1])[:5]

        def fsync_in(t: float, g: float) -> tuple[int, float]:
            inside = [f for f in fsyncs if f[2] and t - g <= f[0] <= t]
            return len(inside), sum(f[1] for f in inside)

        over = [g for g in values if g - interval > TARGET_STALL_MS / 1000]
        return {
            "max_ms": values[-1] * 1000,
            "p99_ms": db.percentile(values, 99) * 1000,
            "p50_ms": db.percentile(values, 50) * 1000,
            "stall_ms": (values[-1] - interval) * 1000,
            "over": len(over),
            "over_s": sum(g - interval for g in over),
            "window": t_recorded - t_start,
            "record_lag": t_recorded - t_poured,
            "fsync_main": sum(1 for f in fsyncs if f[2]),
            "fsync_other": sum(1 for f in fsyncs if not f[2]),
            "fsync_main_s": sum(f[1] for f in fsyncs if f[2]),
            "top": [(g * 1000, *fsync_in(t, g)) for t, g in top],
            "cpu_s": used.cpu_ns / 1e9,
            "rss": rss,
            "late_max": result["late_max"],
            "unheard": result["unheard"],
            "audit": db.audit(expected, drinks),
            "exit": exit_status,
            "notes": daemon.problems(),
        }
    finally:
        db.shut_down(redis, fake=fake, daemon=daemon, publisher=publisher)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs (default 2, --quick 1)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--taps", type=int, default=100)
    parser.add_argument(
        "--fsync-ms", type=float, default=50.0, help="added to every fsync (0: real disk only)"
    )
    parser.add_argument("--pour-seconds", type=float, default=4.0)
    parser.add_argument("--stagger", type=float, default=4.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    db.check_venv()
    runs = args.runs or (1 if args.quick else 2)
    info, work = db.begin(
        f"daemon_stall: {args.taps} taps pouring over Kegnet ({args.pour_seconds:g} s each, "
        f"starts spread over {args.stagger:g} s), fsync +{args.fsync_ms:g} ms, {runs} run(s)",
        "stall",
    )
    results = []
    failed = False
    for i in range(runs):
        r = run_once(
            work / f"run{i + 1}",
            args.taps,
            args.fsync_ms / 1000,
            args.pour_seconds,
            args.stagger,
            i + 1,
        )
        results.append(r)
        a = r["audit"]
        print(
            f"  run {i + 1}: longest reactor gap {r['max_ms']:.0f} ms, p99 {r['p99_ms']:.1f} ms, "
            f"p50 {r['p50_ms']:.1f} ms; {r['over']} stalls over {TARGET_STALL_MS:g} ms "
            f"({r['over_s']:.1f} s in all) in a {r['window']:.1f} s window; all ticks recorded "
            f"{r['record_lag']:.1f} s after the last reading; fsyncs on the reactor thread "
            f"{r['fsync_main']} ({r['fsync_main_s']:.1f} s), elsewhere {r['fsync_other']}; daemon CPU "
            f"{r['cpu_s']:.2f} s; audit {'ok' if a.ok else 'FAILED'} ({a.drinks} drinks); "
            f"exit {r['exit']}",
            flush=True,
        )
        for ms, n, fs in r["top"]:
            print(
                f"    gap {ms:7.1f} ms: {n} fsync(s) on the reactor thread inside it, {fs * 1000:.0f} ms"
            )
        failed = db.report_run(r) or failed
    mx = db.median(r["max_ms"] for r in results)
    p99 = db.median(r["p99_ms"] for r in results)
    stall = db.median(r["stall_ms"] for r in results)
    print()
    print(f"## daemon_stall ({args.taps} taps, fsync +{args.fsync_ms:g} ms, median of {runs})")
    print(db.machine_line(info))
    print(
        f"longest reactor gap  {mx:8.1f} ms (stall {stall:.1f} ms over the 5 ms probe)   "
        f"target no stall > {TARGET_STALL_MS:g} ms: {db.verdict(stall <= TARGET_STALL_MS)}   "
        f"runs {db.fmt_runs([r['max_ms'] for r in results], '.0f')}"
    )
    print(
        f"p99 reactor gap      {p99:8.1f} ms   runs {db.fmt_runs([r['p99_ms'] for r in results])}"
    )
    print(
        f"stalls > {TARGET_STALL_MS:g} ms        {db.median(r['over'] for r in results):8.0f}      "
        f"(median {db.median(r['over_s'] for r in results):.1f} s stalled per run)"
    )
    print(
        f"last tick -> all recorded {db.median(r['record_lag'] for r in results):.1f} s; "
        f"reactor-thread fsyncs per run {db.median(r['fsync_main'] for r in results):.0f}"
    )
    print(f"tick audit           {db.audits_exact(results)}")
    return db.finish(work, args.keep, failed)


if __name__ == "__main__":
    sys.exit(main())
