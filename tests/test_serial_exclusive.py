"""A serial port belongs to whoever opened it first.

The owner's bug: ``kegboard-info`` or ``kegboard-monitor`` run on the
daemon's port stole its bytes, and the daemon saw its board gone and came
back five times in seven seconds.  Now the daemon and the tools open ports
through :mod:`kegtwist.boards.serial_lock` (TIOCEXCL plus an flock, which root
cannot walk through), so the second opener is refused at once and the
first is never disturbed.  Everything here runs on real pseudo-terminals
and, where that is what matters, the daemon and the tools as processes.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from boardkit import guard
from daemonkit import BIN, Daemon, eventually, stop
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from kegtwist.boards.serial_lock import (
    PortInUseError,
    exclusive_serial_port,
    open_exclusive,
    unlock_port,
)
from kegtwist.boards.simulator import PtyKegboard
from kegtwist.tools import info, monitor, set_serial

pytestmark = pytest.mark.integration

TOOL_SECONDS = 2.0  # the tools must give up within this, interpreter start included
TOOL_DEADLINE = 10.0  # a tool still running after this is killed (and the test fails)
TIOCGEXCL = 0x80045440  # Linux: is TIOCEXCL set on this tty?


@pytest.fixture
def held(pty_board: PtyKegboard) -> Iterator[int]:
    """``pty_board``'s port, held by this process as another program would."""
    fd = open_exclusive(pty_board.path)
    yield fd
    unlock_port(fd)
    os.close(fd)


