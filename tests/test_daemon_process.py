"""The daemon as people run it: ``twistd -n kegbot`` as a real process.

The fake Kegbot Server and the pty board live in this test process, on
the reactor pytest-twisted runs, so the daemon under test talks to them
over real loopback HTTP and a real pseudo-terminal.  Nothing here sleeps:
every wait polls a condition with a deadline, and every daemon is killed
in teardown whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import FAST_POURS, POLL_SECONDS, WAIT_SECONDS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from redisd import free_port
from twisted.internet import defer

from kegtwist.boards.simulator import PtyKegboard
from kegtwist.protocol import kbsp

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>c])")


@pytest_twisted.inlineCallbacks
def test_simulated_demo_pour_reaches_the_server(
    tmp_path: Path, daemons: Callable[..., Daemon], fake_server: FakeKegbotServer
) -> Any:
    """``--simulate 1`` as in the README's demo: its first glass (after 3 s,
    poured over 4 s) becomes a drink on the Kegbot Server."""
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    # A simulated board is never the server's "kegboard": its owner gave its flow0 a tap.
    fake_server.controllers[2] = {"id": 2, "name": "simulated-kegboard", "model_name": "kegboard"}
    fake_server.meters["simulated-kegboard.flow0"] = dict(fake_server.meters["kegboard.flow0"], id=3, controller=2)
    fake_server.taps["simulated-kegboard.flow0"] = dict(fake_server.taps["kegboard.flow0"], id=3)
    daemon = daemons(
        "--config",
        str(config),
        "--kegboard",
        "none",
        "--simulate",
        "1",
        "--api-url",
        fake_server.url,
        "--api-key",
        API_KEY,
    )
    yield eventually(lambda: bool(fake_server.drinks), "a drink on the server", daemon)
    [drink] = fake_server.drinks
    assert drink["meter_name"] == "simulated-kegboard.flow0"
    assert drink["user"]["username"] == "guest"
    # DEMO_POUR_ML 330 is 899 ticks in 40 steps.  The simulated board has
    # just booted (its hello says so), so its first report counts from 0
    # and every tick arrives: the README's exact glass.
    assert drink["ticks"] == 899, drink
    yield stop(daemon)
    log = daemon.log
    assert "899 ticks, 330.0 mL" in log
    assert daemon.proc.returncode == 0, log
    assert "Traceback" not in log and API_KEY not in log
    assert "Stopped cleanly" in log


AUTH_TAP = """
[pours]
min_volume_ml = 0

[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
relay = "kegboard.relay0"
"""


@pytest_twisted.inlineCallbacks
def test_sigterm_mid_pour_closes_the_valve_and_records_the_pour(
    board_daemon: Callable[[str], defer.Deferred[Daemon]],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    """What systemd's stop does during a pour: the board is told to close
    the valve, the pour is recorded (server or outbox journal), exit 0."""
    commands: list[kbsp.Message] = []
    pty_board.on_receive = commands.append
    daemon = yield board_daemon(AUTH_TAP)
    pty_board.pour("flow0", 0)  # the meter's first reading: a baseline
    # alice's RFID token (deadbeef; the board sends it little-endian)
    pty_board.write(pty_board.board.token("core.rfid", bytes.fromhex("efbeadde"), True))
    yield eventually(lambda: pty_board.board.relays[0], "the valve to open for alice", daemon)
    pty_board.pour("flow0", 300)
    yield eventually(
        lambda: "kegboard.flow0 reads 300" in daemon.log, "the daemon to read 300 ticks", daemon
    )
    assert pty_board.board.relays[0]

    before_stop = len(commands)
    yield stop(daemon)
    log = daemon.log
    assert daemon.proc.returncode == 0, log
    assert kbsp.SetOutput(0, False) in commands[before_stop:], commands
    assert pty_board.board.relays[0] is False
    recorded = [(d["meter_name"], d["ticks"], d["user"]["username"]) for d in fake_server.drinks]
    journal = daemon.state_dir / "outbox.jsonl"
    queued = [
        (r["item"]["meter_name"], r["item"]["ticks"], r["item"]["username"])
        for r in map(json.loads, journal.read_text().splitlines() if journal.exists() else [])
        if r.get("op") == "add" and "ticks" in r.get("item", {})
    ]
    assert ("kegboard.flow0", 300, "alice") in recorded + queued, (recorded, queued, log)
    assert "Traceback" not in log and "Stopped cleanly" in log


def ssh(key: Path, port: int, script: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The ssh client as an operator would script it: the manhole reads
    Python lines from standard input (no pty needed)."""
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            *extra,
            "kegbot@127.0.0.1",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=10,
    )


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ssh_key(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return path


@pytest.mark.skipif(
    not all(os.path.exists(f"/usr/bin/{tool}") for tool in ("ssh", "ssh-keygen")),
    reason="needs the OpenSSH client",
)
def test_manhole_answers_an_authorised_key_and_refuses_another(
    tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    key = ssh_key(tmp_path / "operator")
    stranger = ssh_key(tmp_path / "stranger")
    authorized = tmp_path / "manhole_keys"
    authorized.write_text(Path(f"{key}.pub").read_text())
    port = free_port()
    daemon = daemons(
        "--kegboard",
        "none",
        "--api-url",
        "none",
        "--manhole",
        f"tcp:{port}:interface=127.0.0.1",
        "--manhole-keys",
        str(authorized),
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while not listening(port):
        assert daemon.proc.poll() is None, daemon.log
        assert time.monotonic() < deadline, daemon.log
        time.sleep(POLL_SECONDS)

    session = ssh(key, port, "1+1\nstatus()\n")
    out = ANSI.sub("", session.stdout).replace("\r", "")
    assert session.returncode == 0, (session.stderr, out, daemon.log)
    assert "\n2\n" in out
    assert "(role all), up " in out  # the same summary as kegbot-status
    assert "Kegbot Server: none" in out and "All well." in out

    # An interactive terminal (what a person gets) works the same way.
    tty = ssh(key, port, "40+2\n\x04", "-tt")
    assert "42" in ANSI.sub("", tty.stdout), (tty.stderr, daemon.log)

    refused = ssh(stranger, port, "1+1\n")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    assert "2" not in ANSI.sub("", refused.stdout)

    assert (daemon.state_dir / "manhole_host_key").exists()
    assert daemon.proc.poll() is None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(WAIT_SECONDS) == 0
    assert "Traceback" not in daemon.log and "Unhandled" not in daemon.log
