"""Helpers for tests that drive boards over real pseudo-terminals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from kegtwist.core.inputs import BoardInput

GUARD_SECONDS = 10.0  # a hung test fails after this; no test sleeps


class InputRecorder:
    """A board-input sink that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[BoardInput] = []
        self._waiters: list[tuple[Callable[[BoardInput], bool], defer.Deferred[BoardInput]]] = []

    def __call__(self, item: BoardInput) -> None:
        self.items.append(item)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(item):
                self._waiters.remove(waiter)
                d.callback(item)

    def wait_for(self, predicate: Callable[[BoardInput], bool]) -> defer.Deferred[BoardInput]:
        """Fires with the first input, already seen or future, that matches."""
        for item in self.items:
            if predicate(item):
                return defer.succeed(item)
        d: defer.Deferred[BoardInput] = defer.Deferred()
        self._waiters.append((predicate, d))
        return guard(d)

    def of_type(self, kind: type) -> list[Any]:
        return [i for i in self.items if isinstance(i, kind)]


def guard(d: defer.Deferred[Any], seconds: float = GUARD_SECONDS) -> defer.Deferred[Any]:
    """Fail instead of hanging the whole run if ``d`` never fires."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)
