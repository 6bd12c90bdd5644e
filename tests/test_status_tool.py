"""kegbot-status against loopback servers serving status documents: a
summary and exit 0 when all is well, exit 1 with the reason when something
needs attention, exit 2 when the status cannot be read."""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, utils

from kegtwist.status.hub import EventHub
from kegtwist.status.web import StatusService
from kegtwist.tools.status import attention, main, status_url, summary

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
HEALTHY: dict[str, Any] = {
    "schema": 1,
    "version": "0.1.0",
    "role": "all",
    "now": NOW,
    "started": NOW - 7200,
    "uptime_seconds": 7200.0,
    "boards": [
        {
            "name": "kegboard",
            "device": "/dev/ttyUSB0",
            "connected": True,
            "remote": False,
            "seen": True,
            "firmware": 18,
            "since": NOW - 7000,
            "reason": None,
            "counters": {"frames": 1234, "crc_errors": 0, "framing_errors": 0},
        }
    ],
    "ports": [{"device": "/dev/ttyUSB0", "state": "named", "board": "kegboard"}],
    "taps": [
        {
            "meter": "kegboard.flow0",
            "name": "Pale Ale",
            "relay": "kegboard.relay0",
            "ml_per_tick": 0.367,
            "source": "server",
            "keg": 3,
            "pouring": True,
            "drinks": 4,
            "volume_ml": 1320.0,
        }
    ],
    "pours": [
        {
            "flow_id": 17,
            "meter": "kegboard.flow0",
            "tap": "Pale Ale",
            "username": "alice",
            "ticks": 120,
            "volume_ml": 44.0,
            "started": NOW - 5,
            "valve_open": True,
        }
    ],
    "temperatures": [
        {"sensor": "kegboard.thermo-1", "celsius": 4.2, "age_seconds": 12.0, "lost": False}
    ],
    "untapped": {"ticks": 0, "meters": [], "held": []},
    "outbox": {
        "pending": 1,
        "uncertain": 0,
        "dead_letters": 0,
        "dead": [],
        "quarantined": 0,
        "not_in_outbox": 0,
        "disk_error": None,
    },
    "server": {
        "url": "http://kegbot.local/api/",
        "state": "ok",
        "since": NOW - 7000,
        "last_error": None,
    },
    "redis": {
        "url": "redis://localhost:6379/0",
        "channel": "kegnet",
        "state": "connected",
        "since": NOW - 7000,
        "last_error": None,
    },
    "kegnet": {"in": 5, "out": 50, "rejected": 0, "ignored": 0},
    "errors": [],
    "last_event_id": 99,
}


def changed(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(HEALTHY)
    for path, value in changes.items():
        target = doc
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[keys[-1]] = value
    return doc


class Documents(ThreadingHTTPServer):
    """Serves whatever ``document`` is, at any path, on loopback."""

    document: Any = HEALTHY
    status = 200
    paths: list[str]


class Handler(BaseHTTPRequestHandler):
    server: Documents

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = json.dumps(self.server.document).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served() -> Iterator[Documents]:
    server = Documents(("127.0.0.1", 0), Handler)
    server.paths = []
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run(server: Documents, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    url = f"http://127.0.0.1:{server.server_address[1]}/status.json"
    code = main([url, *args], out, err)
    return code, out.getvalue(), err.getvalue()


def test_healthy_exits_0_with_a_summary(served: Documents) -> None:
    code, out, err = run(served)
    assert code == 0, out
    assert err == ""
    assert out.splitlines()[0] == "kegtwist 0.1.0 (role all), up 2 h 0 min"
    assert "  kegboard on /dev/ttyUSB0: connected, firmware 18, 1234 frames, 0 CRC errors" in out
    assert "Pale Ale (kegboard.flow0, valve kegboard.relay0, 0.367 mL/tick, keg 3" in out
    assert "alice, 120 ticks, 44 mL" in out and "valve open" in out
    assert "kegboard.thermo-1 4.2 °C (12 s ago)" in out
    assert "Outbox: 1 pending, 0 uncertain, 0 dead letter(s)" in out
    assert "Kegbot Server: ok at http://kegbot.local/api/" in out
    assert "Redis: connected (redis://localhost:6379/0, channel kegnet); Kegnet 5 in, 50 out" in out
    assert out.rstrip().endswith("All well.")
    quiet = run(served, "--quiet")
    assert quiet == (0, "", "")
    code, out, _ = run(served, "--json")
    assert code == 0 and json.loads(out) == HEALTHY


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            changed(
                boards__0__connected=False,
                boards__0__since=NOW - 60,
                boards__0__reason="no hello for 30 s",
            ),
            "board kegboard is gone since ",
        ),
        (
            changed(
                outbox__dead_letters=1,
                outbox__dead=[
                    {
                        "number": 12,
                        "flow_id": 5,
                        "meter": "kegboard.flow0",
                        "ticks": 300,
                        "username": None,
                        "reason": "No keg on tap",
                    }
                ],
            ),
            "1 dead letter(s): drinks the Kegbot Server refused",
        ),
        (
            changed(
                server__state="down",
                server__since=NOW - 601,
                server__last_error="connection refused",
            ),
            "the Kegbot Server has been unreachable for 10 min (last error: connection refused)",
        ),
        (changed(server__state="bad_key", server__since=NOW - 5), "refuses the API key"),
        (
            changed(boards__0__connected=False, boards__0__seen=False),
            "board kegboard has not connected since the daemon started 2 h 0 min ago",
        ),
        (
            changed(
                outbox__not_in_outbox=2, outbox__disk_error="[Errno 28] No space left on device"
            ),
            "2 drink(s) wait in memory for the disk: [Errno 28]",
        ),
        (
            changed(errors=[{"part": "taps", "kind": "failed", "error": "RuntimeError: boom"}]),
            "the status of taps could not be read: RuntimeError: boom",
        ),
    ],
)
def test_what_needs_attention_exits_1_with_the_reason(
    served: Documents, document: dict[str, Any], reason: str
) -> None:
    served.document = document
    code, out, err = run(served)
    assert code == 1, out
    assert err == ""
    lines = [line for line in out.splitlines() if line.startswith("ATTENTION: ")]
    assert len(lines) == 1 and reason in lines[0], out
    code, quiet, _ = run(served, "--quiet")
    assert code == 1 and quiet.splitlines() == lines


