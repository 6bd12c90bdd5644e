"""Helpers for tests on a real Redis: a started bus that records what it
hears, and a polling wait that fails instead of hanging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from boardkit import guard
from twisted.internet import defer

from kegtwist.bus.redis import KegnetBus, parse_redis_url
from kegtwist.protocol import kegnet as events


def until(condition: Callable[[], bool], seconds: float = 10.0) -> defer.Deferred[None]:
    """Poll the reactor until ``condition`` holds (the bus runs meanwhile)."""
    from twisted.internet import reactor

    d: defer.Deferred[None] = defer.Deferred()

    def check() -> None:
        if d.called:
            return
        if condition():
            d.callback(None)
        else:
            reactor.callLater(0.01, check)

    check()
    return guard(d, seconds)


class Bus:
    """A started KegnetBus and what it received."""

    def __init__(self, url: str, origin: str, **kwargs: Any) -> None:
        from twisted.internet import reactor

        target = parse_redis_url(url)
        assert target is not None
        self.received: list[events.Event] = []
        self.bus = KegnetBus(
            target, "kegnet", origin, self.received.append, reactor=reactor, **kwargs
        )
        self.bus.startService()

    def stop(self) -> defer.Deferred[None]:
        return self.bus.stopService()
