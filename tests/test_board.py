"""The board service against simulated boards on real pseudo-terminals."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from boardkit import InputRecorder, guard
from twisted.internet import defer, protocol
from twisted.internet.task import Clock

from kegtwist.boards.link import serial_opener
from kegtwist.boards.service import BoardService
from kegtwist.boards.session import State
from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard
from kegtwist.boards.spec import parse_board_spec, parse_board_specs
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)
from kegtwist.protocol import kbsp

pytestmark = pytest.mark.integration


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def cleanup(reactor: Any) -> Iterator[list[Any]]:
    """Things to close after the test: ptys and services."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, BoardService):
            if thing.running:
                pytest_twisted.blockon(thing.stopService())
        else:
            thing.close()


def start_service(
    specs: list[str], cleanup: list[Any], reactor: Any, clock: Clock | None = None
) -> tuple[BoardService, InputRecorder]:
    recorder = InputRecorder()
    service = BoardService(parse_board_specs(specs), recorder, reactor, clock or Clock())
    service.startService()
    cleanup.append(service)
    return service, recorder


def make_board(reactor: Any, cleanup: list[Any], **kwargs: Any) -> PtyKegboard:
    board = PtyKegboard(reactor, SimulatedKegboard(**kwargs))
    cleanup.append(board)
    return board


def test_spec_parsing() -> None:
    assert [s.kind for s in parse_board_specs([])] == ["glob", "glob"]
    assert parse_board_specs(["none"]) == []
    assert parse_board_spec("/dev/ttyUSB0")[0].kind == "path"
    assert parse_board_spec("/dev/serial/by-id/*")[0].kind == "glob"
    assert parse_board_spec("tcp:bar.local:3333")[0].kind == "tcp"
    for bad in ["tcp:nohost", "tcp:host:99999", ""]:
        with pytest.raises(ValueError):
            parse_board_spec(bad)
    with pytest.raises(ValueError, match="none"):
        parse_board_specs(["none", "/dev/ttyUSB0"])


@pytest_twisted.inlineCallbacks
def test_ping_on_open_hello_names_board_and_meters_become_inputs(
    reactor: Any, cleanup: list[Any]
) -> Any:
    board = make_board(reactor, cleanup, serial_number="KB-0001-ABCD1234")
    pinged = guard(board.wait_for(lambda m: isinstance(m, kbsp.Ping)))
    service, recorder = start_service([board.path], cleanup, reactor)
    yield pinged
    connected = yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))
    # The board has been up for decades (booted_at 0): not a fresh boot.
    assert connected == BoardConnected(
        "kegboard-abcd1234", board.path, 18, "KB-0001-ABCD1234", connected.uptime_seconds
    )
    assert connected.uptime_seconds is not None and connected.uptime_seconds > 86_400
    assert service.boards["kegboard-abcd1234"].device == board.path

    board.pour("flow0", 10)
    board.pour("flow1", 7)
    board.write(board.board.temperature("thermo-28abcdef01234567", 4.5))
    board.write(board.board.token("onewire", bytes.fromhex("3e9cab1504"), True))
    yield recorder.wait_for(lambda i: isinstance(i, TokenEvent))
    assert recorder.items[1:] == [
        MeterReading("kegboard-abcd1234.flow0", 10),
        MeterReading("kegboard-abcd1234.flow1", 7),
        ThermoReading("kegboard-abcd1234.thermo-28abcdef01234567", 4.5),
        TokenEvent("core.onewire", "0415ab9c3e", True, None),
    ]


@pytest_twisted.inlineCallbacks
def test_unnamed_board_is_kegboard_and_pings_repeat_until_hello(
    reactor: Any, cleanup: list[Any]
) -> Any:
    clock = Clock()
    board = make_board(reactor, cleanup)
    pings: list[kbsp.Message] = []
    # A board that is still booting: it hears pings but does not answer.
    board.board.receive = lambda data, now: (  # type: ignore[method-assign]
        pings.extend(board.board.decoder.feed(data)) or b""
    )
    first = guard(board.wait_for(lambda m: True))
    _service, recorder = start_service([board.path], cleanup, reactor, clock)
    yield guard(_until(lambda: len(pings) >= 1))
    clock.advance(2.0)
    yield guard(_until(lambda: len(pings) >= 2))
    assert all(isinstance(p, kbsp.Ping) for p in pings)
    first.cancel()
    assert recorder.items == []
    # Readings sent before the hello are held, then delivered under the name.
    board.pour("flow0", 3)
    board.send_hello()
    yield recorder.wait_for(lambda i: isinstance(i, MeterReading))
    assert recorder.items == [
        BoardConnected("kegboard", board.path, 18, "", recorder.items[0].uptime_seconds),
        MeterReading("kegboard.flow0", 3),
    ]


def _until(condition: Any, reactor: Any = None) -> defer.Deferred[None]:
    """Fires once ``condition()`` holds, checking on every reactor turn."""
    from twisted.internet import reactor as real_reactor

    d: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if condition():
            d.callback(None)
        else:
            real_reactor.callLater(0, check)

    check()
    return d


