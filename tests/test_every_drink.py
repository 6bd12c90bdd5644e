"""Every drink, in every role, started as owners start it.

Each test runs real ``twistd -n kegbot`` processes against a loopback fake
Kegbot Server whose taps are the only taps (no ``[[taps]]`` in a file unless
the test is about the file), boards on real pseudo-terminals, and for the
split roles a real redis-server.  What is asserted is what the owner sees:
drinks on the server, files in the state dir, lines in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import FAST_POURS, Daemon, crash, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from redisd import RedisServer, free_port

from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard
from kegtwist.protocol import kbsp

pytestmark = pytest.mark.integration

SERVER_ML_PER_TICK = 1 / 2.724  # the fake server's kegboard.flow0 calibration


def ticks_on(server: FakeKegbotServer, meter: str = "kegboard.flow0") -> int:
    return sum(d["ticks"] for d in server.drinks if d["meter_name"] == meter)


def connected(daemon: Daemon, board: PtyKegboard) -> Callable[[], bool]:
    return lambda: f"connected on {board.path}" in daemon.log


def report_counters_after_hello(board: PtyKegboard) -> None:
    """Real firmware reports its meters right after answering a ping."""

    def on_receive(message: kbsp.Message) -> None:
        if isinstance(message, kbsp.Ping):
            for meter, reading in board.board.meters.items():
                board.write(kbsp.encode(kbsp.MeterStatus(meter, reading)))

    board.on_receive = on_receive


def config(tmp_path: Path, text: str = FAST_POURS) -> str:
    path = tmp_path / "kegbot.toml"
    path.write_text(text)
    return str(path)


def server_args(server: FakeKegbotServer) -> tuple[str, ...]:
    return ("--api-url", server.url, "--api-key", API_KEY)


# --- every role records a pour with taps only from the server ----------------


@pytest_twisted.inlineCallbacks
def test_role_all_records_a_pour_with_taps_from_the_server(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    daemon = daemons(
        "--config", config(tmp_path), "--kegboard", pty_board.path, *server_args(fake_server)
    )
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    pty_board.pour("flow0", 0)  # a board up for years: its first report is a baseline
    pty_board.pour("flow0", 300)
    yield eventually(lambda: ticks_on(fake_server) == 300, "a 300-tick drink", daemon)
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert (daemon.state_dir / "taps.json").exists()


@pytest_twisted.inlineCallbacks
def test_role_core_records_classic_kegnet_meter_updates(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    redis_server: RedisServer,
) -> Any:
    """A core-role daemon fed by a classic kegboard daemon's JSON."""
    daemon = daemons(
        "--role", "core", "--redis-url", redis_server.url, "--config", config(tmp_path),
        *server_args(fake_server),
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "the server's taps", daemon)

    def publish(event: str, data: dict[str, Any]) -> None:
        # As the classic daemon sends it: indented JSON, no origin.
        message = json.dumps({"event": event, "data": data}, indent=2)
        assert redis_server.command("PUBLISH", "kegnet", message).startswith(b":1")

    publish("ControllerConnectedEvent", {"controller_name": "kegboard"})
    publish("MeterUpdate", {"meter_name": "kegboard.flow0", "reading": 1000})
    for reading in range(1010, 1260, 10):
        publish("MeterUpdate", {"meter_name": "kegboard.flow0", "reading": reading})
    yield eventually(lambda: ticks_on(fake_server) == 250, "a 250-tick drink", daemon)
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log


