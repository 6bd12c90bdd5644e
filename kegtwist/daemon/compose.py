"""Composes the daemon from options: boards, core, and what comes later.

:class:`KegbotService` starts its children in order and stops them in
reverse, one after the other (``MultiService`` stops them concurrently):
the core closes valves while the boards are still open to hear it.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kegtwist.boards.service import BoardService
from kegtwist.core import (
    Core,
    Effect,
    RecordDrink,
    RecordTemperature,
    RegisterController,
)
from kegtwist.core.inputs import BoardInput
from kegtwist.daemon.core_service import CoreService, TokenResolver
from kegtwist.daemon.options import Options
from kegtwist.delivery.client import KegbotServerClient
from kegtwist.delivery.outbox import Outbox
from kegtwist.delivery.service import DeliveryService
from kegtwist.delivery.tap_sync import TapSyncService
from kegtwist.delivery.token_lookup import SharedLookups, server_token_resolver

if TYPE_CHECKING:
    from kegtwist.bus.bridge import KegnetBridge, Role
    from kegtwist.bus.redis import KegnetBus

VALVE_CONFIRM_SECONDS = 1.0

log = Logger(namespace="kegtwist")


class KegbotService(MultiService):
    """Children stop one at a time, last started first.

    Which parts exist depends on ``--role``: a ``kegboard`` daemon has no
    core, outbox or server; a ``core`` daemon has no boards."""

    role: Role = "all"
    boards: BoardService | None = None
    core: CoreService | None = None
    outbox: Outbox | None = None
    delivery: DeliveryService | None = None
    tap_sync: TapSyncService | None = None
    bus: KegnetBus | None = None
    bridge: KegnetBridge | None = None
    exit_status = 0
    """1 after a stop that failed or left drinks unwritten (see make_service)."""

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


def build(
    options: Options,
    reactor: Any,
    *,
    clock: IReactorTime | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    token_resolver: TokenResolver | None = None,
) -> KegbotService:
    """The whole daemon; tests inject a clock (and may inject a resolver).

    Children start in this order and stop in reverse: the bus, the HTTP
    pool, the outbox, delivery, simulated boards, boards, tap sync, the
    core, the manhole.  So on stop the core ends pours and closes valves
    while boards, outbox and bus still listen; Redis goes last.
    """
    clock = clock if clock is not None else reactor
    config = options.settings
    role: Role = config["role"]
    top = KegbotService()
    top.role = role

    bridge: KegnetBridge | None = None
    if config["redis_url"] != "none":
        bridge = _kegnet(top, config, reactor, clock, role)
        # The kegboard role's relay guard is the core's ghost-pour guard.
        bridge.max_pour_seconds = options.core_config.pours.max_pour_seconds

    if role != "kegboard":
        _core_side(top, options, reactor, clock, monotonic, wall, token_resolver, bridge)

    if role != "core":
        _board_side(top, options, reactor, clock, bridge)

    # Every role with a core syncs taps the same way (a core-role daemon
    # has no boards but needs the server's taps all the same).
    if top.tap_sync is not None:
        top.tap_sync.setServiceParent(top)
    if top.core is not None:
        top.core.setServiceParent(top)

    if config["manhole"]:
        from kegtwist.daemon.manhole import manhole_service
        from kegtwist.daemon.namespace import namespace

        manhole_service(
            config["manhole"],
            config["manhole_keys"],
            Path(config["state_dir"]),
            lambda: namespace(top),
        ).setServiceParent(top)

    if role != "all":
        log.info(
            "Role {role}: {what}",
            role=role,
            what="boards only, over Kegnet to a core elsewhere"
            if role == "kegboard"
            else "no boards here, meters and valves over Kegnet",
        )
    return top


def _kegnet(
    top: KegbotService, config: dict[str, Any], reactor: Any, clock: IReactorTime, role: Role
) -> KegnetBridge:
    """The bus and its bridge; imported only when a Redis URL is set."""
    from kegtwist.bus.bridge import KegnetBridge
    from kegtwist.bus.redis import KegnetBus
    from kegtwist.bus.redis_url import redis_target

    target = redis_target(config["redis_url"], config["redis_password_file"])
    assert target is not None
    origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    bridge_box: list[KegnetBridge] = []
    bus = KegnetBus(
        target,
        config["channel"],
        origin,
        lambda event: bridge_box[0].on_event(event),
        reactor=reactor,
        core=role != "kegboard",
    )
    # Boards ever named here stay authoritative (local_boards.json).
    bridge = KegnetBridge(role, bus.publish, clock, state_dir=Path(config["state_dir"]))
    bridge_box.append(bridge)
    top.bus = bus
    top.bridge = bridge
    bus.setServiceParent(top)  # first started, last stopped
    return bridge


def _core_side(
    top: KegbotService,
    options: Options,
    reactor: Any,
    clock: IReactorTime,
    monotonic: Callable[[], float],
    wall: Callable[[], float],
    token_resolver: TokenResolver | None,
    bridge: KegnetBridge | None,
) -> None:
    """Outbox, server client, delivery, tap sync and the core (not started yet)."""
    config = options.settings
    state_dir = Path(config["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(state_dir)
    outbox.open()
    top.outbox = outbox

    client: KegbotServerClient | None = None
    if config["api_url"] != "none":
        client = KegbotServerClient(reactor, config["api_url"], config["api_key"])
        if token_resolver is None:
            # One request per token at a time, its answer reused for 2 s.
            token_resolver = SharedLookups(server_token_resolver(client), clock)
        Closer("http-pool", client.close).setServiceParent(top)
    Closer("outbox", outbox.close).setServiceParent(top)

    core = Core(options.core_config, first_flow_id=int(wall() * 1000))
    core_service = CoreService(
        core,
        clock,
        token_resolver=token_resolver,
        monotonic=monotonic,
        wall=wall,
        checkpoint_path=state_dir / "pours.json",
        already_recorded=outbox.knows_flow,
    )
    top.core = core_service

    delivery: DeliveryService | None = None
    tap_sync: TapSyncService | None = None
    if client is not None:
        delivery = DeliveryService(outbox, client, clock, wall=wall, drain_seconds=2.0)
        delivery.setServiceParent(top)
        tap_sync = TapSyncService(
            client,
            core_service.feed,
            options.core_config.taps,
            clock,
            # Held drinks wait for a tap: look for one as often as mid-pour.
            pours_active=lambda: bool(core.pours or core.held),
            cache_path=state_dir / "taps.json",
        )
        if bridge is not None:
            delivery.listeners.append(bridge.drink_recorded)
    top.delivery = delivery
    top.tap_sync = tap_sync

    def to_outbox(effect: Effect) -> None:
        if isinstance(effect, RecordDrink):
            item = outbox.add_drink(effect)
            if effect.dead_reason is not None:
                outbox.dead_letter(item, effect.dead_reason, None, effect.end_wall)
                return
        elif isinstance(effect, RecordTemperature):
            outbox.add_temperature(effect)
        elif isinstance(effect, RegisterController) and tap_sync is not None:
            tap_sync.register_board(effect.board)
            return
        else:
            return
        if delivery is not None:
            delivery.wake()

    core_service.listeners.append(to_outbox)
    if bridge is not None:
        bridge.feed_core = core_service.feed
        bridge.core = core  # read only: taps and pours, for the token rules
        core_service.listeners.append(bridge.core_effect)
        core_service.relay_driver = bridge.relay_driver

    if client is None:
        log.warn(
            "No Kegbot Server (--api-url none): drinks stay in the outbox in {dir}",
            dir=str(state_dir),
        )
    else:
        log.info(
            "Kegbot Server at {url} ({key}); outbox in {dir}",
            url=config["api_url"],
            key="with an API key"
            if config["api_key"]
            else "no API key: set --api-key or $KEGBOT_API_KEY",
            dir=str(state_dir),
        )
    if not core.taps and client is None:
        log.warn(
            "No taps configured: ticks are counted but no pour is recorded. "
            "Add [[taps]] to a --config file (see tap-configs/kegbot.toml)"
        )


def _board_side(
    top: KegbotService,
    options: Options,
    reactor: Any,
    clock: IReactorTime,
    bridge: KegnetBridge | None,
) -> None:
    """Simulated and real boards; their inputs go to the core and/or the bus."""
    config = options.settings
    core_service = top.core
    board_specs = list(options.board_specs)
    if config["simulate"]:
        from kegtwist.boards.service import BoardSpec
        from kegtwist.boards.simulated import SimulatedBoards

        # The simulated taps are file taps: options adds them to core_config.
        simulated = SimulatedBoards(reactor, config["simulate"], config["simulate_pours"], clock)
        simulated.setServiceParent(top)  # stops after the boards have closed
        board_specs += [BoardSpec("path", path) for path in simulated.paths]

    sinks: list[Callable[[BoardInput], None]] = []
    if core_service is not None:
        sinks.append(core_service.feed)
    if bridge is not None:
        sinks.append(bridge.board_input)

    def board_input(item: BoardInput) -> None:
        for sink in sinks:
            sink(item)

    boards = BoardService(board_specs, sinks[0] if len(sinks) == 1 else board_input, reactor, clock)
    top.boards = boards
    if bridge is not None:
        bridge.owns_board = boards.owns
        bridge.set_local_relay = boards.set_relay
    elif core_service is not None:
        core_service.relay_driver = boards.set_relay
    boards.setServiceParent(top)


def make_service(options: Options, reactor: Any | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from kegtwist.daemon.logs import exit_with, install_signal_handlers

    reactor.callWhenRunning(install_signal_handlers, reactor)
    top = build(options, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: exit_with(top.exit_status))
    return top