class _Tool(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def run_tool(name: str, *args: str) -> defer.Deferred[tuple[int | None, str, float]]:
    """Run a console tool from the venv as a process, without blocking the
    reactor (the pty board and its daemon keep talking meanwhile).  Fires
    with (exit code, output, seconds); None as the code if it had to be
    killed at the deadline."""
    from twisted.internet import reactor

    tool = _Tool()
    started = time.monotonic()
    process = reactor.spawnProcess(tool, str(BIN / name), [name, *args], env=dict(os.environ))

    def kill() -> None:
        process.signalProcess("KILL")

    deadline = reactor.callLater(TOOL_DEADLINE, kill)

    def ended(code: int | None) -> tuple[int | None, str, float]:
        if deadline.active():
            deadline.cancel()
        else:
            code = None
        return code, tool.output.decode(errors="replace"), time.monotonic() - started

    return tool.ended.addCallback(ended)


def exclusive_flag(fd: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(fd, TIOCGEXCL, b"\0\0\0\0"))[0]
    return value


# --- the lock itself --------------------------------------------------------


def test_lock_refuses_a_second_open_of_the_same_pty_and_releases_on_close() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        first = open_exclusive(path)
        with pytest.raises(PortInUseError) as refused:
            open_exclusive(path)  # same process, its own open file: refused
        assert str(refused.value) == f"{path} is in use by another program"
        assert refused.value.device == path
        os.close(first)
        second = open_exclusive(path)  # the flock went with the close
        os.close(second)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TIOCGEXCL is Linux's")
def test_daemons_serial_class_locks_before_configuring_and_unlocks_on_close() -> None:
    """The pyserial class the daemon's SerialPort uses: TIOCEXCL set while it
    holds the port, a second instance refused, everything undone on close
    (the pty's other end stays open, as a simulator or getty would)."""
    serial_class = exclusive_serial_port()._serialFactory
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        one = serial_class(path, baudrate=115200, timeout=0)
        assert exclusive_flag(slave) == 1
        with pytest.raises(PortInUseError):
            serial_class(path, baudrate=115200, timeout=0)
        assert one.is_open and exclusive_flag(slave) == 1  # the refusal undid nothing
        one.close()
        assert exclusive_flag(slave) == 0
        two = serial_class(path, baudrate=115200, timeout=0)
        two.close()
    finally:
        os.close(master)
        os.close(slave)


# --- the tools on a port another program holds ------------------------------


def _run_in_process(main: Any, argv: list[str]) -> defer.Deferred[tuple[int, str, float]]:
    from twisted.internet import reactor

    out = io.StringIO()
    started = reactor.seconds()
    d = guard(defer.Deferred.fromCoroutine(main(reactor, argv, out)))
    return d.addCallback(lambda code: (code, out.getvalue(), reactor.seconds() - started))


@pytest.mark.parametrize(
    "main, extra",
    [(info.main, []), (monitor.main, []), (set_serial.main, ["KB-1"])],
    ids=["info", "monitor", "set_serial"],
)
@pytest_twisted.inlineCallbacks
def test_tool_fails_at_once_on_a_held_port_and_sends_nothing(
    main: Any, extra: list[str], pty_board: PtyKegboard, held: int
) -> Any:
    code, text, seconds = yield _run_in_process(main, [pty_board.path, *extra])
    assert code == 1
    assert f"{pty_board.path} is in use by another program" in text
    assert seconds < 1.0
    assert pty_board.board.received == []  # not even a ping reached the board


# --- the owner's case: the daemon runs, the tools are tried on its port -----


@pytest_twisted.inlineCallbacks
def test_tools_on_the_daemons_port_exit_at_once_and_leave_the_board_alone(
    daemons: Callable[..., Daemon], pty_board: PtyKegboard
) -> Any:
    daemon = daemons(
        "--api-url",
        "none",
        "--kegboard",
        pty_board.path,
        "--log-level",
        "debug",  # meter readings are logged: proof the daemon still reads the board
    )
    yield eventually(
        lambda: f"connected on {pty_board.path}" in daemon.log, "the board's hello", daemon
    )
    for tool in ("kegboard-info", "kegboard-monitor"):
        code, text, seconds = yield run_tool(tool, pty_board.path)
        assert code is not None and code != 0, f"{tool} (killed if None): {text}"
        assert f"{pty_board.path} is in use by another program" in text, text
        assert "Traceback" not in text
        assert seconds < TOOL_SECONDS, f"{tool} took {seconds:.2f} s"
    # Bytes the board sends now still all reach the daemon.
    pty_board.pour("flow0", 7)
    yield eventually(lambda: "kegboard.flow0 reads 7" in daemon.log, "the reading", daemon)
    pty_board.pour("flow0", 5)
    yield eventually(lambda: "kegboard.flow0 reads 12" in daemon.log, "the next reading", daemon)
    log = daemon.log  # before stopping, which reports the board gone
    assert " gone" not in log, log
    assert log.count(f"Opened {pty_board.path}") == 1, log  # never reopened
    assert log.count(f"connected on {pty_board.path}") == 1, log
    assert "rejected" not in log, log
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert "Traceback" not in daemon.log


@pytest_twisted.inlineCallbacks
def test_daemon_waits_for_a_port_another_program_holds(
    daemons: Callable[..., Daemon], pty_board: PtyKegboard
) -> Any:
    """The other way round: a tool (here this process) holds the port when
    the daemon starts.  One warning names the port as in use, the daemon
    retries with its backoff, and takes the board once the port is free."""
    fd = open_exclusive(pty_board.path)
    try:
        daemon = daemons("--api-url", "none", "--kegboard", pty_board.path, "--log-level", "debug")
        in_use = f"{pty_board.path} is in use by another program"
        yield eventually(lambda: daemon.log.count(in_use) >= 3, "two retries", daemon)
        assert "connected on" not in daemon.log
    finally:
        unlock_port(fd)
        os.close(fd)
    yield eventually(
        lambda: f"connected on {pty_board.path}" in daemon.log, "the board's hello", daemon
    )
    yield stop(daemon)
    log = daemon.log
    assert daemon.proc.returncode == 0, log
    warnings = [line for line in log.splitlines() if in_use in line and "retrying" in line]
    assert len(warnings) == 1, log
    assert "Traceback" not in log
