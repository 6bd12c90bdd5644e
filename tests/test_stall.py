"""A slow disk never stops the reactor: the daemon as owners run it
(``twistd -n kegbot``) on a disk whose every fsync takes 50 ms more.

The daemon runs under a small wrapper, written into the test's directory,
that slows ``os.fsync`` down before anything of the daemon is imported and
starts a 5 ms ``LoopingCall`` once the reactor runs (the idea of
``bench/daemonbench.py twistd``): at exit it writes every gap between the
probe's calls, and every fsync with the thread it ran on.  Pours on a
simulated Kegboard on a real pty end while others still pour, so
checkpoints and journal records are written all along.  Every tick must be
on the fake Kegbot Server exactly once; while the pours run and the drinks
are recorded no fsync may run on the reactor thread, and no gap may exceed
50 ms (the benchmark, ``bench/daemon_stall.py``, holds 20 ms; a busy CI
machine gets some slack).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import FAST_POURS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from twisted.internet import task

from kegtwist.boards.simulator import PtyKegboard

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="no pseudo-terminals"),
]
SLOW_FSYNC = 0.050
MAX_GAP = 0.050

WRAPPER = '''
"""twistd's run() with os.fsync slowed down and a 5 ms probe of the reactor."""
import atexit, json, os, sys, threading, time

probe_path, slow = sys.argv[1], float(sys.argv[2])
twistd_args = sys.argv[sys.argv.index("--") + 1:]
main = threading.main_thread()
fsyncs = []  # (start, seconds, on the reactor thread)
gaps = []  # (monotonic at the probe, gap since its previous call)
real_fsync = os.fsync


def slow_fsync(fd):
    t0 = time.monotonic()
    try:
        real_fsync(fd)
        time.sleep(slow)
    finally:
        fsyncs.append((t0, time.monotonic() - t0, threading.current_thread() is main))


os.fsync = slow_fsync


def install_probe():
    from twisted.internet import reactor, task

    last = [time.monotonic()]

    def tick():
        now = time.monotonic()
        gaps.append((now, now - last[0]))
        last[0] = now

    probe = task.LoopingCall(tick)
    probe.start(0.005, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: probe.running and probe.stop())


def dump():
    if not os.path.exists(probe_path):
        with open(probe_path + ".tmp", "w") as f:
            json.dump({"gaps": gaps, "fsyncs": fsyncs}, f)
        os.replace(probe_path + ".tmp", probe_path)


atexit.register(dump)
from twisted.application import app  # noqa: E402

original = app.startApplication


def start_application(application, save):
    original(application, save)
    from twisted.internet import reactor

    reactor.callWhenRunning(install_probe)


app.startApplication = start_application
from twisted.scripts.twistd import run  # noqa: E402

sys.argv = ["twistd", *twistd_args]
try:
    run()
finally:
    dump()
'''


class SlowDiskDaemon(Daemon):
    """``twistd -n kegbot`` as :class:`daemonkit.Daemon` starts it, inside
    the wrapper."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log_path = tmp / "daemon.log"
        self.state_dir = tmp / "state"
        self.probe = tmp / "probe.json"
        wrapper = tmp / "slow_disk_twistd.py"
        wrapper.write_text(WRAPPER)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
        environment["KEGBOT_STATE_DIR"] = str(self.state_dir)
        command = [sys.executable, str(wrapper), str(self.probe), str(SLOW_FSYNC), "--"]
        command += ["-n", "--pidfile=", "kegbot", "--redis-url", "none", *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=tmp,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
def slow_disk_daemon(tmp_path: Path) -> Iterator[Callable[..., SlowDiskDaemon]]:
    started: list[SlowDiskDaemon] = []

    def start(*args: str) -> SlowDiskDaemon:
        daemon = SlowDiskDaemon(tmp_path, *args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


# (meter, ticks per reading, readings 100 ms apart, start in s): the pours
# overlap, so drinks end (1 s idle) while the other tap pours.
POURS = [
    ("flow0", 23, 8, 0.0),
    ("flow1", 31, 6, 0.5),
    ("flow0", 17, 10, 2.0),
    ("flow1", 29, 9, 2.6),
    ("flow0", 41, 5, 4.2),
    ("flow1", 37, 7, 4.5),
]


@pytest_twisted.inlineCallbacks
def test_a_slow_disk_never_stops_the_reactor_and_every_tick_is_recorded_once(
    tmp_path: Path,
    slow_disk_daemon: Callable[..., SlowDiskDaemon],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    from twisted.internet import reactor

    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    daemon = slow_disk_daemon(
        "--config", str(config), "--kegboard", pty_board.path,
        "--api-url", fake_server.url, "--api-key", API_KEY,
    )  # fmt: skip
    yield eventually(lambda: f"connected on {pty_board.path}" in daemon.log, "the hello", daemon)
    yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "the taps", daemon)
    for meter in ("flow0", "flow1"):
        pty_board.pour(meter, 0)  # baselines
    yield eventually(
        lambda: all(f"kegboard.{m}" in on_disk(daemon) for m in ("flow0", "flow1")),
        "the baselines in the checkpoint",
        daemon,
    )

    started = time.monotonic()
    poured = {"kegboard.flow0": 0, "kegboard.flow1": 0}
    readings = sorted(
        (start + 0.1 * n, meter, ticks)
        for meter, ticks, count, start in POURS
        for n in range(count)
    )
    for at, meter, ticks in readings:
        delay = started + at - time.monotonic()
        if delay > 0:
            yield task.deferLater(reactor, delay, lambda: None)
        pty_board.pour(meter, ticks)
        poured[f"kegboard.{meter}"] += ticks

    def recorded(meter: str) -> int:
        return sum(d["ticks"] for d in fake_server.drinks if d["meter_name"] == meter)

    yield eventually(
        lambda: all(recorded(m) == n for m, n in poured.items()),
        f"every tick on the server ({poured})",
        daemon,
        seconds=30,
    )
    finished = time.monotonic()
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log

    # Exactly once: one drink per pour, each with its ticks.
    expected = sorted((f"kegboard.{m}", t * c) for m, t, c, _ in POURS)
    assert sorted((d["meter_name"], d["ticks"]) for d in fake_server.drinks) == expected
    assert "Traceback" not in daemon.log and "discarded" not in daemon.log

    probe = json.loads(daemon.probe.read_text())
    gaps = [(t, g) for t, g in probe["gaps"] if started <= t <= finished]
    fsyncs = [f for f in probe["fsyncs"] if started <= f[0] <= finished]
    assert len(gaps) > 100, "the probe did not run"
    assert len(fsyncs) >= 3 * len(POURS)  # checkpoints and journal records were written
    on_reactor = [f for f in fsyncs if f[2]]
    assert on_reactor == [], f"{len(on_reactor)} fsync(s) on the reactor thread"
    worst = max(g for _, g in gaps)
    assert worst <= MAX_GAP, f"the reactor stood still {worst * 1000:.0f} ms"


def on_disk(daemon: Daemon) -> dict[str, Any]:
    """The checkpoint's meter baselines."""
    try:
        state: dict[str, Any] = json.loads((daemon.state_dir / "pours.json").read_text())
    except (OSError, ValueError):
        return {}
    meters: dict[str, Any] = state.get("meters", {})
    return meters
