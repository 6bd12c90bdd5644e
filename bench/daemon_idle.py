"""Idle footprint of the whole daemon with a board, Redis and the server.

A real ``twistd -n kegbot`` (role ``all``) with one local Kegboard (a
``PtyKegboard`` on a real pseudo-terminal, served by this process's reactor:
it answers pings and says hello every 10 s, as the firmware does), a real
redis-server (``--redis-url``) and the loopback fake Kegbot Server in its
own process (``--api-url``).  Once everything is connected and 5 s have
passed, nothing is poured for the window (60 s, ``--quick`` 20 s), and the
bench reads, for the daemon process only:

* CPU: the sum over its threads of ``/proc/PID/task/*/schedstat``'s first
  field (ns), as % of one core over the window (utime+stime shown beside
  it: at 10 ms a tick it is too coarse for this);
* wakeups per second: timeslices run (schedstat's third field) and
  voluntary context switches (``/proc/PID/task/*/status``), summed over the
  threads;
* RSS (``VmRSS``) at the end of the window, and its peak (``VmHWM``).

Targets: <= 0.05 % of a core, <= 45 MiB RSS.

Run: .venv/bin/python bench/daemon_idle.py [--runs R] [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import daemonbench as db

TARGET_CPU_PERCENT = 0.05
TARGET_RSS_MIB = 45.0
SETTLE_SECONDS = 5.0


async def run_once(reactor: Any, work: Path, seconds: float) -> dict:
    from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard

    redis = db.new_run(work)
    fake = daemon = board = None
    try:
        fake = db.FakeServerProcess(work)
        board = PtyKegboard(reactor, SimulatedKegboard())
        daemon = db.Daemon(
            work, [*db.core_daemon_args(redis, fake, "all"), "--kegboard", board.path]
        )
        await db.until_ready(reactor, daemon, redis, taps=2)
        await db.sleep(reactor, SETTLE_SECONDS)
        pid = daemon.pid
        s0, c0, v0, t0 = (
            db.sched(pid),
            db.stat_cpu_seconds(pid),
            db.ctxt_switches(pid),
            time.monotonic(),
        )
        await db.sleep(reactor, seconds)
        s1, c1, v1, t1 = (
            db.sched(pid),
            db.stat_cpu_seconds(pid),
            db.ctxt_switches(pid),
            time.monotonic(),
        )
        window = t1 - t0
        used = s1 - s0
        result = {
            "window": window,
            "cpu_pct": 100 * used.cpu_ns / 1e9 / window,
            "cpu_ms": used.cpu_ns / 1e6,
            "stat_pct": 100 * (c1 - c0) / window,
            "slices_s": used.slices / window,
            "vol_s": (v1[0] - v0[0]) / window,
            "invol_s": (v1[1] - v0[1]) / window,
            "rss": db.rss_mib(pid),
            "hwm": db.hwm_mib(pid),
            "threads": db.thread_count(pid),
        }
        result["exit"] = daemon.stop()
        result["notes"] = daemon.problems()
        return result
    finally:
        db.shut_down(redis, fake=fake, daemon=daemon, board=board)


async def main(reactor: Any, args: argparse.Namespace) -> int:
    runs = args.runs or 1
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    info, work = db.begin(
        f"daemon_idle: one PtyKegboard, Redis and the server connected, {seconds:g} s idle, "
        f"{runs} run(s)",
        "idle",
    )
    results = []
    for i in range(runs):
        r = await run_once(reactor, work / f"run{i + 1}", seconds)
        results.append(r)
        print(
            f"  run {i + 1}: CPU {r['cpu_pct']:.4f} % of a core ({r['cpu_ms']:.1f} ms in "
            f"{r['window']:.1f} s; utime+stime says {r['stat_pct']:.3f} %), {r['slices_s']:.2f} "
            f"timeslices/s, {r['vol_s']:.2f} voluntary + {r['invol_s']:.2f} involuntary context "
            f"switches/s, RSS {r['rss']:.1f} MiB (peak {r['hwm']:.1f}), {r['threads']} thread(s), "
            f"exit {r['exit']}",
            flush=True,
        )
        db.report_run(r)
    cpu = db.median(r["cpu_pct"] for r in results)
    rss = db.median(r["rss"] for r in results)
    print()
    print(f"## daemon_idle ({seconds:g} s window, median of {runs})")
    print(db.machine_line(info))
    print(
        f"idle CPU    {cpu:8.4f} % of a core   target <= {TARGET_CPU_PERCENT:g} %: "
        f"{db.verdict(cpu <= TARGET_CPU_PERCENT)}   runs {db.fmt_runs([r['cpu_pct'] for r in results], '.4f')}"
    )
    print(
        f"wakeups     {db.median(r['slices_s'] for r in results):8.2f} /s (timeslices); "
        f"{db.median(r['vol_s'] for r in results):.2f} /s voluntary context switches"
    )
    print(
        f"RSS         {rss:8.1f} MiB           target <= {TARGET_RSS_MIB:g} MiB: "
        f"{db.verdict(rss <= TARGET_RSS_MIB)}   (peak {db.median(r['hwm'] for r in results):.1f} MiB)"
    )
    return db.finish(work, args.keep)


def entry() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs (default 1)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="idle window (default 60, --quick 20)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    db.check_venv()
    return db.react(main, args)


if __name__ == "__main__":
    sys.exit(entry())
