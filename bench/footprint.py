"""The daemon's footprint as deployed: memory, idle CPU, time to first ping.

A Raspberry Pi runs this next to other things for months, mostly idle, so
what matters is resident memory once settled, CPU while nothing pours, and
how soon after start a board hears from the daemon.  Each scenario starts
``twistd -n kegbot`` as a real process (nothing else attached:
``--api-url none --redis-url none``) with N Kegboards simulated in *this*
process on real pseudo-terminals, so the daemon's figures hold only the
daemon.  The boards answer pings with a hello and say hello every 10 s, as
the firmware does.

Measured per scenario:

* start -> first ping: from just before the process is started to the
  first KBSP ping frame read on a board's pty (every board's, for N > 1);
* RSS: VmRSS from /proc/PID/status once idle (5 s after the first ping)
  and again at the end;
* idle CPU: (utime + stime) delta from /proc/PID/stat over the idle window
  divided by wall time, in % of one core.

If RSS is over target, it finds what the imports cost: import time from
``python -X importtime`` of the daemon's own start, and the resident memory
each package adds on top of what twistd needs anyway (a fresh interpreter
per package) -- the list of what is worth importing lazily.

Run from the repository root: python bench/footprint.py [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from daemonbench import platform_info

from kegtwist.boards.simulator import HELLO_HEARTBEAT_SECONDS, SimulatedKegboard
from kegtwist.protocol import kbsp

ROOT = Path(__file__).resolve().parents[1]
TWISTD = Path(sys.executable).parent / "twistd"
RSS_TARGET_MIB = 45.0
CPU_TARGET_PERCENT = 0.1
PING_TARGET_SECONDS = 1.0
SETTLE_SECONDS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Baseline for the import costs: what ``twistd kegbot`` loads whatever it
# does -- TLS kept out as kegtwist.daemon.lean does it (no https/rediss URL), the
# reactor, twistd's own machinery.
TWISTD_BASELINE = (
    "from kegtwist import lean; lean.keep_tls_out(); "
    "from twisted.internet import epollreactor; epollreactor.install(); "
    "import twisted.scripts.twistd, twisted.application.service"
)
HEAVY_STDLIB = {
    "ssl",
    "asyncio",
    "email",
    "http",
    "xml",
    "unicodedata",
    "decimal",
    "ctypes",
    "multiprocessing",
    "tomllib",
    "sqlite3",
    "json",
    "uuid",
    "hashlib",
    "zlib",
}


# --- boards -----------------------------------------------------------------


@dataclass
class PtyBoard:
    """A simulated board on a pty master, served by :class:`BoardLoop`."""

    board: SimulatedKegboard
    master: int
    slave: int
    path: str
    first_ping: float | None = None
    next_hello: float = 0.0

    @classmethod
    def open(cls, index: int) -> PtyBoard:
        master, slave = os.openpty()
        tty.setraw(slave)  # the slave stays open: the master never sees EIO
        os.set_blocking(master, False)
        return cls(
            SimulatedKegboard(serial_number=f"BENCH-{index:08X}"), master, slave, os.ttyname(slave)
        )

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class BoardLoop(threading.Thread):
    """Answers the daemon for every board: one thread, one select loop, so
    the bench itself costs nothing the daemon's CPU figure could see."""

    def __init__(self, boards: list[PtyBoard]) -> None:
        super().__init__(daemon=True)
        self.boards = {b.master: b for b in boards}
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            readable, _, _ = select.select(list(self.boards), [], [], 0.2)
            now = time.monotonic()
            for fd in readable:
                board = self.boards[fd]
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                before = len(board.board.received)
                reply = board.board.receive(data, now)
                if board.first_ping is None and any(
                    isinstance(m, kbsp.Ping) for m in board.board.received[before:]
                ):
                    board.first_ping = now
                self._write(board, reply)
            for board in self.boards.values():
                if board.first_ping is not None and now >= board.next_hello:
                    board.next_hello = now + HELLO_HEARTBEAT_SECONDS
                    self._write(board, board.board.hello(now))

    @staticmethod
    def _write(board: PtyBoard, data: bytes) -> None:
        try:
            if data:
                os.write(board.master, data)
        except OSError:
            pass


# --- /proc ------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime; fields after the parenthesised command name."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- scenarios --------------------------------------------------------------


@dataclass
class Figures:
    boards: int
    first_ping: float
    all_pinged: float
    rss_idle: float
    rss_end: float
    cpu_percent: float
    idle_seconds: float
    connected: int
    notes: list[str] = field(default_factory=list)


def daemon_command(boards: list[PtyBoard], state: Path) -> list[str]:
    args = [
        str(TWISTD),
        "-n",
        "--pidfile=",
        "kegbot",
        "--api-url",
        "none",
        "--redis-url",
        "none",
        "--state-dir",
        str(state),
    ]
    for board in boards:
        args += ["--kegboard", board.path]
    return args


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}


