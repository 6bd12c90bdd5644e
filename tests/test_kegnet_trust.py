"""Kegnet is a trust boundary: what any Redis client may not do.

Real ``twistd -n kegbot`` processes, a real redis-server, boards on real
pseudo-terminals, the fake Kegbot Server on loopback.  The hostile messages
are published as any Redis client would (``PUBLISH kegnet ...``); what is
asserted is what the owner sees: the board's relays, the commands it
received, drinks on the server, lines in the log, the process's memory.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import FAST_POURS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from redisd import RedisServer
from twisted.internet import defer, task

from kegtwist.boards.simulator import PtyKegboard
from kegtwist.protocol import kbsp

pytestmark = pytest.mark.integration

TAP = """
[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
relay = "kegboard.relay0"
"""


def config(tmp_path: Path, text: str, name: str = "kegbot.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def publish(redis: RedisServer, event: str, data: dict[str, Any]) -> None:
    """As any Redis client would: no origin, classic JSON."""
    reply = redis.command("PUBLISH", "kegnet", json.dumps({"event": event, "data": data}))
    assert reply.startswith(b":") and reply != b":0\r\n", reply  # someone listens


def _resp(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
    return b"".join(parts)


def publish_many(redis: RedisServer, messages: list[dict[str, Any]], batch: int = 5000) -> None:
    """Pipelined PUBLISHes on one connection, a batch at a time."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=10) as s:
        for start in range(0, len(messages), batch):
            chunk = messages[start : start + batch]
            s.sendall(b"".join(_resp("PUBLISH", "kegnet", json.dumps(m)) for m in chunk))
            replies = b""
            while replies.count(b"\r\n") < len(chunk):
                data = s.recv(65536)
                assert data, "redis closed the connection"
                replies += data


def wait(seconds: float) -> defer.Deferred[None]:
    """Let time pass without blocking the reactor (the pty board lives on it)."""
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


def commands(board: PtyKegboard) -> list[tuple[float, kbsp.Message]]:
    """Every command the board receives from now on, with the time."""
    seen: list[tuple[float, kbsp.Message]] = []
    board.on_receive = lambda message: seen.append((time.monotonic(), message))
    return seen


def relay_commands(seen: list[tuple[float, kbsp.Message]], on: bool) -> list[float]:
    return [
        t
        for t, m in seen
        if isinstance(m, kbsp.SetOutput) and m.output_id == 0 and m.output_mode == on
    ]


def connected(daemon: Daemon, board: PtyKegboard) -> Callable[[], bool]:
    return lambda: f"connected on {board.path}" in daemon.log


def rss_kib(daemon: Daemon) -> int:
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- (1) a hostile relay command in role all ----------------------------------


@pytest_twisted.inlineCallbacks
def test_role_all_never_drives_its_relay_from_the_bus(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    redis_server: RedisServer,
    pty_board: PtyKegboard,
) -> Any:
    seen = commands(pty_board)
    daemon = daemons(
        "--config", config(tmp_path, FAST_POURS + TAP), "--kegboard", pty_board.path,
        "--redis-url", redis_server.url, "--api-url", "none",
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    hostile = {"output_name": "kegboard.relay0", "output_mode": "enabled"}
    for _ in range(10):  # re-sent, as a client keeping the tap open would
        publish(redis_server, "SetRelayOutputEvent", hostile)
        yield wait(0.2)
    yield wait(0.3)
    assert pty_board.board.relays[0] is False
    assert relay_commands(seen, True) == [], seen
    yield eventually(
        lambda: "ignored SetRelayOutputEvent for 'kegboard.relay0'" in daemon.log,
        "the ignore line",
        daemon,
    )
    assert daemon.log.count("ignored SetRelayOutputEvent") == 1, daemon.log  # rate-limited
    assert "only a --role kegboard daemon drives its relays" in daemon.log
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert relay_commands(seen, True) == []


# --- (2) tokens, meters and stop requests for a local board -------------------


@pytest_twisted.inlineCallbacks
def test_the_bus_cannot_authorise_pour_or_stop_on_a_local_board(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    redis_server: RedisServer,
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    text = (
        FAST_POURS
        + """
[auth.devices."core.rfid"]
captive = false
idle_seconds = 4
"""
    )
    seen = commands(pty_board)
    daemon = daemons(
        "--config", config(tmp_path, text), "--kegboard", pty_board.path,
        "--redis-url", redis_server.url, "--api-url", fake_server.url, "--api-key", API_KEY,
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "the server's taps", daemon)

    # alice's token, replayed from the bus: for the tap, and for every tap.
    token = {"auth_device_name": "core.rfid", "token_value": "deadbeef", "status": "added"}
    publish(redis_server, "TokenAuthEvent", {**token, "meter_name": "kegboard.flow0"})
    publish(redis_server, "TokenAuthEvent", {**token, "meter_name": "__all_taps__"})
    yield wait(1.0)  # a lookup on loopback takes milliseconds
    assert relay_commands(seen, True) == [] and pty_board.board.relays[0] is False
    assert not [r for r in fake_server.requests if r[1].startswith("auth-tokens")]
    yield eventually(
        lambda: (
            "ignored TokenAuthEvent for 'kegboard.flow0'" in daemon.log
            and "ignored TokenAuthEvent for 'core.rfid'" in daemon.log
        ),
        "both tokens ignored",
        daemon,
    )
    assert json.loads((daemon.state_dir / "local_boards.json").read_text())["boards"] == [
        "kegboard"
    ]

    # alice at the board's own reader: the valve opens; a stop from the bus
    # does not end her pour.
    pty_board.write(pty_board.board.token("core.rfid", bytes.fromhex("efbeadde"), True))
    yield eventually(lambda: pty_board.board.relays[0], "the valve open for alice", daemon)
    publish(redis_server, "FlowRequest", {"meter_name": "kegboard.flow0", "request": "stop_flow"})
    yield wait(0.5)
    assert pty_board.board.relays[0] is True
    assert "ended (stopped)" not in daemon.log
    yield eventually(
        lambda: "ignored FlowRequest for 'kegboard.flow0'" in daemon.log, "the stop ignored", daemon
    )

    # The board is unplugged mid-pour; its meter's ticks from the bus are
    # not alice's (nor anyone's).
    pty_board.close()
    yield eventually(lambda: "gone" in daemon.log, "the board gone", daemon)
    for reading in range(0, 13_000, 1000):
        publish(redis_server, "MeterUpdate", {"meter_name": "kegboard.flow0", "reading": reading})
    yield eventually(lambda: "ended (idle)" in daemon.log, "alice's pour ends", daemon)
    yield wait(1.0)
    assert fake_server.drinks == []
    assert "ended (idle): 0 ticks" in daemon.log
    assert "ignored MeterUpdate for 'kegboard.flow0'" in daemon.log
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert fake_server.drinks == []


# --- (3) the kegboard role's relay guard ---------------------------------------


@pytest_twisted.inlineCallbacks
def test_kegboard_role_closes_a_bus_opened_relay_by_its_guard_and_on_stop(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    redis_server: RedisServer,
    pty_board: PtyKegboard,
) -> Any:
    seen = commands(pty_board)
    daemon = daemons(
        "--role", "kegboard", "--kegboard", pty_board.path, "--redis-url", redis_server.url,
        "--config", config(tmp_path, "[pours]\nmax_pour_seconds = 2\n"),
        name="kegboard", state_dir=tmp_path / "kegboard-state",
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    enabled = {"output_name": "kegboard.relay0", "output_mode": "enabled"}
    disabled = {"output_name": "kegboard.relay0", "output_mode": "disabled"}

    publish(redis_server, "SetRelayOutputEvent", enabled)
    yield eventually(lambda: pty_board.board.relays[0], "the relay on", daemon)
    [opened] = relay_commands(seen, True)
    # No refresh: the daemon itself closes it (the board's 10 s watchdog
    # would drop it silently, without a command).
    yield eventually(lambda: relay_commands(seen, False) != [], "the guard", daemon, seconds=6)
    closed = relay_commands(seen, False)[0]
    assert 1.5 <= closed - opened <= 4.0, (opened, closed)
    assert pty_board.board.relays[0] is False
    assert daemon.log.count("closed by the guard") == 1

    # Refreshes do not reopen what the guard closed ...
    publish(redis_server, "SetRelayOutputEvent", enabled)
    yield eventually(
        lambda: "ignored SetRelayOutputEvent" in daemon.log, "the refresh ignored", daemon
    )
    assert len(relay_commands(seen, True)) == 1 and pty_board.board.relays[0] is False

    # ... a disabled then enabled does, and SIGTERM closes it.
    publish(redis_server, "SetRelayOutputEvent", disabled)
    publish(redis_server, "SetRelayOutputEvent", enabled)
    yield eventually(lambda: pty_board.board.relays[0], "the relay on again", daemon)
    offs_before = len(relay_commands(seen, False))
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert len(relay_commands(seen, False)) > offs_before
    assert pty_board.board.relays[0] is False
    assert daemon.log.count("closed by the guard") == 1, daemon.log  # SIGTERM's doing


# --- (4) floods ------------------------------------------------------------------


def _flow_update(i: int) -> dict[str, Any]:
    return {
        "event": "FlowUpdate",
        "data": {
            "flow_id": i, "meter_name": f"remote{i}.flow0", "state": "active",
            "username": None, "start_time": 1700000000, "last_activity_time": 1700000001,
            "ticks": 10, "volume_ml": 5.0, "origin": f"core-{i}",
        },
    }  # fmt: skip


def _unknown_device(i: int) -> dict[str, Any]:
    board = f"remote{i}"
    kind = i % 4
    if kind == 0:
        return {"event": "MeterUpdate", "data": {"meter_name": f"{board}.flow0", "reading": 5}}
    if kind == 1:
        return {
            "event": "ThermoEvent",
            "data": {"sensor_name": f"{board}.thermo-1", "sensor_value": 4.0},
        }
    if kind == 2:
        return {"event": "ControllerConnectedEvent", "data": {"controller_name": board}}
    return {
        "event": "TokenAuthEvent",
        "data": {
            "meter_name": f"{board}.flow0", "auth_device_name": f"reader{i}",
            "token_value": f"{i:08x}", "status": "added",
        },
    }  # fmt: skip


@pytest_twisted.inlineCallbacks
def test_floods_of_foreign_origins_and_unknown_devices_are_bounded(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    redis_server: RedisServer,
    pty_board: PtyKegboard,
) -> Any:
    # Redis would drop a subscriber 32 MB behind; the daemon's memory, not
    # Redis's policy, is under test here.
    assert redis_server.command(
        "CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0"
    ).startswith(b"+OK")
    # A tap on a board of another daemon: its pours mark where the flood ends.
    remote_tap = '\n[[taps]]\nmeter = "elsewhere.flow0"\nml_per_tick = 0.5\n'
    daemon = daemons(
        "--config", config(tmp_path, FAST_POURS + TAP + remote_tap), "--kegboard", pty_board.path,
        "--redis-url", redis_server.url, "--api-url", "none",
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)

    def marker(reading: int) -> dict[str, Any]:
        return {
            "event": "MeterUpdate",
            "data": {"meter_name": "elsewhere.flow0", "reading": reading},
        }

    def pours_started() -> int:
        return daemon.log.count("on elsewhere.flow0 started")

    # Warm up (every path once), then measure.
    publish_many(redis_server, [_flow_update(i) for i in range(2000)])
    publish_many(redis_server, [_unknown_device(i) for i in range(2000)])
    publish_many(redis_server, [marker(0), marker(100)])
    yield eventually(lambda: pours_started() == 1, "the warm-up", daemon, seconds=20)
    yield eventually(lambda: "Drink: " in daemon.log, "the marker pour's end", daemon)
    yield wait(0.5)
    lines, rss = len(daemon.log.splitlines()), rss_kib(daemon)

    publish_many(redis_server, [_flow_update(i) for i in range(2000, 102_000)])
    publish_many(redis_server, [_unknown_device(i) for i in range(2000, 102_000)])
    publish_many(redis_server, [marker(200)])
    yield eventually(lambda: pours_started() == 2, "the flood's end", daemon, seconds=30)
    yield wait(0.5)
    grown_lines = len(daemon.log.splitlines()) - lines
    grown_kib = rss_kib(daemon) - rss
    assert grown_lines < 50, daemon.log.splitlines()[lines:][:60]
    assert grown_kib < 10 * 1024, f"RSS grew {grown_kib} KiB"
    assert daemon.log.count("publishes FlowUpdate") <= 10
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log[-3000:]
