"""The daemon as a user starts it: the twistd plugin, as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real twistd processes

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def twistd(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The daemon, its state in ``cwd`` (never the user's own state dir)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
    environment["KEGBOT_STATE_DIR"] = str(cwd / "state")
    environment.update(env or {})
    return subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], needle: str, limit: float = 20.0) -> str:
    """Read the daemon's log until ``needle`` appears (a guard, not a sleep)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not in daemon output:\n{''.join(seen)}")


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "twistd"), "--help"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "kegbot" in out
    help_text = subprocess.run(
        [str(BIN / "twistd"), "kegbot", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--kegboard=" in help_text
    assert "[default: auto]" in help_text


def test_bad_kegboard_spec_stops_startup_with_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", "--kegboard", "tcp:nohost"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "expected tcp:HOST:PORT" in result.stdout + result.stderr


def test_starts_with_nothing_attached_and_says_what_it_waits_for(tmp_path: Path) -> None:
    """No board, no Redis, no server: it runs, says once what it waits for
    and how to configure it, keeps retrying quietly, and stops with 0."""
    from redisd import free_port

    env = {
        "KEGBOT_API_URL": f"http://127.0.0.1:{free_port()}/api/",
        "KEGBOT_REDIS_URL": f"redis://:hush-hush@127.0.0.1:{free_port()}/0",
    }
    proc = twistd("--kegboard", str(tmp_path / "ttyNothing*"), cwd=tmp_path, env=env)
    try:
        log = read_until(proc, "Waiting for a Kegboard")
        for needle in ("Waiting for the Kegbot Server", "Kegnet: waiting for Redis"):
            if needle not in log:
                log += read_until(proc, needle)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
    log += rest
    assert proc.returncode == 0
    assert f"{tmp_path}/ttyNothing*" in log and "--kegboard" in log
    assert "--api-url" in log and "--redis-url" in log
    for needle in ("Waiting for a Kegboard", "Waiting for the Kegbot Server", "Kegnet: waiting"):
        assert log.count(needle) == 1, needle
    assert "hush-hush" not in log and "Traceback" not in log
    assert "Stopped cleanly" in log


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="no pseudo-terminals")
def test_daemon_names_a_board_on_a_pty(tmp_path: Path) -> None:
    sim = subprocess.Popen(
        [sys.executable, "-c", _PTY_BOARD],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        path = sim.stdout.readline().strip()
        proc = twistd("--kegboard", path, cwd=tmp_path)
        try:
            read_until(proc, f"Kegboard kegboard-00c0ffee connected on {path}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    finally:
        sim.kill()
        sim.wait()


_PTY_BOARD = """
from twisted.internet import reactor
from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard
board = PtyKegboard(reactor, SimulatedKegboard(serial_number="C0FFEE-00C0FFEE"))
print(board.path, flush=True)
reactor.run()
"""