def run_scenario(count: int, idle_seconds: float, work: Path) -> Figures:
    boards = [PtyBoard.open(i) for i in range(count)]
    loop = BoardLoop(boards)
    loop.start()
    log_path = work / f"daemon-{count}.log"
    try:
        with open(log_path, "wb") as log:
            started = time.monotonic()
            proc = subprocess.Popen(
                daemon_command(boards, work / f"state-{count}"),
                cwd=work,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = started + 20
            while any(b.first_ping is None for b in boards):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no ping on every board:\n{log_path.read_text()}")
                time.sleep(0.01)
            pings = [b.first_ping - started for b in boards if b.first_ping is not None]
            time.sleep(SETTLE_SECONDS)
            rss_idle = rss_mib(proc.pid)
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(idle_seconds)
            cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
            rss_end = rss_mib(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        text = log_path.read_text(errors="replace")
        figures = Figures(
            count,
            min(pings),
            max(pings),
            rss_idle,
            rss_end,
            100 * (cpu1 - cpu0) / (wall1 - wall0),
            wall1 - wall0,
            text.count(" connected on "),
        )
        if proc.returncode != 0:
            figures.notes.append(f"exit status {proc.returncode} after SIGTERM")
        if "Traceback" in text:
            figures.notes.append(f"traceback in {log_path}")
        return figures
    finally:
        loop.stopping = True
        loop.join(2)
        for board in boards:
            board.close()


# --- import costs -----------------------------------------------------------


def import_times(work: Path) -> list[tuple[str, int, int]]:
    """(module, self us, cumulative us) from the daemon's own start (one board)."""
    board = PtyBoard.open(0)
    loop = BoardLoop([board])
    loop.start()
    err = work / "importtime.txt"
    env = clean_env() | {"PYTHONPROFILEIMPORTTIME": "1"}
    try:
        with open(err, "wb") as f:
            proc = subprocess.Popen(
                daemon_command([board], work / "state-imports"),
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=f,
            )
        deadline = time.monotonic() + 20
        while board.first_ping is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(1)  # imports done at the first ping, give lazy ones a moment
        proc.terminate()
        proc.wait(20)
    finally:
        loop.stopping = True
        loop.join(2)
        board.close()
    rows = []
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
    for line in err.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2))))
    return rows


