"""A stop delivers the drinks of the pours it ended, even when that is the
process's very first delivery (the request needs a fresh connection and
the delivery loop has never reported the server up).

The daemon runs as owners run it, ``twistd -n kegbot``, against the fake
Kegbot Server on loopback and a simulated Kegboard on a real pty.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import Daemon, eventually, stop
from fakeserver import FakeKegbotServer
from twisted.internet import defer

from kegtwist.boards.simulator import PtyKegboard

pytestmark = pytest.mark.integration

ANONYMOUS_TAP = """
[pours]
min_volume_ml = 0

[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
"""
TICKS = 321


def journal_states(journal: Path) -> dict[int, list[str]]:
    """Every drink the journal added, with the ops recorded about it since."""
    ops: dict[int, list[str]] = {}
    lines = journal.read_text().splitlines() if journal.exists() else []
    for record in map(json.loads, lines):
        if record.get("op") == "add" and record["item"].get("kind", "drink") == "drink":
            ops[record["seq"]] = [f"add {record['item']['ticks']}"]
        elif record.get("seq") in ops:
            ops[record["seq"]].append(record["op"])
    return ops


@pytest_twisted.inlineCallbacks
def test_sigterm_mid_pour_delivers_the_first_drink_of_the_process(
    board_daemon: Callable[[str], defer.Deferred[Daemon]],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    daemon = yield board_daemon(ANONYMOUS_TAP)
    pty_board.pour("flow0", 0)  # the meter's first reading: a baseline
    yield eventually(
        lambda: "kegboard.flow0 reads 0" in daemon.log, "the daemon to read the baseline", daemon
    )
    pty_board.pour("flow0", TICKS)
    yield eventually(
        lambda: f"kegboard.flow0 reads {TICKS}" in daemon.log,
        f"the daemon to read {TICKS} ticks",
        daemon,
    )
    assert fake_server.drinks == []  # no delivery before the stop
    assert not any(r[0] == "POST" and r[1].startswith("taps/") for r in fake_server.requests)

    yield stop(daemon)
    log = daemon.log
    assert daemon.proc.returncode == 0, log
    assert [(d["meter_name"], d["ticks"]) for d in fake_server.drinks] == [
        ("kegboard.flow0", TICKS)
    ], log
    states = journal_states(daemon.state_dir / "outbox.jsonl")
    assert list(states.values()) == [[f"add {TICKS}", "sending", "done"]], (states, log)
    assert "unavailable" not in log and "stay in the outbox" not in log, log
    assert "Traceback" not in log and "Stopped cleanly" in log
