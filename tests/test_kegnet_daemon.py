"""The daemon on Kegnet with a real redis-server: classic accessory
messages become drinks, displays see the pour, and a kegboard daemon on
"another machine" (another process) serves a core's valves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from captures import kegnet_capture
from fakeserver import API_KEY, FakeKegbotServer
from kegnetkit import Bus, until
from redisd import RedisServer

from kegtwist.daemon.compose import build
from kegtwist.daemon.lifecycle import KegbotService
from kegtwist.daemon.options import Options
from kegtwist.protocol import kegnet as events

pytestmark = pytest.mark.integration  # real processes, redis-server or ptys

BIN = Path(sys.executable).parent

CONFIG = """
[pours]
idle_seconds = {idle}

[auth.devices."core.rfid"]
captive = false
idle_seconds = {idle}

[auth.devices."core.onewire"]
captive = true
idle_seconds = {idle}

[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
relay = "kegboard.relay0"
"""


def core_daemon(
    tmp_path: Path, redis_url: str, api_url: str, idle: float, role: str = "all"
) -> KegbotService:
    from twisted.internet import reactor

    config = tmp_path / "kegbot.toml"
    config.write_text(CONFIG.format(idle=idle))
    options = Options()
    options.parseOptions(
        ["--config", str(config), "--kegboard", "none", "--state-dir", str(tmp_path / "state"),
         "--api-url", api_url, "--api-key", API_KEY, "--redis-url", redis_url, "--role", role]
    )  # fmt: skip
    daemon = build(options, reactor)
    daemon.startService()
    return daemon


def classic(name: str) -> list[str]:
    return kegnet_capture(name)


@pytest_twisted.inlineCallbacks
def test_classic_test_flow_messages_become_a_drink_that_displays_see(
    tmp_path: Path, redis_server: RedisServer, fake_server: FakeKegbotServer
) -> Generator[Any, Any, None]:
    daemon = core_daemon(tmp_path, redis_server.url, fake_server.url, idle=0.3)
    display = Bus(redis_server.url, "display")
    try:
        assert daemon.bus is not None
        yield until(lambda: daemon.bus.connected and display.bus.connected)  # type: ignore[union-attr]
        for message in classic("classic-test-flow-rfid.jsonl"):
            display.bus.publisher.publish(
                "kegnet", message.encode()
            )  # exactly as test_flow sent it
        yield until(lambda: len(fake_server.drinks) == 1)
        [drink] = fake_server.drinks
        assert (drink["ticks"], drink["user_id"]) == (1000, "alice")
        yield until(lambda: any(isinstance(e, events.DrinkCreatedEvent) for e in display.received))
    finally:
        yield daemon.stopService()
        yield display.stop()
    flows = [e for e in display.received if isinstance(e, events.FlowUpdate)]
    # Ticks may arrive before the server has answered for the token: the
    # pour starts anonymous and alice adopts it whole.
    assert flows[0].state == "active" and {f.flow_id for f in flows} == {flows[0].flow_id}
    assert flows[-1].state == "completed" and flows[-1].ticks == 1000
    assert flows[-1].username == "alice"
    assert flows[-1].volume_ml == 500.0
    assert all(e.origin == flows[0].origin for e in flows)
    [created] = [e for e in display.received if isinstance(e, events.DrinkCreatedEvent)]
    assert (created.drink_id, created.flow_id, created.username) == (
        drink["id"],
        flows[0].flow_id,
        "alice",
    )
    relays = [e for e in display.received if isinstance(e, events.SetRelayOutputEvent)]
    assert relays[0] == events.SetRelayOutputEvent("kegboard.relay0", "enabled", flows[0].origin)
    assert relays[-1].output_mode == "disabled"


@pytest_twisted.inlineCallbacks
def test_redis_restart_mid_pour_loses_no_tick(
    tmp_path: Path, redis_server: RedisServer, fake_server: FakeKegbotServer
) -> Generator[Any, Any, None]:
    daemon = core_daemon(tmp_path, redis_server.url, fake_server.url, idle=3.0, role="core")
    meter = Bus(redis_server.url, "remote-kegboard")
    try:
        bus = daemon.bus
        assert bus is not None
        yield until(lambda: bus.connected and meter.bus.connected)
        for reading in (0, 100, 200):
            meter.bus.publish(events.MeterUpdate("kegboard.flow0", reading))
        yield until(lambda: daemon.core is not None and "kegboard.flow0" in daemon.core.core.pours)
        redis_server.kill()
        yield until(lambda: not bus.connected)
        # The board keeps counting; these readings are lost with Redis.
        for reading in (250, 300):
            meter.bus.publish(events.MeterUpdate("kegboard.flow0", reading))
        redis_server.start()
        yield until(lambda: bus.connected and meter.bus.connected, seconds=20)
        meter.bus.publish(events.MeterUpdate("kegboard.flow0", 450))
        yield until(lambda: len(fake_server.drinks) == 1, seconds=20)
    finally:
        yield daemon.stopService()
        yield meter.stop()
    assert fake_server.drinks[0]["ticks"] == 450


def _twistd(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="no pseudo-terminals")
@pytest_twisted.inlineCallbacks
def test_kegboard_daemon_and_core_daemon_pour_through_redis(
    tmp_path: Path, redis_server: RedisServer, fake_server: FakeKegbotServer
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor

    from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard

    board = PtyKegboard(reactor, SimulatedKegboard())
    config = tmp_path / "kegbot.toml"
    config.write_text(CONFIG.format(idle=5.0))
    logs = {"kegboard": tmp_path / "kegboard.log", "core": tmp_path / "core.log"}
    procs = [
        _twistd(["--role", "kegboard", "--kegboard", board.path, "--redis-url", redis_server.url,
                 "--state-dir", str(tmp_path / "kb")], logs["kegboard"]),
        _twistd(["--role", "core", "--config", str(config), "--redis-url", redis_server.url,
                 "--api-url", fake_server.url, "--api-key", API_KEY,
                 "--state-dir", str(tmp_path / "core")], logs["core"]),
    ]  # fmt: skip
    watcher = Bus(redis_server.url, "watcher")

    def logged(name: str, needle: str) -> bool:
        return needle in logs[name].read_text()

    try:
        yield until(lambda: logged("kegboard", "Kegnet: connected"), seconds=20)
        yield until(lambda: logged("core", "Kegnet: connected"), seconds=20)
        yield until(lambda: logged("kegboard", "Kegboard kegboard connected"), seconds=20)
        board.pour("flow0", 0)  # the meter's baseline
        yield until(
            lambda: any(isinstance(e, events.MeterUpdate) for e in watcher.received), seconds=20
        )
        # An iButton on the board's reader: captive, alice's.
        board.write(board.board.token("core.onewire", bytes.fromhex("3333222211110000"), True))
        yield until(lambda: board.board.relays[0], seconds=20)  # opened through Redis
        board.pour("flow0", 400)
        yield until(
            lambda: any(
                isinstance(e, events.FlowUpdate) and e.ticks == 400 for e in watcher.received
            ),
            seconds=20,
        )
        board.write(board.board.token("core.onewire", bytes.fromhex("3333222211110000"), False))
        yield until(lambda: len(fake_server.drinks) == 1, seconds=20)
        yield until(lambda: not board.board.relays[0], seconds=20)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        yield watcher.stop()
        board.close()
    assert (fake_server.drinks[0]["ticks"], fake_server.drinks[0]["user_id"]) == (400, "alice")
    assert [p.returncode for p in procs] == [0, 0]
