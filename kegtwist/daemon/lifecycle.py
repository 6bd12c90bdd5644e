"""The running daemon: its parts, the order they start in and the order
they stop in.

:class:`KegbotService` starts its children in order and stops them in
reverse, one after the other (``MultiService`` stops them concurrently):
the core closes valves while the boards are still open to hear it.  The
small services here do their I/O in ``startService``, never when built,
because twistd may drop privileges (``--uid``) in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

from kegtwist.boards.service import BoardService
from kegtwist.daemon.core_service import CoreService
from kegtwist.delivery.outbox import Outbox
from kegtwist.delivery.service import DeliveryService
from kegtwist.delivery.tap_sync import TapSyncService

if TYPE_CHECKING:
    from kegtwist.bus.bridge import KegnetBridge, Role
    from kegtwist.bus.redis import KegnetBus

VALVE_CONFIRM_SECONDS = 1.0

log = Logger(namespace="kegtwist")


@dataclass(frozen=True)
class Parts:
    """The parts one role is made of (None where the role has none): what
    the stop order, the manhole and the status readers look at."""

    boards: BoardService | None = None
    core: CoreService | None = None
    outbox: Outbox | None = None
    delivery: DeliveryService | None = None
    tap_sync: TapSyncService | None = None
    bus: KegnetBus | None = None
    bridge: KegnetBridge | None = None


class KegbotService(MultiService):
    """Children stop one at a time, last started first.

    Which parts exist depends on ``--role``: a ``kegboard`` daemon has no
    core, outbox or server; a ``core`` daemon has no boards."""

    exit_status = 0
    """1 after a stop that failed or left drinks unwritten (see make_service)."""
    started_wall: float | None = None

    def __init__(self, role: Role, parts: Parts, children: list[IService]) -> None:
        """``children`` start in this order and stop in reverse."""
        super().__init__()
        self.role: Role = role
        self.parts = parts
        for child in children:
            child.setServiceParent(self)

    @property
    def boards(self) -> BoardService | None:
        return self.parts.boards

    @property
    def core(self) -> CoreService | None:
        return self.parts.core

    @property
    def outbox(self) -> Outbox | None:
        return self.parts.outbox

    @property
    def delivery(self) -> DeliveryService | None:
        return self.parts.delivery

    @property
    def tap_sync(self) -> TapSyncService | None:
        return self.parts.tap_sync

    @property
    def bus(self) -> KegnetBus | None:
        return self.parts.bus

    @property
    def bridge(self) -> KegnetBridge | None:
        return self.parts.bridge

    def startService(self) -> None:
        import time

        self.started_wall = time.time()
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        self.running = 0
        log.info("Stopping: ending pours, closing valves, flushing the outbox")
        for child in reversed(list(self)):
            try:
                if child is self.boards and self.core is None:
                    await self._close_remote_commanded_relays()
                await defer.maybeDeferred(child.stopService)
                if child is self.core and self.core.closed_at_shutdown and self.boards is not None:
                    unconfirmed = await self.boards.wait_relays_off(
                        self.core.closed_at_shutdown, VALVE_CONFIRM_SECONDS
                    )
                    if unconfirmed:
                        log.warn(
                            "No board confirmed closing {relays} within {seconds} s",
                            relays=", ".join(sorted(unconfirmed)),
                            seconds=VALVE_CONFIRM_SECONDS,
                        )
            except Exception:
                log.failure("Stopping {service} failed", service=child.name)
                self.exit_status = 1
            if child is self.core and self.core.unwritten:
                self.exit_status = 1  # the core said how many, and where they are
        if self.bridge is not None:
            self.bridge.stop()
        if self.exit_status:
            log.error("Stopped with errors (see above): exit status {status}", status=1)
        else:
            log.info("Stopped cleanly")

    async def _close_remote_commanded_relays(self) -> None:
        """A ``kegboard`` daemon closes the valves a remote core opened."""
        assert self.boards is not None
        opened = {name for name, on in self.boards.relay_states.items() if on}
        for name in opened:
            self.boards.set_relay(name, False)
        if opened:
            await self.boards.wait_relays_off(opened, VALVE_CONFIRM_SECONDS)


class Closer(Service):
    """Releases a resource when the daemon stops, at its place in the order."""

    def __init__(self, name: str, close: Callable[[], object]) -> None:
        self.name = name
        self._close = close

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.maybeDeferred(self._close)


class StateDir(Service):
    """Creates the state directory at start, never before: twistd may still
    drop privileges (``--uid``) between building the daemon and starting it,
    and every file in the state dir must belong to the daemon's user."""

    name = "state-dir"

    def __init__(self, path: Path) -> None:
        self.path = path

    def startService(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        super().startService()


class OutboxService(Service):
    """Opens the outbox (lock, replay, compaction) at start; closes it at stop."""

    name = "outbox"

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def startService(self) -> None:
        self.outbox.open()
        super().startService()

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.maybeDeferred(self.outbox.close)
