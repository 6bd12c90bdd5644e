"""Composes the daemon from options: boards, core, and what comes later.

:class:`KegbotService` starts its children in order and stops them in
reverse, one after the other (``MultiService`` stops them concurrently):
the core closes valves while the boards are still open to hear it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .board import BoardService
from .core import Core
from .core_service import CoreService, TokenResolver
from .options import Options

log = Logger(namespace="kegtwist")


class KegbotService(MultiService):
    """Children stop one at a time, last started first."""

    boards: BoardService
    core: CoreService

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        self.running = 0
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=child.name)


def build(
    options: Options,
    reactor: Any,
    *,
    clock: IReactorTime | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    token_resolver: TokenResolver | None = None,
) -> KegbotService:
    """The whole daemon; tests inject a clock and a token resolver."""
    clock = clock if clock is not None else reactor
    top = KegbotService()
    core = Core(options.core_config, first_flow_id=int(wall() * 1000))
    core_service = CoreService(
        core, clock, token_resolver=token_resolver, monotonic=monotonic, wall=wall
    )
    boards = BoardService(options.board_specs, core_service.feed, reactor, clock)
    core_service.relay_driver = boards.set_relay
    boards.setServiceParent(top)
    core_service.setServiceParent(top)
    top.boards = boards
    top.core = core_service
    if not options.core_config.taps:
        log.warn(
            "No taps configured: ticks are counted but no pour is recorded. "
            "Add [[taps]] to a --config file (see tap-configs/kegbot.toml)"
        )
    return top


def make_service(options: Options, reactor: Any | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return build(options, reactor)
