"""Nothing touches disk or network before ``startService``.

twistd builds the service (``makeService``) as the user that started it,
then drops privileges (``--uid``/``--gid``), then starts it.  Every file of
the state dir must therefore be made at start, or a daemon started by root
for user ``kegbot`` would leave root-owned files it cannot rewrite.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from kegtwist.daemon.compose import build
from kegtwist.daemon.options import Options

BIN = Path(sys.executable).parent
NOBODY = 65534


def ssh_public_key(directory: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    path = directory / "manhole_keys"
    path.write_bytes(key.public().toString("OPENSSH") + b"\n")
    return path


@pytest_twisted.inlineCallbacks
def test_building_the_daemon_writes_nothing_starting_it_does(tmp_path: Path) -> Iterator[object]:
    """Every role, with outbox, tap cache, manhole and bus configured."""
    from redisd import free_port
    from twisted.internet import reactor

    keys = ssh_public_key(tmp_path)
    for role in ("all", "core", "kegboard"):
        state = tmp_path / role / "state"
        options = Options()
        options.parseOptions(
            ["--role", role, "--state-dir", str(state), "--kegboard", "none",
             "--api-url", f"http://127.0.0.1:{free_port()}/api/",
             "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
             "--manhole", f"tcp:{free_port()}:interface=127.0.0.1",
             "--manhole-keys", str(keys)]
        )  # fmt: skip
        daemon = build(options, reactor)
        assert not state.exists(), f"role {role}: built, not started, yet {state} exists"
        daemon.startService()
        try:
            assert (state / "manhole_host_key").exists()
            if role != "kegboard":
                assert (state / "outbox.jsonl").exists() or (state / "lock").exists()
        finally:
            yield daemon.stopService()


def _readable_by_others(path: Path) -> bool:
    """Can an unprivileged user reach ``path`` (every parent directory o+x)?"""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory outside root's private temp dirs, that nobody may enter."""
    path = Path(tempfile.mkdtemp(prefix="kegtwist-uid-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
def test_twistd_uid_leaves_every_state_file_to_the_daemons_user(world_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: twistd --uid can only drop privileges it has")
    interpreter = Path(os.path.realpath(sys.executable))
    if not _readable_by_others(interpreter) or not _readable_by_others(Path(__file__)):
        pytest.skip(
            f"the unprivileged user cannot reach the interpreter or the code "
            f"({interpreter}): a parent directory is not world-executable"
        )
    keys = ssh_public_key(world_dir)
    state = world_dir / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    from redisd import free_port

    log = world_dir / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", f"--uid={NOBODY}", f"--gid={NOBODY}",
             "kegbot", "--state-dir", str(state), "--kegboard", "none", "--api-url", "none",
             "--redis-url", "none", "--manhole", f"tcp:{free_port()}:interface=127.0.0.1",
             "--manhole-keys", str(keys)],
            cwd=world_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (state / "manhole_host_key").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    owners = {p.name: p.stat().st_uid for p in state.iterdir()}
    assert owners and all(uid == NOBODY for uid in owners.values()), owners
