"""Shared fixtures: a real redis-server, a fake Kegbot Server on loopback
and a simulated Kegboard on a pseudo-terminal, per test that asks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import Daemon, eventually
from fakeserver import API_KEY, FakeKegbotServer
from redisd import RedisServer
from twisted.internet import defer

from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def fake_server() -> Iterator[FakeKegbotServer]:
    """The fake Kegbot Server, listening on loopback on the test's reactor."""
    from twisted.internet import reactor

    server = FakeKegbotServer()
    server.listen(reactor)
    yield server
    pytest_twisted.blockon(server.close())


@pytest.fixture
def pty_board() -> Iterator[PtyKegboard]:
    """A simulated Kegboard (no serial number: ``kegboard``) on a real pty."""
    from twisted.internet import reactor

    board = PtyKegboard(reactor, SimulatedKegboard())
    yield board
    board.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts ``twistd -n kegbot`` processes; kills what still runs at teardown."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs: Any) -> Daemon:
        daemon = Daemon(tmp_path, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def board_daemon(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Callable[[str], defer.Deferred[Daemon]]:
    """Starts a daemon with a config (its text) on ``pty_board`` and
    ``fake_server``, logging at debug level (the per-reading line tells a
    test the daemon has read the ticks); fires with the daemon once the
    board's hello is in its log."""

    def start(config_text: str) -> defer.Deferred[Daemon]:
        config = tmp_path / "kegbot.toml"
        config.write_text(config_text)
        daemon = daemons(
            "--config",
            str(config),
            "--kegboard",
            pty_board.path,
            "--api-url",
            fake_server.url,
            "--api-key",
            API_KEY,
            "--log-level",
            "debug",
        )
        hello = eventually(
            lambda: f"connected on {pty_board.path}" in daemon.log, "the board's hello", daemon
        )
        return hello.addCallback(lambda _: daemon)

    return start


# Tests that use these fixtures start a redis-server, a loopback HTTP
# server, a pseudo-terminal or a twistd process: integration by definition.
INTEGRATION_FIXTURES = {"redis_server", "fake_server", "pty_board", "daemons"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