@pytest.mark.parametrize(
    "document",
    [
        changed(server__state="down", server__since=NOW - 599),  # not 10 minutes yet
        changed(server__state="starting", server__since=NOW - 3600),
        changed(
            boards__0__connected=False, boards__0__seen=False, uptime_seconds=30.0
        ),  # just started
        changed(
            errors=[{"part": "server", "kind": "absent", "error": "--api-url none"}], server=None
        ),
        changed(untapped__held=[{"flow_id": 9, "meter": "kegboard.flow9", "ticks": 120}]),
    ],
)
def test_what_is_not_yet_a_problem_exits_0(served: Documents, document: dict[str, Any]) -> None:
    served.document = document
    code, out, _ = run(served)
    assert code == 0, out


def test_unreadable_status_exits_2(served: Documents) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    out, err = io.StringIO(), io.StringIO()
    assert main([f"http://127.0.0.1:{closed}/status.json"], out, err) == 2
    assert "cannot read" in err.getvalue() and "with --status?" in err.getvalue()
    served.status = 500
    code, _, err_text = run(served)
    assert code == 2 and "HTTP 500" in err_text
    served.status = 200
    served.document = ["not", "a", "document"]
    code, _, err_text = run(served)
    assert code == 2 and "not a status document" in err_text


def test_url_forms(served: Documents) -> None:
    assert status_url("http://pi:8010") == "http://pi:8010/status.json"
    assert status_url("http://pi:8010/") == "http://pi:8010/status.json"
    assert status_url("http://pi:8010/x/status.json") == "http://pi:8010/x/status.json"
    with pytest.raises(ValueError):
        status_url("ftp://pi/")
    out, err = io.StringIO(), io.StringIO()
    assert main([f"http://127.0.0.1:{served.server_address[1]}"], out, err) == 0
    assert served.paths == ["/status.json"]


def test_summary_and_attention_take_any_document() -> None:
    for doc in ({}, {"boards": None, "taps": None, "pours": None, "errors": None}, {"boards": "x"}):
        assert summary(doc).endswith("All well.")
        assert attention(doc) == []
    kegboard_role = changed(taps=None, pours=None, outbox=None, server=None, role="kegboard")
    text = summary(kegboard_role)
    assert "role kegboard" in text and "Taps" not in text and "Kegbot Server: none" in text


@pytest_twisted.inlineCallbacks
def test_the_console_script_against_the_status_service() -> Iterator[Any]:
    """The real thing end to end: StatusService on loopback, the tool as a
    process (``python -m kegtwist.tools.status``, what the entry point runs)."""
    doc = changed(
        boards__0__connected=False, boards__0__since=NOW - 60, boards__0__reason="unplugged"
    )
    service = StatusService(
        "tcp:0:interface=127.0.0.1", lambda: doc, str, EventHub(first_id=1), reactor
    )
    service.startService()
    try:
        assert service.url is not None
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "kegtwist.tools.status", service.url], env=dict(os.environ)
        )
        assert code == 1, (out, err)
        assert b"ATTENTION: board kegboard is gone since" in out and b"(unplugged)" in out
        doc.update(copy.deepcopy(HEALTHY))
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "kegtwist.tools.status", service.url + "status.json"],
            env=dict(os.environ),
        )
        assert code == 0, (out, err)
        assert out.rstrip().endswith(b"All well.")
    finally:
        yield service.stopService()
