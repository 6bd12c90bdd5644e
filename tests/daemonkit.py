"""The daemon as owners run it: ``twistd -n kegbot`` as a real process.

Helpers shared by the process tests: start a daemon with its own log file
and state dir, poll for a condition without blocking the reactor (the fake
Kegbot Server and pty boards of the test live on it), stop it as systemd
does.  Nothing sleeps: every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boardkit import guard
from twisted.internet import defer, task

BIN = Path(sys.executable).parent
POLL_SECONDS = 0.05
WAIT_SECONDS = 15.0

FAST_POURS = """
[pours]
idle_seconds = 1   # pours end 1 s after their last tick, not 10 s
"""


class Daemon:
    """One ``twistd -n kegbot`` process, its output in a file.

    A file rather than a pipe: the reactor of the test never blocks
    reading, and the daemon never blocks on a full pipe."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "daemon",
        state_dir: Path | None = None,
    ) -> None:
        self.log_path = tmp / f"{name}.log"
        n = 1
        while self.log_path.exists():  # a restart keeps the earlier log
            n += 1
            self.log_path = tmp / f"{name}-{n}.log"
        self.state_dir = state_dir if state_dir is not None else tmp / "state"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
        environment["KEGBOT_STATE_DIR"] = str(self.state_dir)
        environment.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", "--redis-url", "none", *args],
                cwd=tmp,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def journal(self) -> list[dict[str, Any]]:
        """The outbox journal's records (what is queued on disk)."""
        path = self.state_dir / "outbox.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eventually(
    condition: Callable[[], bool], what: str, daemon: Daemon, seconds: float = WAIT_SECONDS
) -> defer.Deferred[None]:
    """Fires once ``condition()`` holds; fails with the daemon's log if it
    does not within ``seconds``, or if the daemon dies first."""
    from twisted.internet import reactor

    async def poll() -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; daemon log:\n{daemon.log}")
            if daemon.proc.poll() is not None and what != "exit":
                raise AssertionError(
                    f"daemon exited ({daemon.proc.returncode}) waiting for {what}:\n{daemon.log}"
                )
            await task.deferLater(reactor, POLL_SECONDS, lambda: None)

    return defer.Deferred.fromCoroutine(poll())


def until(condition: Callable[[], bool], interval: float = 0.001) -> defer.Deferred[None]:
    """Fires once ``condition()`` holds, checked every ``interval`` s of
    the reactor (0: every turn); fails after boardkit's guard time."""
    from twisted.internet import reactor

    d: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if condition():
            d.callback(None)
        else:
            reactor.callLater(interval, check)

    check()
    return guard(d)


def stop(daemon: Daemon) -> defer.Deferred[None]:
    """SIGTERM, then wait (without blocking the reactor: the daemon may
    still be talking to the fake server) for it to exit."""
    daemon.proc.send_signal(signal.SIGTERM)
    return eventually(lambda: daemon.proc.poll() is not None, "exit", daemon)


def crash(daemon: Daemon) -> defer.Deferred[None]:
    """kill -9: no stop sequence at all."""
    daemon.proc.send_signal(signal.SIGKILL)
    return eventually(lambda: daemon.proc.poll() is not None, "exit", daemon)
