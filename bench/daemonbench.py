"""Shared machinery of the whole-daemon benchmarks (``bench/daemon_*.py``).

The daemon under test is always a real ``twistd -n kegbot`` process from
the venv's bin dir, measured from outside through ``/proc``:

* CPU: per-thread ``/proc/PID/task/*/schedstat`` (ns on the CPU, ns waiting
  on a run queue, timeslices), summed; cross-checked with utime+stime of
  ``/proc/PID/stat`` (clock ticks, also counts threads that have exited);
* RSS and its peak: ``VmRSS`` / ``VmHWM`` of ``/proc/PID/status``;
* wakeups: timeslices (schedstat's third field) and voluntary context
  switches, summed over the threads.

Everything the daemon talks to runs in *other* processes, so nothing the
bench does shares the daemon's interpreter or GIL:

* Redis: a real ``redis-server`` on a free port (``tests/redisd.py``);
* the Kegbot Server: ``tests/fakeserver.py``'s ``FakeKegbotServer`` on its
  own Twisted reactor in a helper process (``python bench/daemonbench.py
  fakeserver SPEC``).  A helper *process*, not the bench process, because
  the benches that publish in a tight loop (``daemon_kegnet.py``) or time a
  pty to a millisecond (``daemon_token_latency.py``) would otherwise delay
  the server's answers (token lookups, drink POSTs) and charge the bench's
  own stalls to the daemon; and Twisted's reactor is one per process, so a
  thread would not do.  Two extra endpoints, ``/_bench/drinks`` and
  ``/_bench/lookups``, hand the recorded drinks and the CLOCK_MONOTONIC
  arrival times of token lookups to the bench for the audit;
* paced Kegnet traffic (``python bench/daemonbench.py publish ...``):
  classic MeterUpdate JSON, pipelined PUBLISH on a raw socket, per-meter
  first and last readings written out for the tick audit;
* ``python bench/daemonbench.py twistd [--slow-fsync S] [--probe FILE] --
  TWISTD-ARGS``: twistd's own ``run()`` with ``os.fsync`` slowed down and a
  5 ms LoopingCall probe of the reactor's iteration gaps
  (``daemon_stall.py``).

The module imports only the standard library at the top, so that the
wrapper adds nothing to the daemon it wraps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TESTS = ROOT / "tests"
THIS = Path(__file__).resolve()
BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEY = "test-key"  # tests/fakeserver.py's
CHANNEL = "kegnet"
TICKS_PER_ML = 2.724  # the Kegbot Server's default meter

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


# --- machine ------------------------------------------------------------------


def platform_info() -> dict[str, str]:
    """The machine and the software versions (also ``footprint.py``'s)."""
    model = "unknown"
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    twisted_version = subprocess.run(
        [sys.executable, "-c", "import twisted; print(twisted.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted_version,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine() -> dict[str, str]:
    return {
        **platform_info(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "code": code_state(),
    }


def code_state() -> str:
    """HEAD, and a digest of uncommitted changes to kegtwist/ (others may be
    editing the checkout while a bench runs: say what was measured)."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    diff = git("diff", "HEAD", "--", "kegtwist")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "kegtwist").split()
    for name in untracked:
        try:
            diff += name + (ROOT / name).read_text(errors="replace")
        except OSError:
            pass
    changed = len(git("diff", "HEAD", "--name-only", "--", "kegtwist").split()) + len(untracked)
    if not changed:
        return f"code: {head}, clean"
    digest = hashlib.sha256(diff.encode()).hexdigest()[:10]
    return f"code: {head} + uncommitted changes to {changed} file(s) in kegtwist/ (digest {digest})"


def machine_line(info: dict[str, str] | None = None) -> str:
    info = info or machine()
    return (
        f"machine: nproc {info['nproc']}, {info['cpu']} ({info['arch']}), Linux {info['kernel']}, "
        f"Python {info['python']}, Twisted {info['twisted']}; {info['date']}; "
        f"load average at start {info['load']}\n{info['code']}"
    )


def check_venv() -> None:
    if not TWISTD.exists():
        sys.exit(f"{TWISTD} not found: run this with the venv's python (.venv/bin/python)")


# --- /proc ----------------------------------------------------------------------


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class Sched:
    """Summed over the threads alive at the time of reading."""

    cpu_ns: int  # on the CPU
    wait_ns: int  # runnable, waiting for a CPU
    slices: int  # timeslices run (each a wakeup or a preemption)

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            self.cpu_ns - other.cpu_ns, self.wait_ns - other.wait_ns, self.slices - other.slices
        )


def sched(pid: int) -> Sched:
    cpu = wait = slices = 0
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a, b, c = f.read().split()[:3]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        cpu += int(a)
        wait += int(b)
        slices += int(c)
    return Sched(cpu, wait, slices)


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime (and the same of reaped threads) of the whole process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def ctxt_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary), summed over the threads."""
    vol = invol = 0
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return vol, invol


def thread_count(pid: int) -> int:
    return len(_tasks(pid))


class CpuSampler(threading.Thread):
    """(monotonic, Sched) of a process every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, Sched]] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            s = sched(self.pid)
            t = time.monotonic()
            with self._lock:
                self.samples.append((t, s))
            self._halt.wait(self.interval)

    def snapshot(self) -> list[tuple[float, Sched]]:
        with self._lock:
            return list(self.samples)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def at(samples: Sequence[tuple[float, Sched]], t: float) -> Sched:
    """The last sample taken at or before ``t`` (the first if none)."""
    best = samples[0][1]
    for ts, s in samples:
        if ts > t:
            break
        best = s
    return best


def busy_until(
    samples: Sequence[tuple[float, Sched]],
    start: float,
    quiet_window: float = 0.2,
    quiet_share: float = 0.05,
) -> float | None:
    """When the daemon stopped working after ``start``: the first sample
    after which, for ``quiet_window`` seconds, it neither ran nor waited to
    run (CPU + run-queue wait < ``quiet_share`` of the window).  Counting
    run-queue wait keeps a daemon that other programs preempt from looking
    idle.  None if no such window is in the samples yet."""
    n = len(samples)
    j = 0
    for i in range(n):
        ti, si = samples[i]
        if ti < start:
            continue
        if j < i:
            j = i
        while j < n and samples[j][0] - ti < quiet_window:
            j += 1
        if j >= n:
            return None
        tj, sj = samples[j]
        used = (sj.cpu_ns - si.cpu_ns) + (sj.wait_ns - si.wait_ns)
        if used < quiet_share * (tj - ti) * 1e9:
            return ti
    return None


# --- statistics ---------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    v = list(values)
    return statistics.median(v) if v else float("nan")


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was measured."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt_runs(values: Sequence[float], spec: str = ".1f") -> str:
    return "[" + ", ".join(format(v, spec) for v in values) + "]"


# --- Kegnet messages ----------------------------------------------------------------


def meter_update(meter: str, reading: int) -> bytes:
    """A MeterUpdate exactly as the classic kegboard daemon sends it."""
    return json.dumps(
        {"event": "MeterUpdate", "data": {"meter_name": meter, "reading": reading}}
    ).encode()


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def publish_cmd(payload: bytes, channel: str = CHANNEL) -> bytes:
    return resp(b"PUBLISH", channel.encode(), payload)


class ReplyCounter(threading.Thread):
    """Reads the integer replies to pipelined PUBLISHes on a socket: how
    many, and how many reached no subscriber (the daemon was not there)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.replies = 0
        self.unheard = 0
        self.errors = 0
        self.closed = False
        self.last_reply = 0.0
        self._cond = threading.Condition()

    def run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            buf += data
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            n = unheard = errors = 0
            for line in lines:
                n += 1
                if line == b":0":
                    unheard += 1
                elif not line.startswith(b":"):
                    errors += 1
            with self._cond:
                self.replies += n
                self.unheard += unheard
                self.errors += errors
                self.last_reply = time.monotonic()
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.replies < count and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.replies >= count


def redis_connection(port: int) -> tuple[socket.socket, ReplyCounter]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    counter = ReplyCounter(sock)
    counter.start()
    return sock, counter


# --- Redis ---------------------------------------------------------------------------


def start_redis(directory: Path) -> Any:
    from redisd import RedisServer

    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(directory).start()


def unlimit_pubsub_buffers(redis: Any) -> None:
    """Let a subscriber fall behind by any amount (a burst is a backlog by
    design); the default, 32 MB hard / 8 MB for 60 s, would disconnect it."""
    reply = redis.command("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"CONFIG SET refused: {reply!r}")


def subscribers(redis: Any, channel: str = CHANNEL) -> int:
    reply = redis.command("PUBSUB", "NUMSUB", channel)
    # *2\r\n$6\r\nkegnet\r\n:1\r\n
    return int(reply.rsplit(b":", 1)[1].split(b"\r\n")[0])


# --- the fake Kegbot Server in its own process ---------------------------------------


@dataclass
class MeterSpec:
    name: str
    ticks_per_ml: float = TICKS_PER_ML
    relay: str = ""


class FakeServerProcess:
    """``FakeKegbotServer`` (tests/fakeserver.py) on its own reactor in a
    helper process, with ``meters`` added as taps (keg 1) before it listens."""

    def __init__(self, tmp: Path, meters: Sequence[MeterSpec] = (), name: str = "fakeserver"):
        self.spec_path = tmp / f"{name}.json"
        self.port_path = tmp / f"{name}.port"
        self.log_path = tmp / f"{name}.log"
        self.spec_path.write_text(json.dumps({"meters": [m.__dict__ for m in meters]}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(THIS), "fakeserver", str(self.spec_path), str(self.port_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        deadline = time.monotonic() + 20
        while not (self.port_path.exists() and self.port_path.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.port = int(self.port_path.read_text())
        self.url = f"http://127.0.0.1:{self.port}/api/"

    def _get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def drinks(self) -> list[dict[str, Any]]:
        return list(self._get("/_bench/drinks"))

    def lookups(self) -> list[float]:
        """CLOCK_MONOTONIC times at which token lookups arrived."""
        return list(self._get("/_bench/lookups"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve_fake(spec_path: str, port_path: str) -> None:
    """The helper process: FakeKegbotServer plus the bench's endpoints."""
    from fakeserver import FakeKegbotServer
    from twisted.internet import reactor
    from twisted.web import resource, server

    spec = json.loads(Path(spec_path).read_text())
    fake = FakeKegbotServer()
    for m in spec["meters"]:
        port = m["name"].partition(".")[2]
        if m["name"] not in fake.meters:
            fake.meters[m["name"]] = {
                "id": len(fake.meters) + 1,
                "port_name": port,
                "controller": 1,
                "ticks_per_ml": m["ticks_per_ml"],
            }
        fake.taps[m["name"]] = {
            "id": len(fake.taps) + 1,
            "name": m["name"],
            "relay_name": m["relay"],
            "keg": 1,
        }
    lookups: list[float] = []

    class Root(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes | int:
            path = request.path.decode()
            if path == "/_bench/drinks":
                request.setHeader("content-type", "application/json")
                return json.dumps(
                    [
                        {k: d[k] for k in ("id", "meter_name", "ticks", "user_id", "time")}
                        for d in fake.drinks
                    ]
                ).encode()
            if path == "/_bench/lookups":
                request.setHeader("content-type", "application/json")
                return json.dumps(lookups).encode()
            if "/auth-tokens/" in path:
                lookups.append(time.monotonic())
            return fake.handle(request)

    site = server.Site(Root())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    tmp = Path(port_path).with_suffix(".tmp")
    tmp.write_text(str(port.getHost().port))
    os.replace(tmp, port_path)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)


# --- the daemon ------------------------------------------------------------------------


FAST_POURS = """
[pours]
idle_seconds = 1   # pours end 1 s after their last tick
"""


class Daemon:
    """One ``twistd -n kegbot`` process (or the stall wrapper around
    twistd's ``run()``), its output in a file, its state in ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        args: Sequence[str],
        *,
        name: str = "daemon",
        config: str | None = None,
        twistd_options: Sequence[str] = (),
        wrapper: Sequence[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self.state_dir = tmp / f"{name}-state"
        argv = list(args)
        if config is not None:
            config_path = tmp / f"{name}.toml"
            config_path.write_text(config)
            argv = ["--config", str(config_path), *argv]
        twistd = ["-n", "--pidfile=", *twistd_options, "kegbot", "--state-dir",
                  str(self.state_dir), *argv]  # fmt: skip
        if wrapper is not None:
            command = [sys.executable, str(THIS), "twistd", *wrapper, "--", *twistd]
        else:
            command = [str(TWISTD), *twistd]
        self.command = command
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_log(self, condition: Callable[[str], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log
            if condition(text):
                return
            if not self.alive():
                raise RuntimeError(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}:\n{text[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; daemon log:\n{text[-4000:]}")
            time.sleep(0.05)

    def sched(self) -> Sched:
        return sched(self.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def problems(self) -> list[str]:
        text = self.log
        notes = []
        if "Traceback" in text:
            notes.append(f"traceback in {self.log_path}")
        for needle in ("Unhandled error", "dead letter", "rejected (", "dropped"):
            count = text.count(needle)
            if count:
                notes.append(f"{count}x '{needle}' in the daemon log")
        return notes


def taps_loaded(expected: int) -> Callable[[str], bool]:
    """The log's last ``Taps:`` line names at least ``expected`` meters."""

    def check(text: str) -> bool:
        idx = text.rfind("Taps: ")
        if idx < 0:
            return False
        line = text[idx + 6 : text.find("\n", idx) if text.find("\n", idx) >= 0 else None]
        return len(line.split(", ")) >= expected

    return check


def wait_ready(daemon: Daemon, redis: Any, taps: int, board: bool = False) -> None:
    daemon.wait_log(lambda t: "Kegnet: connected" in t, "Kegnet connected")
    daemon.wait_log(taps_loaded(taps), f"{taps} taps from the server")
    if board:
        daemon.wait_log(lambda t: "Kegboard kegboard connected" in t, "the board's hello")
    deadline = time.monotonic() + 10
    while subscribers(redis) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the daemon never subscribed")
        time.sleep(0.05)


def core_daemon_args(redis: Any, fake: FakeServerProcess, role: str) -> list[str]:
    return ["--role", role, "--redis-url", redis.url, "--api-url", fake.url,
            "--api-key", API_KEY]  # fmt: skip


# --- audit ---------------------------------------------------------------------------


def wait_for_drinks(
    fake: FakeServerProcess,
    expected: dict[str, int],
    timeout: float,
    *,
    settle: float = 15.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[dict[str, Any]]:
    """Poll the server until every meter's drinks sum to what was poured;
    give up at ``timeout``, or when no drink arrived for ``settle`` s."""
    deadline = time.monotonic() + timeout
    last_count = -1
    last_change = time.monotonic()
    while True:
        drinks = fake.drinks()
        totals = drink_totals(drinks)
        if all(totals.get(m, 0) == t for m, t in expected.items()):
            return drinks
        now = time.monotonic()
        if len(drinks) != last_count:
            last_count = len(drinks)
            last_change = now
        if now > deadline or now - last_change > settle or not alive():
            return drinks
        time.sleep(0.2)


def drink_totals(drinks: Iterable[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for d in drinks:
        totals[d["meter_name"]] = totals.get(d["meter_name"], 0) + int(d["ticks"])
    return totals


@dataclass
class Audit:
    meters: int
    published: int
    recorded: int
    drinks: int
    mismatches: list[tuple[str, int, int]] = field(default_factory=list)  # meter, expected, got

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def lines(self, limit: int = 20) -> list[str]:
        head = (
            f"tick audit: {self.meters} meters, {self.published:,} ticks published, "
            f"{self.recorded:,} recorded in {self.drinks:,} drinks: "
            + (
                "every tick recorded exactly once"
                if self.ok
                else f"{len(self.mismatches)} meter(s) WRONG"
            )
        )
        out = [head]
        for meter, want, got in self.mismatches[:limit]:
            diff = got - want
            kind = f"lost {-diff}" if diff < 0 else f"extra {diff}"
            out.append(f"  {meter}: published {want}, recorded {got}: {kind}")
        if len(self.mismatches) > limit:
            out.append(f"  ... and {len(self.mismatches) - limit} more")
        return out


def audit(expected: dict[str, int], drinks: Sequence[dict[str, Any]]) -> Audit:
    totals = drink_totals(drinks)
    meters = sorted(set(expected) | set(totals))
    result = Audit(
        meters=len(expected),
        published=sum(expected.values()),
        recorded=sum(totals.get(m, 0) for m in expected),
        drinks=len(drinks),
    )
    for m in meters:
        want, got = expected.get(m, 0), totals.get(m, 0)
        if want != got:
            result.mismatches.append((m, want, got))
    return result


# --- paced Kegnet traffic in its own process -----------------------------------------------


class PublisherProcess:
    """``python bench/daemonbench.py publish``: MeterUpdates for ``meters``
    at ``hz`` readings per meter per second, ``ticks`` (lo, hi) more each,
    in pours of ``pour_seconds`` started ``stagger`` apart (0: all at once;
    ``pour_seconds`` 0: one pour until stopped), for ``duration`` s (0:
    until :meth:`stop`).  Its result: per meter the first (baseline) and the
    last reading published, so ticks published = last - first."""

    def __init__(
        self,
        tmp: Path,
        redis_port: int,
        meters: Sequence[str],
        *,
        hz: float = 4.0,
        ticks: tuple[int, int] = (1, 8),
        pour_seconds: float = 0.0,
        stagger: float = 0.0,
        duration: float = 0.0,
        seed: int = 1,
        name: str = "publisher",
    ) -> None:
        self.meters_path = tmp / f"{name}-meters.json"
        self.out_path = tmp / f"{name}-result.json"
        self.log_path = tmp / f"{name}.log"
        self.meters_path.write_text(json.dumps(list(meters)))
        args = [
            sys.executable, str(THIS), "publish",
            "--port", str(redis_port),
            "--meters", str(self.meters_path),
            "--hz", str(hz),
            "--ticks", f"{ticks[0]}:{ticks[1]}",
            "--pour-seconds", str(pour_seconds),
            "--stagger", str(stagger),
            "--duration", str(duration),
            "--seed", str(seed),
            "--out", str(self.out_path),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def started(self) -> bool:
        return "started" in self.log_path.read_text()

    def wait_started(self, timeout: float = 20) -> float:
        """The CLOCK_MONOTONIC time of its first paced reading."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("started "):
                    return float(line.split()[1])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"publisher did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return self.result()

    def wait(self, timeout: float) -> dict[str, Any]:
        self.proc.wait(timeout)
        return self.result()

    def result(self) -> dict[str, Any]:
        if not self.out_path.exists():
            raise RuntimeError(f"publisher wrote no result:\n{self.log_path.read_text()}")
        return dict(json.loads(self.out_path.read_text()))


def publish_main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="daemonbench.py publish")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--meters", required=True)
    p.add_argument("--hz", type=float, default=4.0)
    p.add_argument("--ticks", default="1:8")
    p.add_argument("--pour-seconds", type=float, default=0.0)
    p.add_argument("--stagger", type=float, default=0.0)
    p.add_argument("--duration", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--slots", type=int, default=10, help="batches per reading period")
    a = p.parse_args(argv)
    meters: list[str] = json.loads(Path(a.meters).read_text())
    lo, hi = (int(x) for x in a.ticks.split(":"))
    rng = random.Random(a.seed)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    sock, counter = redis_connection(a.port)
    first = {m: rng.randrange(0, 1_000_000) for m in meters}
    last = dict(first)
    # Baselines: every meter's first reading is not a pour.
    sock.sendall(b"".join(publish_cmd(meter_update(m, r)) for m, r in first.items()))
    sent = len(meters)
    counter.wait_for(sent, 30)
    time.sleep(0.5)  # the core has taken the baselines before any tick

    period = 1.0 / a.hz
    slot = period / a.slots
    groups = [meters[i :: a.slots] for i in range(a.slots)]
    index = {m: i for i, m in enumerate(meters)}
    n_meters = len(meters)
    start = time.monotonic()
    print(f"started {start:.6f}", flush=True)
    late_max = 0.0
    k = 0
    while not stopping.is_set():
        due = start + k * slot
        now = time.monotonic()
        if due > now:
            if stopping.wait(due - now):
                break
        else:
            late_max = max(late_max, now - due)
        t = due - start
        if a.duration and t >= a.duration:
            break
        batch = []
        for m in groups[k % a.slots]:
            if a.pour_seconds > 0:
                begin = a.stagger * index[m] / max(1, n_meters)
                if not begin <= t < begin + a.pour_seconds:
                    continue
            last[m] += rng.randint(lo, hi)
            batch.append(publish_cmd(meter_update(m, last[m])))
        if batch:
            sock.sendall(b"".join(batch))
            sent += len(batch)
        if a.pour_seconds > 0 and t >= a.stagger + a.pour_seconds:
            break
        k += 1
    end = time.monotonic()
    acked = counter.wait_for(sent, 60)
    sock.close()
    result = {
        "first": first,
        "last": last,
        "sent": sent,
        "acked": counter.replies,
        "all_acked": acked,
        "unheard": counter.unheard,
        "errors": counter.errors,
        "start": start,
        "end": end,
        "late_max": late_max,
    }
    tmp = Path(a.out + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, a.out)
    print(f"done {end:.6f} sent {sent}", flush=True)


def published_ticks(result: dict[str, Any]) -> dict[str, int]:
    return {m: int(result["last"][m]) - int(result["first"][m]) for m in result["first"]}


# --- the stall wrapper: twistd's run() with slow fsync and a reactor probe -----------------


def stall_wrapper_main(argv: Sequence[str]) -> None:
    """Runs in the daemon process, before twistd: nothing of the daemon's is
    imported yet when ``os.fsync`` is replaced, and the probe is started by
    ``reactor.callWhenRunning`` once twistd has installed the reactor."""
    if "--" not in argv:
        sys.exit("usage: daemonbench.py twistd [--slow-fsync S] [--probe FILE] -- TWISTD-ARGS")
    split = list(argv).index("--")
    p = argparse.ArgumentParser(prog="daemonbench.py twistd")
    p.add_argument("--slow-fsync", type=float, default=0.0)
    p.add_argument("--probe", default=None)
    p.add_argument("--probe-interval", type=float, default=0.005)
    a = p.parse_args(argv[:split])
    twistd_args = list(argv[split + 1 :])
    # The daemon imports nothing from the bench or tests directories.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (BENCH, TESTS)]

    main_thread = threading.main_thread()
    fsyncs: list[tuple[float, float, bool]] = []  # start, seconds, on the reactor thread
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        t0 = time.monotonic()
        try:
            real_fsync(fd)
            if a.slow_fsync > 0:
                time.sleep(a.slow_fsync)
        finally:
            fsyncs.append((t0, time.monotonic() - t0, threading.current_thread() is main_thread))

    os.fsync = slow_fsync  # type: ignore[assignment]

    gaps: list[tuple[float, float]] = []  # (monotonic at the probe, gap since the previous)
    written = [False]

    def install_probe() -> None:
        from twisted.internet import reactor, task

        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            gaps.append((now, now - last[0]))
            last[0] = now

        probe = task.LoopingCall(tick)
        probe.start(a.probe_interval, now=False)
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: probe.stop() if probe.running else None
        )

    def dump() -> None:
        if written[0] or a.probe is None:
            return
        written[0] = True
        values = sorted(g for _, g in gaps)
        summary = {
            "interval": a.probe_interval,
            "slow_fsync": a.slow_fsync,
            "count": len(values),
            "max_gap": values[-1] if values else None,
            "p99_gap": percentile(values, 99) if values else None,
            "p50_gap": percentile(values, 50) if values else None,
            "gaps": gaps,
            "fsyncs": fsyncs,
        }
        tmp = Path(a.probe + ".tmp")
        tmp.write_text(json.dumps(summary))
        os.replace(tmp, a.probe)

    import atexit

    atexit.register(dump)

    from twisted.application import app

    original = app.startApplication

    def start_application(application: Any, save: bool) -> None:
        original(application, save)
        from twisted.internet import reactor

        reactor.callWhenRunning(install_probe)

    app.startApplication = start_application  # type: ignore[assignment]
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *twistd_args]
    try:
        run()
    finally:
        dump()


# --- cProfile output -------------------------------------------------------------------------


def profile_top(path: Path, count: int = 25) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(count)
    text = out.getvalue()
    # Shorten the site-packages and checkout prefixes.
    for prefix in (str(ROOT) + "/", str(BIN.parent) + "/lib/python3.11/site-packages/"):
        text = text.replace(prefix, "")
    return text


# --- the steps every daemon_*.py bench shares ----------------------------------------------


def begin(headline: str, name: str) -> tuple[dict[str, str], Path]:
    """A bench's start: the machine (noted before the runs load it), the
    headline printed, and a fresh temp dir for the runs (``--keep`` keeps it)."""
    info = machine()
    print(headline, flush=True)
    return info, Path(tempfile.mkdtemp(prefix=f"kegtwist-daemon-{name}-"))


def new_run(work: Path) -> Any:
    """A run's own dir, made, and its redis-server, started."""
    work.mkdir(parents=True)
    return start_redis(work / "redis")


def shut_down(
    redis: Any,
    *,
    fake: FakeServerProcess | None = None,
    daemon: Daemon | None = None,
    publisher: PublisherProcess | None = None,
    board: Any = None,
) -> None:
    """A run's teardown, whatever happened: kill what still runs."""
    if publisher is not None and publisher.proc.poll() is None:
        publisher.proc.kill()
    if daemon is not None:
        daemon.kill()
    if board is not None:
        board.close()
    if fake is not None:
        fake.stop()
    redis.kill()


def report_run(r: dict[str, Any]) -> bool:
    """Prints, under a run's line, what went wrong in it: the tick audit's
    mismatches, PUBLISHes no subscriber heard, notes on the daemon's log.
    True if the tick audit failed."""
    failed = False
    a: Audit | None = r.get("audit")
    if a is not None and not a.ok:
        failed = True
        for line in a.lines():
            print("    " + line)
    if r.get("unheard"):
        print(f"    {r['unheard']} PUBLISH reached no subscriber")
    for note in r["notes"]:
        print(f"    note: {note}")
    return failed


def audits_exact(results: Sequence[dict[str, Any]]) -> str:
    """``N/M runs exact``: how many runs' tick audits found every tick."""
    audits = [r["audit"] for r in results]
    return f"{sum(a.ok for a in audits)}/{len(audits)} runs exact"


def finish(work: Path, keep: bool, failed: bool = False) -> int:
    """Keeps or removes the work dir; the exit status (1: a tick audit failed)."""
    if keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("TICK AUDIT FAILED", file=sys.stderr)
        return 1
    return 0


# --- the benches that serve a pty board on their own reactor -------------------------------


async def sleep(reactor: Any, seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


async def until(
    reactor: Any, condition: Any, what: str, daemon: Daemon, timeout: float = 30
) -> None:
    """Polls ``condition`` without blocking the reactor (the pty board
    answers the daemon meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not daemon.alive():
            raise RuntimeError(f"daemon exited waiting for {what}:\n{daemon.log[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n{daemon.log[-3000:]}")
        await sleep(reactor, 0.05)


async def until_ready(reactor: Any, daemon: Daemon, redis: Any, taps: int) -> None:
    """:func:`wait_ready` with a board, polled on the reactor."""
    d = daemon
    await until(reactor, lambda: "Kegnet: connected" in d.log, "Kegnet", d)
    await until(reactor, lambda: taps_loaded(taps)(d.log), "taps", d)
    await until(reactor, lambda: "Kegboard kegboard connected" in d.log, "the board", d)
    await until(reactor, lambda: subscribers(redis) >= 1, "the subscription", d)


def react(main: Callable[[Any, argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Runs ``await main(reactor, args)`` under ``task.react``; a non-zero
    result is the process's exit status."""
    from twisted.internet import defer, task

    async def go(reactor: Any) -> None:
        code = await main(reactor, args)
        if code:
            raise SystemExit(code)  # react() exits with it

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    return 0


# --- entry points ---------------------------------------------------------------------------


if __name__ == "__main__":
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "fakeserver":
        serve_fake(*rest)
    elif command == "publish":
        publish_main(rest)
    elif command == "twistd":
        stall_wrapper_main(rest)
    else:
        sys.exit(
            "usage: daemonbench.py fakeserver SPEC PORTFILE | publish ... | twistd ... -- ARGS"
        )
