"""kill -9 and power cuts: the daemon as a real process, SIGKILLed at the
worst moments, restarted; every pour is on the server exactly once, with
every tick the board counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakeserver import API_KEY, FakeKegbotServer
from kegnetkit import until
from redisd import free_port

from kegtwist.boards.simulator import PtyKegboard

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="no pseudo-terminals"),
]
BIN = Path(sys.executable).parent
CONFIG = """
[pours]
idle_seconds = {idle}

[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5

[[taps]]
meter = "kegboard.flow1"
ml_per_tick = 0.25
"""


class Daemon:
    """``twistd -n kegbot`` on a pty board and a loopback server, restartable."""

    def __init__(self, tmp_path: Path, board: PtyKegboard, api_url: str, idle: float) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        config = tmp_path / "kegbot.toml"
        config.write_text(CONFIG.format(idle=idle))
        self.args = [
            "--config", str(config), "--kegboard", board.path, "--api-url", api_url,
            "--api-key", API_KEY, "--redis-url", "none", "--state-dir", str(self.state),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.tmp_path / f"daemon-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def logged(self, needle: str) -> bool:
        return needle in self.log.read_text()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def journal_drinks(self) -> int:
        path = self.state / "outbox.jsonl"
        if not path.exists():
            return 0
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sum(
            1
            for entry in lines
            if entry.get("op") == "add" and entry.get("item", {}).get("kind") == "drink"
        )

    def checkpoint_knows(self, meter: str) -> bool:
        path = self.state / "pours.json"
        return path.exists() and meter in path.read_text()

    def checkpoint_ticks(self, meter: str) -> int | None:
        path = self.state / "pours.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        for pour in state.get("pours", []):
            if pour["tap"]["meter"] == meter:
                return int(pour.get("ticks", 0))
        return None


@pytest.fixture
def fake() -> Iterator[FakeKegbotServer]:
    server = FakeKegbotServer()
    yield server
    if server.port is not None:
        pytest_twisted.blockon(server.close())


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_killed_after_pours_ended_while_server_was_down(
    tmp_path: Path, pty_board: PtyKegboard, fake: FakeKegbotServer
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor

    port = free_port()
    daemon = Daemon(tmp_path, pty_board, f"http://127.0.0.1:{port}/api/", idle=0.3)
    daemon.start()
    try:
        yield until(lambda: daemon.logged("Kegboard kegboard connected"), seconds=20)
        pty_board.pour("flow0", 0)
        pty_board.pour("flow1", 0)  # baselines
        yield until(lambda: daemon.checkpoint_knows("kegboard.flow1"), seconds=10)
        for meter, ticks in (("flow0", 300), ("flow1", 120), ("flow0", 45)):
            before = daemon.journal_drinks()
            pty_board.pour(meter, ticks)
            yield until(lambda b=before: daemon.journal_drinks() == b + 1, seconds=10)
        daemon.kill9()  # the pours ended and are journaled; the server never heard of them

        fake.listen(reactor, port)  # the server comes back
        daemon.start()
        yield until(lambda: len(fake.drinks) == 3, seconds=20)
        yield until(lambda: daemon.logged("Drink 3 recorded"), seconds=10)
    finally:
        daemon.stop()
    assert sorted((d["meter_name"], d["ticks"]) for d in fake.drinks) == [
        ("kegboard.flow0", 45),
        ("kegboard.flow0", 300),
        ("kegboard.flow1", 120),
    ]
    assert daemon.proc is not None and daemon.proc.returncode == 0


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_killed_after_the_server_committed_but_before_the_answer(
    tmp_path: Path, pty_board: PtyKegboard, fake: FakeKegbotServer
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor

    fake.listen(reactor)
    fake.drop_after_commit_next()  # the server records it, the answer is lost
    daemon = Daemon(tmp_path, pty_board, fake.url, idle=0.3)
    daemon.start()
    try:
        yield until(lambda: daemon.logged("Kegboard kegboard connected"), seconds=20)
        pty_board.pour("flow0", 0)
        yield until(lambda: daemon.checkpoint_knows("kegboard.flow0"), seconds=10)
        pty_board.pour("flow0", 250)
        yield until(lambda: len(fake.drinks) == 1, seconds=10)
        daemon.kill9()  # its journal says "sending": the outcome is unknown to it
        daemon.start()
        yield until(lambda: daemon.logged("already recorded as drink 1"), seconds=20)
        pty_board.pour("flow0", 40)  # and life goes on: the next pour is a new drink, no tick twice
        yield until(lambda: len(fake.drinks) == 2, seconds=10)
    finally:
        daemon.stop()
    assert [d["ticks"] for d in fake.drinks] == [250, 40]


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_killed_mid_pour_while_the_board_keeps_counting(
    tmp_path: Path, pty_board: PtyKegboard, fake: FakeKegbotServer
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor

    fake.listen(reactor)
    daemon = Daemon(tmp_path, pty_board, fake.url, idle=2.0)
    daemon.start()
    try:
        yield until(lambda: daemon.logged("Kegboard kegboard connected"), seconds=20)
        pty_board.pour("flow0", 0)
        yield until(lambda: daemon.checkpoint_knows("kegboard.flow0"), seconds=10)
        pty_board.pour("flow0", 300)
        yield until(lambda: daemon.checkpoint_ticks("kegboard.flow0") == 300, seconds=10)
        daemon.kill9()  # mid-pour: the pour is open, the board has counted 300
        pty_board.pour("flow0", 200)  # nobody listening: the board keeps counting
        daemon.start()
        yield until(lambda: daemon.logged("Kegboard kegboard connected"), seconds=20)
        pty_board.pour("flow0", 100)
        yield until(lambda: len(fake.drinks) == 1, seconds=20)
    finally:
        daemon.stop()
    assert fake.drinks[0]["ticks"] == 600  # every tick: 300 + 200 + 100


def test_checkpoint_written_with_the_drink_before_the_outbox_sees_it(tmp_path: Path) -> None:
    """The crash window between the checkpoint and the outbox: a drink the
    checkpoint holds and the outbox does not is recorded on restart; one the
    outbox already has is not recorded twice; baselines include its ticks."""
    from twisted.internet.task import Clock

    from kegtwist.core import Core, CoreConfig, RecordDrink, TapConfig
    from kegtwist.core.inputs import MeterReading
    from kegtwist.daemon.core_service import CoreService

    path = tmp_path / "pours.json"
    config = CoreConfig(taps=(TapConfig("k.flow0", 0.5, None),))
    clock = Clock()
    seen: list[dict[str, Any]] = []

    def crash_before_outbox(effect: object) -> None:
        if isinstance(effect, RecordDrink):
            seen.append(json.loads(path.read_text()))  # what a kill -9 now would leave

    service = CoreService(Core(config), clock, monotonic=clock.seconds, checkpoint_path=path)
    service.listeners.append(crash_before_outbox)
    service.startService()
    for reading in (0, 100, 300):
        service.feed(MeterReading("k.flow0", reading))
    clock.advance(11)  # idle: the pour ends
    [state] = seen
    assert state["meters"]["k.flow0"] == 300 and state["pours"] == []
    assert [d["ticks"] for d in state["drinks"]] == [300]

    for known, expected in ((False, [300]), (True, [])):
        recorded: list[int] = []
        restarted = CoreService(
            Core(config),
            clock,
            monotonic=clock.seconds,
            checkpoint_path=path,
            already_recorded=lambda flow_id, k=known: k,
        )
        restarted.listeners.append(
            lambda e, r=recorded: r.append(e.ticks) if isinstance(e, RecordDrink) else None
        )
        path.write_text(json.dumps(state))
        restarted.startService()
        assert recorded == expected
        restarted.feed(MeterReading("k.flow0", 340))
        assert restarted.core.pours["k.flow0"].ticks == 40  # not 340: no tick twice


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_power_cut_loses_the_unsynced_done_and_nothing_is_sent_twice(
    tmp_path: Path, fake: FakeKegbotServer
) -> Generator[Any, Any, None]:
    """``done`` is written without fsync (the next record's fsync covers
    it): if a power cut takes it, the drink's durable ``sending`` makes it
    uncertain and delivery finds it on the server instead of re-posting."""
    from twisted.internet import reactor

    from kegtwist.core import RecordDrink
    from kegtwist.delivery.client import KegbotServerClient
    from kegtwist.delivery.outbox import Outbox
    from kegtwist.delivery.service import DeliveryService

    end = 1_800_000_000.5
    poured = RecordDrink(
        7, "kegboard.flow0", 250, 125.0, "alice", "core.rfid", end - 3, end, 3.0, "idle"
    )
    fake.listen(reactor)
    client = KegbotServerClient(reactor, fake.url, API_KEY)
    try:
        for run in range(2):
            box = Outbox(tmp_path)
            box.open()
            if run == 0:
                box.add_drink(poured)
            delivery = DeliveryService(box, client, reactor)
            delivery.startService()
            yield until(lambda b=box: len(b) == 0, seconds=10)
            yield delivery.stopService()
            box.close()
            if run == 0:
                journal = box.path.read_text().splitlines()
                assert json.loads(journal[-1])["op"] == "done"
                box.path.write_text("\n".join(journal[:-1]) + "\n")  # what the power cut took
        posts = [r for r in fake.requests if r[0] == "POST"]
        assert len(fake.drinks) == 1 and len(posts) == 1
        assert box.stats.found_on_server == 1
    finally:
        yield client.close()


@pytest.mark.integration
def test_second_daemon_on_the_same_state_dir_refuses_to_start(
    tmp_path: Path, pty_board: PtyKegboard
) -> None:
    """Two cores on one state directory would record every pour twice."""
    import time

    daemon = Daemon(tmp_path, pty_board, "none", idle=1.0)
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while not daemon.logged("drinks stay in the outbox"):  # the outbox is open
            assert time.monotonic() < deadline and daemon.proc and daemon.proc.poll() is None
            time.sleep(0.02)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
        second = subprocess.run(
            [str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", "--kegboard", "none",
             "--api-url", "none", "--redis-url", "none", "--state-dir", str(daemon.state)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert second.returncode != 0
        assert f"another kegbot is using the state directory {daemon.state}" in (
            second.stdout + second.stderr
        )
        assert daemon.proc is not None and daemon.proc.poll() is None  # the first one runs on
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_sigterm_mid_pour_after_a_delivery_exits_with_the_drink_recorded(
    tmp_path: Path, pty_board: PtyKegboard, fake: FakeKegbotServer
) -> Generator[Any, Any, None]:
    """The shutdown ends the open pour and, the server being up, delivers it
    (the 2 s drain) and exits: not a hang."""
    from twisted.internet import reactor

    fake.listen(reactor)
    daemon = Daemon(tmp_path, pty_board, fake.url, idle=1.5)  # the 2nd pour stays open
    daemon.start()
    try:
        yield until(lambda: daemon.logged("Kegboard kegboard connected"), seconds=20)
        pty_board.pour("flow0", 0)
        yield until(lambda: daemon.checkpoint_knows("kegboard.flow0"), seconds=10)
        pty_board.pour("flow0", 100)
        yield until(lambda: len(fake.drinks) == 1, seconds=10)  # delivery state: ok
        yield until(lambda: daemon.logged("Drink 1 recorded"), seconds=10)
        pty_board.pour("flow0", 70)
        yield until(lambda: daemon.checkpoint_ticks("kegboard.flow0") == 70, seconds=10)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        yield until(lambda: daemon.proc is not None and daemon.proc.poll() is not None, seconds=8)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    assert [d["ticks"] for d in fake.drinks] == [100, 70]
    assert daemon.proc.returncode == 0
