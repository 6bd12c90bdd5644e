"""The files in tap-configs/ that put the daemon into service.

A unit file or a .tac that is wrong shows up only on someone's Pi; these
tests run the .tac for real and hold the unit and the supervisor section
to what the README promises.
"""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kegtwist.daemon.options import Options

pytestmark = pytest.mark.integration  # real processes, redis-server or ptys

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tap-configs"
BIN = Path(sys.executable).parent
EXEC_START = (
    "/opt/kegbot/venv/bin/twistd --nodaemon --pidfile= kegbot --config /etc/kegbot/kegbot.toml"
)
NOTHING_ATTACHED = """
kegboard = ["none"]
api_url = "none"
redis_url = "none"
"""


def run_tac(tmp_path: Path, config: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
    env["KEGBOT_STATE_DIR"] = str(tmp_path / "state")
    if config is not None:
        env["KEGBOT_CONFIG"] = str(config)
    log = tmp_path / "twistd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "twistd"), "-ny", str(CONFIGS / "kegbot.tac"), "--pidfile="],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def wait_for_line(
    proc: subprocess.Popen[bytes], log: Path, needle: str, seconds: float = 15.0
) -> str:
    deadline = time.monotonic() + seconds
    while True:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in the output:\n{text}")
        time.sleep(0.05)


def test_tac_starts_the_daemon_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "kegbot.toml"
    config.write_text(NOTHING_ATTACHED)
    proc, log = run_tac(tmp_path, config)
    try:
        wait_for_line(proc, log, "No Kegboard configured (--kegboard none)")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Stopped cleanly" in text and "Traceback" not in text
    assert (tmp_path / "state" / "outbox.jsonl").exists()  # $KEGBOT_STATE_DIR honoured


def test_tac_with_a_missing_config_file_says_so_in_one_line(tmp_path: Path) -> None:
    proc, log = run_tac(tmp_path, tmp_path / "nowhere.toml")
    try:
        assert proc.wait(15) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "kegbot.tac:" in text and "nowhere.toml" in text
    assert "Traceback" not in text


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's format: sections, and keys that may repeat (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_has_what_the_readme_promises() -> None:
    unit = unit_file(CONFIGS / "kegbot.service")
    service = unit["Service"]
    assert service["ExecStart"] == [EXEC_START]
    assert service["Restart"] == ["always"]
    assert service["User"] == ["kegbot"]
    groups = service.get("Group", []) + service.get("SupplementaryGroups", [])
    assert any("dialout" in g.split() for g in groups), groups
    assert "KEGBOT_STATE_DIR=/var/lib/kegbot" in service["Environment"]
    assert service["StateDirectory"] == ["kegbot"]
    assert service["KillSignal"] == ["SIGTERM"]
    [timeout] = service["TimeoutStopSec"]
    assert 5 <= int(timeout.rstrip("s")) <= 90, "long enough to flush, short enough to matter"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="no systemd-analyze")
def test_systemd_accepts_the_unit() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(CONFIGS / "kegbot.service")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Only the venv missing on this machine may be reported.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/kegbot/venv/bin/twistd" not in line
    ]
    assert not problems, problems


def test_supervisor_program_matches_the_unit() -> None:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(CONFIGS / "supervisor-kegbot.conf")
    program = parser["program:kegbot"]
    assert program["command"] == EXEC_START
    assert program["stopsignal"] == "TERM"
    assert program["autorestart"] == "true"
    assert program["user"] == "kegbot"
    assert 'KEGBOT_STATE_DIR="/var/lib/kegbot"' in program["environment"]
    assert 5 <= int(program["stopwaitsecs"]) <= 90


def test_the_units_command_line_parses(tmp_path: Path) -> None:
    """What follows ``kegbot`` in ExecStart is valid for the plugin."""
    config = tmp_path / "kegbot.toml"
    config.write_text((CONFIGS / "kegbot.toml").read_text())
    args = shlex.split(EXEC_START)
    plugin_args = args[args.index("kegbot") + 1 :]
    plugin_args[plugin_args.index("/etc/kegbot/kegbot.toml")] = str(config)
    options = Options()
    options.parseOptions(plugin_args)
    assert options.core_config.taps