@pytest_twisted.inlineCallbacks
def test_set_output_reaches_board_with_valid_crc(reactor: Any, cleanup: list[Any]) -> Any:
    board = make_board(reactor, cleanup)
    service, recorder = start_service([board.path], cleanup, reactor)
    yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))
    got = guard(board.wait_for(lambda m: isinstance(m, kbsp.SetOutput)))
    assert service.set_relay("kegboard.relay2", True)
    message = yield got
    assert message == kbsp.SetOutput(2, True)
    assert board.board.decoder.stats.crc_errors == 0
    assert board.board.relays[2] is True
    status = yield recorder.wait_for(lambda i: isinstance(i, RelayStatus))
    assert status == RelayStatus("kegboard.relay2", True)
    assert not service.set_relay("otherboard.relay0", True)
    assert not service.set_relay("kegboard.flow0", True)


@pytest_twisted.inlineCallbacks
def test_unplug_reports_gone_and_replug_under_new_node_is_picked_up(
    reactor: Any, cleanup: list[Any], tmp_path: Path
) -> Any:
    clock = Clock()
    first = make_board(reactor, cleanup, serial_number="00000001")
    (tmp_path / "ttyKB0").symlink_to(first.path)
    service, recorder = start_service([str(tmp_path / "ttyKB*")], cleanup, reactor, clock)
    yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))

    (tmp_path / "ttyKB0").unlink()  # what udev does on unplug
    first.close()
    gone = yield recorder.wait_for(lambda i: isinstance(i, BoardGone))
    assert gone.board == "kegboard-00000001"
    assert gone.device == str(tmp_path / "ttyKB0")
    assert "kegboard-00000001" not in service.boards

    second = make_board(reactor, cleanup, serial_number="00000001")
    (tmp_path / "ttyKB1").symlink_to(second.path)
    clock.advance(2.0)  # one rescan period
    again = yield recorder.wait_for(
        lambda i: isinstance(i, BoardConnected) and i.device.endswith("ttyKB1")
    )
    assert again.board == "kegboard-00000001"
    assert sorted(service.links) == [str(tmp_path / "ttyKB1")]


@pytest_twisted.inlineCallbacks
def test_explicit_path_is_reopened_with_backoff(
    reactor: Any, cleanup: list[Any], tmp_path: Path
) -> Any:
    clock = Clock()
    node = tmp_path / "ttyKegboard"
    service, recorder = start_service([str(node)], cleanup, reactor, clock)
    link = service.links[str(node)]
    assert link.state is State.BACKOFF  # not there yet: retrying
    board = make_board(reactor, cleanup)
    node.symlink_to(board.path)
    clock.advance(5.0)
    connected = yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))
    assert connected.device == str(node)


@pytest_twisted.inlineCallbacks
def test_no_hello_for_30_seconds_means_gone(reactor: Any, cleanup: list[Any]) -> Any:
    clock = Clock()
    board = make_board(reactor, cleanup)
    service, recorder = start_service([board.path], cleanup, reactor, clock)
    yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))
    link = service.links[board.path]
    first_hello = link.hello
    clock.advance(20.0)
    board.send_hello()  # heartbeat keeps it alive
    yield guard(_until(lambda: link.hello is not first_hello))
    clock.advance(20.0)
    assert recorder.of_type(BoardGone) == []
    # Hung: silence from here on.
    board.board.receive = lambda data, now: b""  # type: ignore[method-assign]
    clock.advance(10.0)
    gone = yield recorder.wait_for(lambda i: isinstance(i, BoardGone))
    assert gone.reason == "no hello for 30 s"


@pytest_twisted.inlineCallbacks
def test_second_board_with_same_name_is_refused(reactor: Any, cleanup: list[Any]) -> Any:
    one = make_board(reactor, cleanup)
    two = make_board(reactor, cleanup)
    refused: list[str] = []
    from twisted.logger import globalLogPublisher

    def observe(event: dict[str, Any]) -> None:
        if "Refusing" in event.get("log_format", ""):
            refused.append(f"{event['device']} {event['other']}")

    globalLogPublisher.addObserver(observe)
    try:
        service, recorder = start_service([one.path], cleanup, reactor)
        yield recorder.wait_for(lambda i: isinstance(i, BoardConnected))
        link = service._add_link(two.path, serial_opener(reactor, two.path))
        yield guard(_until(lambda: link.state is State.REFUSED))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert refused == [f"{two.path} {one.path}"]
    two.pour("flow0", 5)
    one.pour("flow0", 9)
    reading = yield recorder.wait_for(lambda i: isinstance(i, MeterReading))
    assert reading == MeterReading("kegboard.flow0", 9)
    assert len(recorder.of_type(BoardConnected)) == 1


class _BridgeBoard(protocol.Protocol):
    """A board behind ser2net: the simulator over TCP."""

    def __init__(self, board: SimulatedKegboard) -> None:
        self.board = board

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.board.receive(data, 0.0))
        if any(isinstance(m, kbsp.Ping) for m in self.board.received):
            self.transport.write(self.board.pour("flow1", 4))


@pytest_twisted.inlineCallbacks
def test_board_behind_tcp_bridge(reactor: Any, cleanup: list[Any]) -> Any:
    sim = SimulatedKegboard(serial_number="bridge01")
    factory = protocol.Factory.forProtocol(lambda: _BridgeBoard(sim))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        service, recorder = start_service(
            [f"tcp:127.0.0.1:{port.getHost().port}"], cleanup, reactor
        )
        reading = yield recorder.wait_for(lambda i: isinstance(i, MeterReading))
        assert reading == MeterReading("kegboard-bridge01.flow1", 4)
        yield service.stopService()
    finally:
        yield port.stopListening()


def test_pty_board_node_exists() -> None:
    from twisted.internet import reactor

    board = PtyKegboard(reactor)
    try:
        assert os.path.exists(board.path)
    finally:
        board.close()
