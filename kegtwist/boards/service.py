"""All Kegboards: discovery, unique names, relays, input fan-out.

:class:`BoardService` turns ``--kegboard`` specs into one
:class:`~kegtwist.boards.link.BoardLink` per device node or TCP bridge, each
running a :class:`~kegtwist.boards.session.BoardSession` (pinging, naming by
hello, the 30 s hello watchdog, reopening with backoff: see there).  This
module owns what spans ports:

* Discovery.  Explicit paths and ``tcp:`` bridges are reopened forever,
  backoff capped at 5 s; glob matches are dropped when their node
  disappears and a rescan every 2 s picks up new nodes (a replugged board
  often comes back as ``ttyUSB1``).
* Names.  A board is named by its hello; a second board claiming a name in
  use is refused (its session logs it, drops its messages and claims again
  at each hello, so it is accepted once the first board is gone).
* Relays: ``set_relay`` by full relay name, and :meth:`BoardService.wait_relays_off`
  for the valve confirmation at stop.

The protocol, link and openers live in :mod:`kegtwist.boards.link` and the
spec parser in :mod:`kegtwist.boards.spec`; their public names are
re-exported here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kegtwist.boards import naming
from kegtwist.boards.link import (
    BoardLink,
    FrameObserver,
    KegboardProtocol,
    Opener,
    describe_open_error,
    serial_opener,
    tcp_opener,
)
from kegtwist.boards.spec import AUTO_GLOBS, BoardSpec, parse_board_spec, parse_board_specs
from kegtwist.core.inputs import BoardInput, RelayStatus
from kegtwist.protocol import kbsp

RESCAN_INTERVAL = 2.0

InputSink = Callable[[BoardInput], None]


class BoardService(Service):
    """All configured boards: discovery, unique names, input fan-out."""

    log: ClassVar[Logger] = Logger()
    name = "kegboards"

    def __init__(
        self,
        specs: list[BoardSpec],
        sink: InputSink,
        reactor: Any,
        clock: IReactorTime | None = None,
        *,
        frame_observer: FrameObserver | None = None,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        self.specs = list(specs)
        self.sink = sink
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.frame_observer = frame_observer
        self.rescan_interval = rescan_interval
        self.links: dict[str, BoardLink] = {}
        self.boards: dict[str, BoardLink] = {}
        self._rescan: LoopingCall | None = None
        self._waiting_logged = False
        self.relay_states: dict[str, bool] = {}
        self._relay_waiters: list[tuple[set[str], defer.Deferred[set[str]]]] = []

    @property
    def globs(self) -> list[str]:
        return [s.value for s in self.specs if s.kind == "glob"]

    def startService(self) -> None:
        super().startService()
        if not self.specs:
            self.log.info("No Kegboard configured (--kegboard none)")
            return
        for spec in self.specs:
            if spec.kind == "path":
                self._add_link(spec.value, serial_opener(self.reactor, spec.value))
            elif spec.kind == "tcp":
                self._add_link(spec.value, tcp_opener(self.reactor, spec.value))
        if self.globs:
            self._rescan = LoopingCall(self.rescan)
            self._rescan.clock = self.clock
            self._rescan.start(self.rescan_interval, now=True)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        if self._rescan is not None and self._rescan.running:
            self._rescan.stop()
        self._rescan = None
        links = list(self.links.values())
        self.links.clear()
        return defer.gatherResults([link.stop() for link in links], consumeErrors=True)

    def rescan(self) -> None:
        """Open links for new nodes matching the globs."""
        found = sorted({path for pattern in self.globs for path in glob.glob(pattern)})
        for path in found:
            if path not in self.links:
                self._add_link(path, serial_opener(self.reactor, path), from_glob=True)
        if not self.links and not self._waiting_logged:
            self._waiting_logged = True
            self.log.warn(
                "Waiting for a Kegboard on {patterns} (rescanning every {interval:g} s; "
                "use --kegboard PATH, tcp:HOST:PORT or none)",
                patterns=", ".join(self.globs),
                interval=self.rescan_interval,
            )
        elif self.links:
            self._waiting_logged = False

    def _add_link(self, device: str, opener: Opener, *, from_glob: bool = False) -> BoardLink:
        link = BoardLink(self, device, opener, self.clock, from_glob=from_glob)
        self.links[device] = link
        link.start()
        return link

    def port_down(self, link: BoardLink) -> None:
        """``link``'s port closed or failed to open, and it is to reopen
        after its backoff: unless it is a glob match whose node is gone
        (the next rescan creates a link if it returns)."""
        if link.from_glob and not os.path.exists(link.device):
            self.forget(link)

    def forget(self, link: BoardLink) -> None:
        link.stop()
        if self.links.get(link.device) is link:
            del self.links[link.device]
            self.log.info("{device} is gone", device=link.device)

    # names

    def claim(self, name: str, link: BoardLink) -> str | None:
        """Give ``name`` to ``link``'s board: None if it is now its, else
        the device of the board that holds it (``link`` is refused)."""
        holder = self.boards.get(name)
        if holder is not None and holder is not link:
            return holder.device
        self.boards[name] = link
        return None

    def release(self, name: str, link: BoardLink) -> None:
        if self.boards.get(name) is link:
            del self.boards[name]

    def emit(self, item: BoardInput) -> None:
        if isinstance(item, RelayStatus):
            self.relay_states[item.relay_name] = item.on
            if not item.on:
                for waiter in list(self._relay_waiters):
                    names, d = waiter
                    names.discard(item.relay_name)
                    if not names:
                        self._relay_waiters.remove(waiter)
                        d.callback(set())
        self.sink(item)

    def wait_relays_off(self, relay_names: set[str], timeout: float) -> defer.Deferred[set[str]]:
        """Fires once every named relay on a board of ours reported off, or
        after ``timeout`` with the ones that did not confirm."""
        names = {
            name
            for name in relay_names
            if (parsed := naming.split_relay_name(name)) is not None and parsed[0] in self.boards
        }
        if not names:
            return defer.succeed(set())
        d: defer.Deferred[set[str]] = defer.Deferred()
        waiter = (names, d)
        self._relay_waiters.append(waiter)

        def expire() -> None:
            if waiter in self._relay_waiters:
                self._relay_waiters.remove(waiter)
                d.callback(set(names))

        call = self.clock.callLater(timeout, expire)

        def done(result: set[str]) -> set[str]:
            if call.active():
                call.cancel()
            return result

        return d.addCallback(done)

    # commands

    def send(self, board: str, message: kbsp.Message) -> bool:
        link = self.boards.get(board)
        return link.send(message) if link is not None else False

    def set_relay(self, relay_name: str, on: bool) -> bool:
        """Switch ``<board>.relayN``; False if that board is not here."""
        parsed = naming.split_relay_name(relay_name)
        if parsed is None:
            self.log.warn("Not a relay name: {relay}", relay=relay_name)
            return False
        board, output_id = parsed
        return self.send(board, kbsp.SetOutput(output_id, on))

    def owns(self, board: str) -> bool:
        return board in self.boards


__all__ = [
    "AUTO_GLOBS",
    "RESCAN_INTERVAL",
    "BoardLink",
    "BoardService",
    "BoardSpec",
    "FrameObserver",
    "InputSink",
    "KegboardProtocol",
    "Opener",
    "describe_open_error",
    "parse_board_spec",
    "parse_board_specs",
    "serial_opener",
    "tcp_opener",
]
