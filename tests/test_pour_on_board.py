"""A whole pour through a simulated board on a real pseudo-terminal.

The board's relay watchdog, the core's timers and the valve refreshes all
run on one injected Clock; bytes travel through a real pty and the real
reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import daemonkit
import pytest
import pytest_twisted
from boardkit import guard
from twisted.internet import defer
from twisted.internet.task import Clock

from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard
from kegtwist.core import RecordDrink, TokenLookupResult
from kegtwist.daemon.compose import build
from kegtwist.daemon.lifecycle import KegbotService
from kegtwist.daemon.options import Options
from kegtwist.protocol import kbsp

pytestmark = pytest.mark.integration

WALL0 = 1_800_000_000.0
CONFIG = """
[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
relay = "kegboard.relay0"
"""


def until(condition: Callable[[], bool]) -> defer.Deferred[None]:
    """Fires once ``condition()`` holds, checked on every reactor turn."""
    return daemonkit.until(condition, interval=0)


def alice(device: str, value: str) -> defer.Deferred[TokenLookupResult]:
    """The token lookup (the server's job in production): deadbeef is alice."""
    if value == "deadbeef":
        return defer.succeed(TokenLookupResult(device, value, "alice", True))
    return defer.succeed(TokenLookupResult(device, value, None, False))


@pytest.fixture
def rig(tmp_path: Any) -> Iterator[tuple[KegbotService, PtyKegboard, Clock, list[RecordDrink]]]:
    from twisted.internet import reactor

    clock = Clock()
    board = PtyKegboard(reactor, SimulatedKegboard(), clock=clock)
    config = tmp_path / "kegbot.toml"
    config.write_text(CONFIG)
    options = Options()
    options.parseOptions(
        [
            "--config",
            str(config),
            "--kegboard",
            board.path,
            "--state-dir",
            str(tmp_path),
            "--api-url",
            "none",
            "--redis-url",
            "none",
        ]
    )
    daemon = build(
        options,
        reactor,
        clock=clock,
        monotonic=clock.seconds,
        wall=lambda: WALL0 + clock.seconds(),
        token_resolver=alice,
    )
    drinks: list[RecordDrink] = []
    daemon.core.listeners.append(lambda e: drinks.append(e) if isinstance(e, RecordDrink) else None)
    daemon.startService()
    yield daemon, board, clock, drinks
    if daemon.running:
        pytest_twisted.blockon(daemon.stopService())
    board.close()


@pytest_twisted.inlineCallbacks
def test_authorised_pour_keeps_valve_open_through_refreshes_and_closes_it(rig: Any) -> Any:
    daemon, board, clock, drinks = rig
    yield until(lambda: "kegboard" in daemon.core.core.boards)
    board.pour("flow0", 0)
    board.write(board.board.token("core.rfid", bytes.fromhex("efbeadde"), True))
    yield until(lambda: board.board.relays[0])

    ticks = 0
    for _ in range(20):  # 40 s of pouring, far past the board's 10 s relay watchdog
        refreshed = board.wait_for(lambda m: isinstance(m, kbsp.SetOutput))
        clock.advance(2.0)
        assert (yield guard(refreshed)) == kbsp.SetOutput(0, True)
        assert board.board.relays[0], f"valve dropped after {clock.seconds()} s"
        board.pour("flow0", 37)
        ticks += 37
        yield until(lambda t=ticks: daemon.core.core.pours["kegboard.flow0"].ticks == t)

    closed = board.wait_for(lambda m: m == kbsp.SetOutput(0, False))
    clock.advance(20.0)  # core.rfid idle limit
    yield guard(closed)
    assert board.board.relays[0] is False
    [drink] = drinks
    assert (drink.meter_name, drink.ticks, drink.volume_ml, drink.username) == (
        "kegboard.flow0",
        740,
        370.0,
        "alice",
    )
    assert drink.duration_seconds == 40.0


@pytest_twisted.inlineCallbacks
def test_anonymous_pour_is_logged_as_a_drink_and_opens_nothing(rig: Any) -> Any:
    daemon, board, clock, drinks = rig
    yield until(lambda: "kegboard" in daemon.core.core.boards)
    board.pour("flow0", 0)
    yield until(lambda: "kegboard.flow0" in daemon.core.core.meters)
    board.pour("flow0", 300)
    yield until(lambda: "kegboard.flow0" in daemon.core.core.pours)
    clock.advance(10.0)
    assert [(d.ticks, d.volume_ml, d.username) for d in drinks] == [(300, 150.0, None)]
    assert board.board.relays == [False] * 6


@pytest_twisted.inlineCallbacks
def test_stopping_the_daemon_closes_an_open_valve_and_records_the_pour(rig: Any) -> Any:
    daemon, board, _clock, drinks = rig
    yield until(lambda: "kegboard" in daemon.core.core.boards)
    board.pour("flow0", 0)
    board.write(board.board.token("core.rfid", bytes.fromhex("efbeadde"), True))
    yield until(lambda: board.board.relays[0])
    board.pour("flow0", 100)
    yield until(lambda: daemon.core.core.pours["kegboard.flow0"].ticks == 100)
    closed = board.wait_for(lambda m: m == kbsp.SetOutput(0, False))
    yield daemon.stopService()
    yield guard(closed)
    assert board.board.relays[0] is False
    assert [(d.ticks, d.reason) for d in drinks] == [(100, "shutdown")]