@pytest_twisted.inlineCallbacks
def test_role_kegboard_and_role_core_record_a_pour_together(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    redis_server: RedisServer,
    pty_board: PtyKegboard,
) -> Any:
    """Two machines: a kegboard daemon beside the board, a core elsewhere."""
    core = daemons(
        "--role", "core", "--redis-url", redis_server.url, "--config", config(tmp_path),
        *server_args(fake_server), name="core", state_dir=tmp_path / "core-state",
    )  # fmt: skip
    kegboard = daemons(
        "--role", "kegboard", "--redis-url", redis_server.url, "--kegboard", pty_board.path,
        name="kegboard", state_dir=tmp_path / "kegboard-state",
    )  # fmt: skip
    yield eventually(lambda: "Kegnet: connected" in core.log, "the core on Redis", core)
    yield eventually(lambda: "Kegnet: connected" in kegboard.log, "Redis", kegboard)
    yield eventually(connected(kegboard, pty_board), "the board's hello", kegboard)
    yield eventually(lambda: "Taps: kegboard.flow0" in core.log, "the server's taps", core)
    pty_board.pour("flow0", 0)
    for _ in range(20):
        pty_board.pour("flow0", 20)
    yield eventually(lambda: ticks_on(fake_server) == 400, "a 400-tick drink", core)
    for daemon in (kegboard, core):
        yield stop(daemon)
        assert daemon.proc.returncode == 0, daemon.log


# --- no tick dropped without a trace ------------------------------------------


@pytest_twisted.inlineCallbacks
def test_ticks_on_an_untapped_meter_wait_for_the_server_and_are_recorded(
    tmp_path: Path, daemons: Callable[..., Daemon], pty_board: PtyKegboard
) -> Any:
    """The server is unreachable at start and no [[taps]] exist: the pour
    is held, survives a restart, and is recorded once the server answers."""
    from twisted.internet import reactor

    port = free_port()
    server = FakeKegbotServer()
    url = f"http://127.0.0.1:{port}/api/"
    args = ("--config", config(tmp_path), "--kegboard", pty_board.path,
            "--api-url", url, "--api-key", API_KEY)  # fmt: skip
    daemon = daemons(*args)
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    pty_board.pour("flow0", 0)
    pty_board.pour("flow0", 817)
    yield eventually(lambda: "which has no tap" in daemon.log, "the untapped warning", daemon)
    yield eventually(lambda: "held until its meter has a tap" in daemon.log, "the hold", daemon)
    assert daemon.log.count("which has no tap") == 1
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    held = json.loads((daemon.state_dir / "pours.json").read_text())["held"]
    assert [(d["meter_name"], d["ticks"]) for d in held] == [("kegboard.flow0", 817)]

    again = daemons(*args)
    yield eventually(connected(again, pty_board), "the board's hello", again)
    server.listen(reactor, port)
    try:
        yield eventually(lambda: ticks_on(server) == 817, "the held drink", again, seconds=25)
        [drink] = server.drinks
        assert drink["volume_ml"] == pytest.approx(817 * SERVER_ML_PER_TICK, rel=1e-3)
        yield stop(again)
        assert again.proc.returncode == 0, again.log
        cached = json.loads((again.state_dir / "taps.json").read_text())
        assert "kegboard.flow0" in [t["meter"] for t in cached["taps"]]
    finally:
        yield server.close()


