"""Composes the daemon's services from options."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger

from .board import BoardService
from .inputs import BoardConnected, BoardGone, BoardInput, MeterReading
from .options import Options

log = Logger(namespace="kegtwist")


def log_board_input(item: BoardInput) -> None:
    """Until the core consumes them: board inputs in the log."""
    if isinstance(item, (BoardConnected, BoardGone)):
        return  # the board service logs these itself
    if isinstance(item, MeterReading):
        log.debug("{meter} = {ticks}", meter=item.meter_name, ticks=item.ticks)
    else:
        log.info("{item}", item=item)


def make_service(options: Options, reactor: Any | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    top = MultiService()
    boards = BoardService(options.board_specs, log_board_input, reactor)
    boards.setServiceParent(top)
    return top