def interpreter_rss(code: str) -> float:
    probe = (
        code + "; import pathlib, re; print(re.search(r'VmRSS:\\s+(\\d+)', "
        "pathlib.Path('/proc/self/status').read_text()).group(1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    if out.returncode != 0:
        return float("nan")
    return int(out.stdout.split()[-1]) / 1024


def candidates(cumulative: dict[str, int]) -> list[str]:
    """Per third-party package, twisted subpackage and heavy stdlib package
    the daemon loaded, its heaviest module (largest cumulative import time:
    a package's ``__init__`` is often cheap, ``twisted.conch`` is, while
    ``twisted.conch.manhole_ssh`` is not); every kegtwist module as is."""
    best: dict[str, str] = {}
    for name in cumulative:
        parts = name.split(".")
        top = parts[0]
        if top == "kegtwist":
            best[name] = name
            continue
        if top == "twisted" and len(parts) >= 2:
            group = ".".join(parts[:2])
        elif (top not in sys.stdlib_module_names and not top.startswith("_")) or (
            top in HEAVY_STDLIB
        ):
            group = top
        else:
            continue
        if group not in best or cumulative[name] > cumulative[best[group]]:
            best[group] = name
    return sorted(set(best.values()))


# Modules that belong to an option the footprint runs leave off.
OFF_OPTIONS = {
    "kegtwist.daemon.manhole": "--manhole",
    "twisted.conch": "--manhole",
    "kegtwist.bus.redis": "--redis-url",
    "txredisapi": "--redis-url",
    "kegtwist.delivery.client": "--api-url",
    "treq": "--api-url",
    "kegtwist.boards.simulated": "--simulate",
}


def import_costs(work: Path) -> tuple[float, float, list[tuple[str, float, float]], list[str]]:
    """Bare interpreter RSS, twistd baseline RSS, per module (RSS added over
    the baseline in a fresh interpreter, import ms cumulative), and modules
    loaded although their option is off."""
    rows = import_times(work)
    cumulative: dict[str, int] = {}
    for name, _self_us, cum_us in rows:
        cumulative[name] = max(cumulative.get(name, 0), cum_us)
    bare = interpreter_rss("pass")
    base = interpreter_rss(TWISTD_BASELINE)
    costs = []
    for name in candidates(cumulative):
        rss = interpreter_rss(f"{TWISTD_BASELINE}; import {name}") - base
        costs.append((name, rss, cumulative.get(name, 0) / 1000))
    costs.sort(key=lambda c: -c[1] if c[1] == c[1] else 0)
    needless = [
        f"`{module}` (option {option} is off)"
        for module, option in OFF_OPTIONS.items()
        if module in cumulative
    ]
    return bare, base, costs, needless


# --- report -----------------------------------------------------------------


machine = platform_info


def verdict(ok: bool) -> str:
    return "ok" if ok else "OVER"


def report(
    figures: list[Figures],
    costs: tuple[float, float, list[tuple[str, float, float]], list[str]] | None,
    info: dict[str, str],
) -> str:
    lines = [
        "## Footprint (`bench/footprint.py`)",
        "",
        f"Machine: {info['arch']}, {info['cpu']}, {info['nproc']} CPUs, Linux {info['kernel']}, "
        f"Python {info['python']}, Twisted {info['twisted']}; {info['date']}.",
        "`twistd -n kegbot --api-url none --redis-url none` with N Kegboards simulated on ptys "
        "in the bench process (ping answered, hello every 10 s). RSS once idle = 5 s after the "
        "first ping; idle CPU = (utime+stime) delta / wall over the idle window.",
        "",
        "| boards | start -> first ping | -> every board pinged | RSS idle | RSS at end "
        "| idle CPU (% of a core) | window | connected |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f.boards} | {f.first_ping * 1000:.0f} ms | {f.all_pinged * 1000:.0f} ms "
            f"| {f.rss_idle:.1f} MiB | {f.rss_end:.1f} MiB | {f.cpu_percent:.3f} % "
            f"| {f.idle_seconds:.0f} s | {f.connected}/{f.boards} |"
        )
    one = figures[0]
    lines += [
        "",
        f"Targets (one board): RSS <= {RSS_TARGET_MIB:.0f} MiB: {verdict(one.rss_idle <= RSS_TARGET_MIB)} "
        f"({one.rss_idle:.1f}); idle CPU <= {CPU_TARGET_PERCENT} %: "
        f"{verdict(one.cpu_percent <= CPU_TARGET_PERCENT)} ({one.cpu_percent:.3f}); "
        f"start -> first ping < {PING_TARGET_SECONDS:.0f} s: "
        f"{verdict(one.first_ping < PING_TARGET_SECONDS)} ({one.first_ping:.2f} s).",
    ]
    for f in figures:
        for note in f.notes:
            lines.append(f"- {f.boards} board(s): {note}")
    if costs is not None:
        bare, base, rows, needless = costs
        lines += [
            "",
            f"Where the memory goes: a bare `python` is {bare:.1f} MiB; twistd's own baseline "
            f"(TLS kept out as `kegtwist.daemon.lean` does, the epoll reactor, twisted.scripts.twistd, "
            f"twisted.application) {base:.1f} MiB. RSS each "
            "package adds on top of that baseline when imported alone in a fresh interpreter "
            "(packages overlap: the sum exceeds the total), and its cumulative import time in "
            "the daemon's start (`-X importtime`); >= 0.5 MiB shown:",
            "",
            "| module | + RSS | import time |",
            "|---|---:|---:|",
        ]
        for name, rss, ms in rows:
            if rss == rss and rss >= 0.5:
                lines.append(f"| `{name}` | {rss:.1f} MiB | {ms:.0f} ms |")
        if needless:
            lines += [
                "",
                "Loaded although their option is off (candidates for a lazy import): "
                + ", ".join(needless)
                + ".",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--boards", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--imports",
        choices=["auto", "always", "never"],
        default="auto",
        help="measure import costs (auto: only if RSS is over target)",
    )
    parser.add_argument(
        "--results",
        default=str(ROOT / "bench" / "RESULTS-footprint.md"),
        help="where to write the Markdown fragment ('-': nowhere)",
    )
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="kegtwist-footprint-") as tmp:
        work = Path(tmp)
        figures = []
        for count in args.boards:
            print(
                f"{count} board(s): starting, then {SETTLE_SECONDS:.0f} s settle + "
                f"{args.idle_seconds:.0f} s idle ...",
                flush=True,
            )
            f = run_scenario(count, args.idle_seconds, work)
            figures.append(f)
            print(
                f"  first ping {f.first_ping * 1000:.0f} ms (all {f.all_pinged * 1000:.0f} ms), "
                f"RSS {f.rss_idle:.1f} MiB idle / {f.rss_end:.1f} MiB end, "
                f"idle CPU {f.cpu_percent:.3f} % over {f.idle_seconds:.0f} s, "
                f"{f.connected}/{count} connected",
                flush=True,
            )
        costs = None
        over = figures[0].rss_idle > RSS_TARGET_MIB
        if args.imports == "always" or (args.imports == "auto" and over):
            print("measuring import costs ...", flush=True)
            costs = import_costs(work)
    text = report(figures, costs, info)
    print()
    print(text)
    if args.results != "-":
        Path(args.results).write_text(text)
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