@pytest_twisted.inlineCallbacks
def test_an_untapped_drink_becomes_a_dead_letter_after_the_hold(
    tmp_path: Path, daemons: Callable[..., Daemon], pty_board: PtyKegboard
) -> Any:
    """untapped_hold_hours = 0.0005 (1.8 s): the drink is a dead letter
    that ``kegbot-outbox dead`` lists with its reason."""
    import subprocess

    text = FAST_POURS + "untapped_hold_hours = 0.0005\n"
    daemon = daemons(
        "--config", config(tmp_path, text), "--kegboard", pty_board.path, "--api-url", "none"
    )
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    pty_board.pour("flow0", 0)
    pty_board.pour("flow0", 123)
    yield eventually(lambda: "kept as a dead letter" in daemon.log, "the dead letter", daemon)
    yield stop(daemon)
    from daemonkit import BIN

    listing = subprocess.run(
        [str(BIN / "kegbot-outbox"), "--state-dir", str(daemon.state_dir), "dead"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "no tap for kegboard.flow0" in listing.stdout, (listing.stdout, listing.stderr)
    assert "123" in listing.stdout


# --- restarts lose nothing the board counted ---------------------------------


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
@pytest.mark.parametrize("server_at_restart", ["up", "down"])
@pytest_twisted.inlineCallbacks
def test_a_restart_loses_no_tick_the_board_counted_meanwhile(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    pty_board: PtyKegboard,
    how: str,
    server_at_restart: str,
) -> Any:
    from twisted.internet import reactor

    report_counters_after_hello(pty_board)
    port = free_port()
    server = FakeKegbotServer()
    server.listen(reactor, port)
    url = f"http://127.0.0.1:{port}/api/"
    args = ("--config", config(tmp_path), "--kegboard", pty_board.path,
            "--api-url", url, "--api-key", API_KEY)  # fmt: skip
    try:
        daemon = daemons(*args)
        yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
        yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "taps", daemon)
        pty_board.pour("flow0", 0)
        pty_board.pour("flow0", 300)
        yield eventually(lambda: ticks_on(server) == 300, "the first drink", daemon)
        yield (stop(daemon) if how == "sigterm" else crash(daemon))

        # The board pours on while nobody listens: only its counter moves.
        pty_board.board.meters["flow0"] += 500
        if server_at_restart == "down":
            yield server.close()
        again = daemons(*args)
        yield eventually(connected(again, pty_board), "the board's hello", again)
        yield eventually(
            lambda: "Pour" in again.log and "ended" in again.log, "the pour's end", again
        )
        if server_at_restart == "down":
            server.listen(reactor, port)
        yield eventually(lambda: ticks_on(server) == 800, "every tick", again, seconds=30)
        assert sorted(d["ticks"] for d in server.drinks) == [300, 500]
        yield stop(again)
        assert again.proc.returncode == 0, again.log
    finally:
        yield server.close()


# --- the board's own word about its counters ---------------------------------


@pytest_twisted.inlineCallbacks
def test_a_freshly_booted_board_counts_its_first_report(
    tmp_path: Path, daemons: Callable[..., Daemon], fake_server: FakeKegbotServer
) -> Any:
    """An Arduino resets when its port opens: its hello says it has been up
    a second, so its first report of 545 ticks is 545 ticks poured."""
    from twisted.internet import reactor

    board = PtyKegboard(reactor, SimulatedKegboard(booted_at=reactor.seconds()))
    try:
        daemon = daemons(
            "--config", config(tmp_path), "--kegboard", board.path, *server_args(fake_server)
        )
        yield eventually(connected(daemon, board), "the board's hello", daemon)
        yield eventually(lambda: "its meters count from 0" in daemon.log, "fresh boot", daemon)
        yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "taps", daemon)
        board.pour("flow0", 545)
        yield eventually(lambda: ticks_on(fake_server) == 545, "all 545 ticks", daemon)
        yield stop(daemon)
    finally:
        board.close()


@pytest_twisted.inlineCallbacks
def test_the_files_calibration_is_the_volume_the_server_records(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    text = FAST_POURS + """
[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
relay = "kegboard.relay0"
"""
    daemon = daemons(
        "--config", config(tmp_path, text), "--kegboard", pty_board.path,
        *server_args(fake_server),
    )  # fmt: skip
    yield eventually(connected(daemon, pty_board), "the board's hello", daemon)
    yield eventually(lambda: "overrides the server" in daemon.log, "the warning", daemon)
    pty_board.pour("flow0", 0)
    pty_board.pour("flow0", 300)
    yield eventually(lambda: ticks_on(fake_server) == 300, "the drink", daemon)
    [drink] = fake_server.drinks
    assert drink["volume_ml"] == pytest.approx(150.0)
    [line] = [x for x in daemon.log.splitlines() if "overrides the server" in x]
    assert "ml_per_tick 0.5" in line and "0.367" in line
    yield stop(daemon)
