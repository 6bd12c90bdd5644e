"""Shared plumbing of the kegboard-* console tools."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.internet import defer

from kegtwist.boards.link import BoardLink, FrameObserver, Opener
from kegtwist.boards.serial_lock import PortInUseError
from kegtwist.boards.service import BoardService
from kegtwist.boards.spec import parse_board_specs
from kegtwist.core.inputs import BoardConnected, BoardInput

DEFAULT_TIMEOUT = 10.0


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class _ToolBoards(BoardService):
    """The daemon's BoardService, noting ports held by another program."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy: dict[str, PortInUseError] = {}

    def _add_link(self, device: str, opener: Opener, *, from_glob: bool = False) -> BoardLink:
        def open_port(proto: Any) -> defer.Deferred[Any]:
            def note(failure: Any) -> Any:
                if isinstance(failure.value, PortInUseError):
                    self.busy[device] = failure.value
                else:
                    self.busy.pop(device, None)
                return failure

            return opener(proto).addErrback(note)

        return super()._add_link(device, open_port, from_glob=from_glob)


class FirstBoard:
    """Starts a BoardService and fires when its first board says hello.

    Ports are opened exactly as the daemon opens them, exclusively (see
    :mod:`kegtwist.boards.serial_lock`): :meth:`open` raises
    :class:`PortInUseError` at once when every port found is held by
    another program (the running daemon), and never disturbs it."""

    def __init__(
        self,
        reactor: Any,
        spec: str,
        frame_observer: FrameObserver | None = None,
        on_input: Callable[[BoardInput], None] | None = None,
    ) -> None:
        self.connected: defer.Deferred[BoardLink] = defer.Deferred()
        self.on_input = on_input
        self.service = _ToolBoards(
            parse_board_specs([spec]), self._input, reactor, frame_observer=frame_observer
        )

    def _input(self, item: BoardInput) -> None:
        if isinstance(item, BoardConnected) and not self.connected.called:
            self.connected.callback(self.service.boards[item.board])
        if self.on_input is not None:
            self.on_input(item)

    def open(self) -> None:
        """Start opening ports; PortInUseError (the service stopped) if
        every port found is in use.  Serial ports open synchronously, so
        this is known at once."""
        self.service.startService()
        links = set(self.service.links)
        busy = self.service.busy
        if links and links <= set(busy):
            self.service.stopService()
            raise busy[sorted(busy)[0]]

    def start(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[BoardLink]:
        """Fires with the first board to say hello; fails at once with
        PortInUseError (see :meth:`open`), or with a timeout."""
        try:
            self.open()
        except PortInUseError:
            return defer.fail()
        return self.connected.addTimeout(timeout, reactor)

    def stop(self) -> defer.Deferred[Any]:
        if not self.service.running:
            return defer.succeed(None)
        return self.service.stopService()


def in_use(out: TextIO, error: PortInUseError) -> int:
    """The port is held by another program: say so and fail, touching nothing."""
    return fail(
        out,
        f"{error.device} is in use by another program (the kegbot daemon?); "
        "stop it first (systemctl stop kegbot)",
    )


def fail(out: TextIO, message: str) -> int:
    print(message, file=out)
    return 1


def run(main: Callable[[Any, list[str], TextIO], Coroutine[Any, Any, int]]) -> None:
    """Run an async tool under ``task.react`` with the process's argv."""
    from twisted.internet import task
    from twisted.python import log

    if "--debug" in sys.argv:
        log.startLogging(sys.stderr)
    argv = [a for a in sys.argv[1:] if a != "--debug"]

    async def entry(reactor: Any) -> None:
        code = await main(reactor, argv, sys.stdout)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(entry(reactor)))
