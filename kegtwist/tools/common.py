"""Shared plumbing of the kegboard-* console tools."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.internet import defer

from ..board import BoardLink, BoardService, FrameObserver, parse_board_specs
from ..inputs import BoardConnected, BoardInput

DEFAULT_TIMEOUT = 10.0


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class FirstBoard:
    """Starts a BoardService and fires when its first board says hello."""

    def __init__(
        self,
        reactor: Any,
        spec: str,
        frame_observer: FrameObserver | None = None,
        on_input: Callable[[BoardInput], None] | None = None,
    ) -> None:
        self.connected: defer.Deferred[BoardLink] = defer.Deferred()
        self.on_input = on_input
        self.service = BoardService(
            parse_board_specs([spec]), self._input, reactor, frame_observer=frame_observer
        )

    def _input(self, item: BoardInput) -> None:
        if isinstance(item, BoardConnected) and not self.connected.called:
            self.connected.callback(self.service.boards[item.board])
        if self.on_input is not None:
            self.on_input(item)

    def start(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[BoardLink]:
        self.service.startService()
        return self.connected.addTimeout(timeout, reactor)

    def stop(self) -> defer.Deferred[Any]:
        return self.service.stopService()


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
