"""The kegboard-* console tools against simulated boards on real ptys."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from boardkit import guard
from twisted.internet import defer

from kegtwist.boards.simulator import PtyKegboard, SimulatedKegboard
from kegtwist.protocol import kbsp
from kegtwist.tools import info, monitor, set_serial

pytestmark = pytest.mark.integration


@pytest.fixture
def board() -> Iterator[PtyKegboard]:
    from twisted.internet import reactor

    pty = PtyKegboard(reactor, SimulatedKegboard(firmware_version=17))
    yield pty
    pty.close()


def run_tool(main: Any, argv: list[str]) -> defer.Deferred[tuple[int, str]]:
    from twisted.internet import reactor

    out = io.StringIO()
    d = guard(defer.Deferred.fromCoroutine(main(reactor, argv, out)))
    return d.addCallback(lambda code: (code, out.getvalue()))


@pytest_twisted.inlineCallbacks
def test_info_prints_the_hello(board: PtyKegboard) -> Any:
    code, text = yield run_tool(info.main, [board.path])
    assert code == 0
    assert "name:             kegboard\n" in text
    assert "firmware version: 17" in text
    assert "serial number:    (none)" in text


@pytest_twisted.inlineCallbacks
def test_info_without_a_board_fails_clearly(tmp_path: Any) -> Any:
    code, text = yield run_tool(info.main, [str(tmp_path / "nothing"), "--timeout", "0.2"])
    assert code == 1
    assert "No Kegboard answered" in text


@pytest_twisted.inlineCallbacks
def test_set_serial_names_the_board(board: PtyKegboard) -> Any:
    code, text = yield run_tool(set_serial.main, [board.path, "KB-77-1A2B3C4D"])
    assert (code, text) == (
        0,
        "Serial number KB-77-1A2B3C4D set; the board is now kegboard-1a2b3c4d\n",
    )
    assert board.board.serial_number == "KB-77-1A2B3C4D"
    # The firmware takes a serial only once; the tool says so.
    code, text = yield run_tool(set_serial.main, [board.path, "OTHER"])
    assert code == 1
    assert "already has serial number 'KB-77-1A2B3C4D'" in text


@pytest_twisted.inlineCallbacks
def test_monitor_prints_messages_and_rejections(board: PtyKegboard) -> Any:
    def on_ping(message: kbsp.Message) -> None:
        if isinstance(message, kbsp.Ping):
            board.on_receive = None
            board.pour("flow0", 12)
            bad = bytearray(kbsp.encode(kbsp.MeterStatus("flow0", 13)))
            bad[-3] ^= 0xFF  # corrupt the CRC
            board.write(bytes(bad))

    board.on_receive = on_ping
    code, text = yield run_tool(monitor.main, [board.path, "--count", "3"])
    assert code == 0
    lines = text.splitlines()
    assert lines[0].startswith("Monitoring ")
    assert f" {board.path} Hello(firmware_version=17" in lines[1]
    assert lines[2].endswith(f"{board.path} MeterStatus(meter_name='flow0', meter_reading=12)")
    assert f"{board.path} REJECTED (crc): CRC mismatch: 4b4253502076313a" in lines[3]


def test_console_scripts_are_installed() -> None:
    for tool in ("kegboard-monitor", "kegboard-info", "kegboard-set-serial"):
        result = subprocess.run(
            [sys.executable, "-c", f"import shutil; print(shutil.which({tool!r}) or '')"],
            capture_output=True,
            text=True,
            check=True,
        )
        path = result.stdout.strip() or f"{sys.prefix}/bin/{tool}"
        help_text = subprocess.run([path, "--help"], capture_output=True, text=True, check=True)
        assert "usage:" in help_text.stdout
