"""``--simulate`` is kept apart from the owner's real Kegbot.

A demo run has its own state dir (``<state_dir>/simulate``), its own board
names (``simulated-kegboard`` ..., never a real controller's), and posts
nothing to a Kegbot Server unless ``--api-url`` is given explicitly.  The
process tests start the daemon exactly as an owner does (``daemons``, the
fixture in conftest: ``twistd -n kegbot --redis-url none ...`` with
``KEGBOT_STATE_DIR`` set to the test's ``state``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import FAST_POURS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock

from kegtwist.boards import naming
from kegtwist.boards.simulated import SimulatedBoards, simulated_taps
from kegtwist.boards.simulator import DEFAULT_ML_PER_TICK
from kegtwist.daemon.options import Options
from kegtwist.protocol import kbsp

SIM_METER = "simulated-kegboard.flow0"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No KEGBOT_* variables but the state dir, ``tmp_path/state``."""
    for name in ("KEGBOT_API_URL", "KEGBOT_API_KEY", "KEGBOT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEGBOT_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


# --- names -------------------------------------------------------------------


def test_simulated_boards_have_names_of_their_own() -> None:
    names = [naming.board_name(naming.simulated_serial_number(i)) for i in range(3)]
    assert names == ["simulated-kegboard", "simulated-kegboard-2", "simulated-kegboard-3"]
    assert naming.board_name("") == "kegboard"  # real naming is unchanged
    assert naming.board_name("SIM00001") == "kegboard-sim00001"
    assert [t.meter for t in simulated_taps(2)] == [
        "simulated-kegboard.flow0",
        "simulated-kegboard.flow1",
        "simulated-kegboard-2.flow0",
        "simulated-kegboard-2.flow1",
    ]
    assert naming.split_relay_name("simulated-kegboard-2.relay1") == ("simulated-kegboard-2", 1)


@given(st.text(max_size=40))
def test_no_real_serial_number_gets_a_simulated_name(serial: str) -> None:
    """A board's serial can be any text (what kegboard-set-serial stored,
    or another process's simulator): it never names a simulated board."""
    assert naming.board_name(serial).startswith("kegboard")
    other_process = "sim000000000000-0"
    assert naming.board_name(other_process) == "kegboard-000000-0"


def test_a_simulated_board_boots_when_the_daemon_starts() -> None:
    """Its hello says it booted seconds ago (counters from 0), not in 1970."""
    from twisted.internet import reactor

    clock = Clock()
    clock.advance(1_790_000_000.0)  # a wall clock
    boards = SimulatedBoards(reactor, 1, 0.0, clock)
    try:
        clock.advance(2.5)
        [pty] = boards.boards
        [hello] = list(kbsp.Decoder().feed(pty.board.hello(clock.seconds())))
        assert isinstance(hello, kbsp.Hello)
        assert hello.uptime_days == 0 and hello.uptime_millis == 2500
        assert naming.board_name(hello.serial_number) == "simulated-kegboard"
    finally:
        for pty in boards.boards:
            pty.close()


# --- options -----------------------------------------------------------------


def test_simulate_keeps_its_state_in_a_folder_of_its_own(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    assert parse().settings["state_dir"] == str(state)
    assert parse("--simulate", "1").settings["state_dir"] == str(state / "simulate")
    assert parse("--simulate", "1", "--state-dir", "/srv/kb").settings["state_dir"] == (
        "/srv/kb/simulate"
    )


def test_simulate_posts_nowhere_without_an_explicit_api_url(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    assert parse().settings["api_url"] == "http://localhost:8000/api/"  # a real start
    assert parse("--simulate", "1").settings["api_url"] == "none"
    assert parse("--simulate", "1", "--api-url", "http://kb.test/api/").settings["api_url"] == (
        "http://kb.test/api/"
    )
    config = tmp_path / "kegbot.toml"
    config.write_text('api_url = "http://file.test/api/"\n')
    assert parse("--config", str(config), "--simulate", "1").settings["api_url"] == (
        "http://file.test/api/"
    )
    config.write_text("simulate = 1\n")
    assert parse("--config", str(config)).settings["api_url"] == "none"
    env.setenv("KEGBOT_API_URL", "http://env.test/api/")
    assert parse("--simulate", "1").settings["api_url"] == "http://env.test/api/"


def test_simulated_taps_are_file_taps(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    assert parse().core_config.taps == ()
    taps = parse("--simulate", "2").core_config.taps
    assert taps == tuple(simulated_taps(2))
    assert {t.ml_per_tick for t in taps} == {DEFAULT_ML_PER_TICK}
    assert taps[0].relay == "simulated-kegboard.relay0"

    config = tmp_path / "kegbot.toml"
    config.write_text(
        '[[taps]]\nmeter = "simulated-kegboard.flow0"\nml_per_tick = 0.5\n'
        '[[taps]]\nmeter = "kegboard.flow0"\nml_per_tick = 0.25\n'
    )
    taps = parse("--config", str(config), "--simulate", "1").core_config.taps
    assert [(t.meter, t.ml_per_tick) for t in taps] == [
        ("simulated-kegboard.flow0", 0.5),  # the file wins
        ("kegboard.flow0", 0.25),
        ("simulated-kegboard.flow1", DEFAULT_ML_PER_TICK),
    ]


# --- the daemon as an owner runs it -------------------------------------------


def journal(path: Path) -> list[dict[str, Any]]:
    """The drinks added to an outbox journal (complete lines only)."""
    if not path.exists():
        return []
    drinks = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # still being written
        record = json.loads(line)
        if record.get("op") == "add" and record["item"].get("kind") == "drink":
            drinks.append(record["item"])
    return drinks


@pytest.fixture
def default_url_server() -> Iterator[FakeKegbotServer | None]:
    """A fake Kegbot Server where the default --api-url points (localhost:8000),
    as an owner's real one would be; None if that port is taken here."""
    from twisted.internet import reactor

    server = FakeKegbotServer()
    try:
        server.listen(reactor, 8000)
    except CannotListenError:
        yield None
        return
    yield server
    pytest_twisted.blockon(server.close())


def tap_new_meters(server: FakeKegbotServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner connects every meter the daemon registers to a tap with a keg."""
    route = server.route

    def routed(method: str, path: str, form: dict[str, str], request: Any) -> tuple[int, Any]:
        status, body = route(method, path, form, request)
        if method == "POST" and path == "flow-meters" and status == 200:
            meter = body["object"]["name"]
            server.taps[meter] = {
                "id": len(server.taps) + 1,
                "name": meter,
                "relay_name": "",
                "keg": 1,
            }
        return status, body

    monkeypatch.setattr(server, "route", routed)


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_simulated_run_keeps_its_drinks_from_the_real_server(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    default_url_server: FakeKegbotServer | None,
) -> Any:
    """The README's demo, then a normal start on the owner's server: the
    demo's drink stays in ``simulate/`` and never reaches the server."""
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    demo = daemons("--config", str(config), "--simulate", "1", "--kegboard", "none")
    state = demo.state_dir
    simulated = state / "simulate" / "outbox.jsonl"
    yield eventually(lambda: bool(journal(simulated)), "the demo drink in simulate/", demo)
    yield stop(demo)
    log = demo.log
    assert demo.proc.returncode == 0, log
    [drink] = journal(simulated)
    assert drink["meter_name"] == SIM_METER
    assert "nothing is posted or registered on a Kegbot Server" in log
    assert sorted(p.name for p in state.iterdir()) == ["simulate"], log
    assert not (state / "outbox.jsonl").exists()
    assert fake_server.requests == []
    if default_url_server is not None:
        assert default_url_server.requests == [], log

    real = daemons(
        "--config",
        str(config),
        "--kegboard",
        "none",
        "--api-url",
        fake_server.url,
        "--api-key",
        API_KEY,
    )
    yield eventually(
        lambda: any(r[:2] == ("GET", "taps") for r in fake_server.requests),
        "the normal start to talk to the server",
        real,
    )
    yield stop(real)
    assert real.proc.returncode == 0, real.log
    assert fake_server.drinks == []
    assert [r for r in fake_server.requests if r[0] == "POST"] == [], real.log
    assert journal(state / "outbox.jsonl") == []
    assert journal(simulated) == [drink]


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_simulated_run_with_an_explicit_server_records_there_under_its_own_names(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    tap_new_meters(fake_server, monkeypatch)
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    daemon = daemons(
        "--config",
        str(config),
        "--simulate",
        "1",
        "--kegboard",
        "none",
        "--api-url",
        fake_server.url,
        "--api-key",
        API_KEY,
    )
    yield eventually(lambda: bool(fake_server.drinks), "a drink on the server", daemon)
    [drink] = fake_server.drinks
    assert drink["meter_name"] == SIM_METER
    registered = [r[2]["name"] for r in fake_server.requests if r[:2] == ("POST", "controllers")]
    assert registered == ["simulated-kegboard"]
    assert {"simulated-kegboard.flow0", "simulated-kegboard.flow1"} <= set(fake_server.meters)
    yield stop(daemon)
    log = daemon.log
    assert daemon.proc.returncode == 0, log
    assert "Traceback" not in log and API_KEY not in log
    state = daemon.state_dir
    assert sorted(p.name for p in state.iterdir()) == ["simulate"], log
    assert [d["meter_name"] for d in journal(state / "simulate" / "outbox.jsonl")] == [SIM_METER]
