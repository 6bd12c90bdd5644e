"""Composes the daemon from options: the three roles as three explicit
compositions of the same parts, each part given what it needs when it is
built (late-bound collaborators are closures, never attributes assigned
afterwards).  Start and stop order: :mod:`kegtwist.daemon.lifecycle`.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
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
from kegtwist.daemon.lifecycle import (
    Closer,
    KegbotService,
    OutboxService,
    Parts,
    StateDir,
)
from kegtwist.daemon.options import Options
from kegtwist.delivery.client import KegbotServerClient
from kegtwist.delivery.outbox import Outbox
from kegtwist.delivery.service import DeliveryService
from kegtwist.delivery.tap_sync import TapSyncService
from kegtwist.delivery.token_lookup import SharedLookups, server_token_resolver
from kegtwist.durable import DiskWriter, SyncWriter, Writer

if TYPE_CHECKING:
    from kegtwist.bus.bridge import KegnetBridge, Role
    from kegtwist.bus.redis import KegnetBus
    from kegtwist.status.feed import StatusFeed
    from kegtwist.status.hub import EventHub
    from kegtwist.status.metrics import Histogram

log = Logger(namespace="kegtwist")


@dataclass
class Context:
    """What every part of a composition is built from."""

    options: Options
    reactor: Any
    clock: IReactorTime
    monotonic: Callable[[], float]
    wall: Callable[[], float]
    writer: Writer
    """Writes the checkpoint and the outbox journal, in order, off the reactor thread."""
    feed: StatusFeed | None = None
    """What the status page hears: each part is given its listener."""

    @property
    def config(self) -> dict[str, Any]:
        return self.options.settings

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])


def build(
    options: Options,
    reactor: Any,
    *,
    clock: IReactorTime | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    token_resolver: TokenResolver | None = None,
) -> KegbotService:
    """The whole daemon for ``--role``; tests inject a clock (and may inject
    a token resolver).  Nothing here touches disk or network: every part
    does its I/O in ``startService``.

    The three roles are three explicit compositions of the same parts.
    Children start in the order they are added and stop in reverse: the
    state dir, the disk writer, the bus, the HTTP pool, the outbox, delivery, boards, tap
    sync, the core, the manhole.  So on stop the core ends pours and closes
    valves while boards, outbox and bus still listen; Redis goes last.
    """
    # A test that moves time by hand (an injected clock) gets its files written at once.
    writer: Writer = SyncWriter() if clock is not None else DiskWriter(reactor)
    ctx = Context(
        options, reactor, clock if clock is not None else reactor, monotonic, wall, writer
    )
    role: Role = ctx.config["role"]
    status = _status_parts(ctx, role) if ctx.config["status"] != "none" else None
    if status is not None:
        ctx.feed = status[1]
    if role == "all":
        parts, children = _compose_all(ctx, token_resolver)
    elif role == "core":
        parts, children = _compose_core(ctx, token_resolver)
    else:
        parts, children = _compose_kegboard(ctx)
    if ctx.config["manhole"]:
        children.append(_manhole(ctx, lambda: top))
    if status is not None:
        children.append(_status_service(ctx, status, lambda: top))  # starts last, stops first
    top = KegbotService(role, parts, children)
    if role != "all":
        log.info(
            "Role {role}: {what}",
            role=role,
            what="boards only, over Kegnet to a core elsewhere"
            if role == "kegboard"
            else "no boards here, meters and valves over Kegnet",
        )
    return top


Composition = tuple[Parts, list[IService]]


def _compose_all(ctx: Context, token_resolver: TokenResolver | None) -> Composition:
    """Local boards feed the core directly; the bus (if any) hears both and
    brings remote boards' inputs to the core."""
    with_bus = ctx.config["redis_url"] != "none"
    bridge: KegnetBridge | None = None

    def drive_relay(relay: str, on: bool) -> bool:
        # Local boards directly, or through the bridge, which also sends
        # the command over Kegnet for remote boards.
        return bridge.relay_driver(relay, on) if bridge is not None else boards.set_relay(relay, on)

    server = _server_side(ctx, token_resolver, lambda: bridge)
    core = _core_service(ctx, server, drive_relay, with_bus=with_bus, bridge=lambda: bridge)
    bus: KegnetBus | None = None
    if with_bus:
        bridge = _bridge(
            ctx,
            "all",
            core,
            bus=lambda: bus,
            owns_board=lambda name: boards.owns(name),
            set_local_relay=lambda relay, on: boards.set_relay(relay, on),
        )
        bus = _bus(ctx, bridge, core_side=True)
    sinks: list[Callable[[BoardInput], None]] = [core.feed]
    if bridge is not None:
        sinks.append(bridge.board_input)
    simulated, boards = _boards(ctx, sinks)
    children: list[IService] = [StateDir(ctx.state_dir), ctx.writer]
    children += [bus] if bus is not None else []
    children += [*server.services, *simulated, boards, *server.after_boards, core]
    parts = Parts(boards, core, server.outbox, server.delivery, server.tap_sync, bus, bridge)
    return parts, children


def _compose_core(ctx: Context, token_resolver: TokenResolver | None) -> Composition:
    """No boards here: every meter, token and valve comes over Kegnet."""
    bridge: KegnetBridge | None = None
    server = _server_side(ctx, token_resolver, lambda: bridge)
    core = _core_service(
        ctx,
        server,
        lambda relay, on: bridge is not None and bridge.relay_driver(relay, on),
        with_bus=True,
        bridge=lambda: bridge,
    )
    bus: KegnetBus | None = None
    bridge = _bridge(
        ctx,
        "core",
        core,
        bus=lambda: bus,
        owns_board=lambda name: False,
        set_local_relay=lambda r, on: False,
    )
    bus = _bus(ctx, bridge, core_side=True)
    children: list[IService] = [StateDir(ctx.state_dir), ctx.writer, bus]
    children += [*server.services, *server.after_boards, core]
    parts = Parts(None, core, server.outbox, server.delivery, server.tap_sync, bus, bridge)
    return parts, children


def _compose_kegboard(ctx: Context) -> Composition:
    """Only this machine's boards, published on Kegnet for a core elsewhere;
    relay commands for them come back over Kegnet."""
    bus: KegnetBus | None = None
    bridge = _bridge(
        ctx,
        "kegboard",
        None,
        bus=lambda: bus,
        owns_board=lambda name: boards.owns(name),
        set_local_relay=lambda relay, on: boards.set_relay(relay, on),
    )
    bus = _bus(ctx, bridge, core_side=False)
    simulated, boards = _boards(ctx, [bridge.board_input])
    children: list[IService] = [StateDir(ctx.state_dir), bus, *simulated, boards]
    return Parts(boards=boards, bus=bus, bridge=bridge), children


def _bridge(
    ctx: Context,
    role: Role,
    core: CoreService | None,
    *,
    bus: Callable[[], KegnetBus | None],
    owns_board: Callable[[str], bool],
    set_local_relay: Callable[[str, bool], bool],
) -> KegnetBridge:
    from kegtwist.bus.bridge import KegnetBridge

    def publish(event: Any) -> None:
        current = bus()
        if current is not None:
            current.publish(event)

    return KegnetBridge(
        role,
        publish,
        ctx.clock,
        # Boards ever named here stay authoritative (local_boards.json).
        state_dir=ctx.state_dir,
        feed_core=core.feed if core is not None else None,
        owns_board=owns_board,
        set_local_relay=set_local_relay,
        core=core.core if core is not None else None,
        # The kegboard role's relay guard is the core's ghost-pour guard.
        max_pour_seconds=ctx.options.core_config.pours.max_pour_seconds,
    )


def _bus(ctx: Context, bridge: KegnetBridge, *, core_side: bool) -> KegnetBus:
    """Imported only when a Redis URL is set."""
    from kegtwist.bus.redis import KegnetBus
    from kegtwist.bus.redis_url import redis_target

    target = redis_target(ctx.config["redis_url"], ctx.config["redis_password_file"])
    assert target is not None
    origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    return KegnetBus(
        target,
        ctx.config["channel"],
        origin,
        bridge.on_event,
        reactor=ctx.reactor,
        core=core_side,
    )


@dataclass
class ServerSide:
    """The outbox and, with a server, its client, delivery and tap sync."""

    outbox: Outbox
    delivery: DeliveryService | None
    tap_sync: TapSyncService | None
    token_resolver: TokenResolver | None
    services: list[IService]
    """The HTTP pool, the outbox, delivery: started in this order."""
    core: list[CoreService]
    """Set once the core exists: tap changes go to it, its pours set the pace."""

    @property
    def after_boards(self) -> list[IService]:
        """Tap sync starts after the boards, before the core."""
        return [self.tap_sync] if self.tap_sync is not None else []


def _server_side(
    ctx: Context,
    token_resolver: TokenResolver | None,
    bridge: Callable[[], KegnetBridge | None],
) -> ServerSide:
    config = ctx.config
    outbox = Outbox(ctx.state_dir, writer=ctx.writer)
    side = ServerSide(outbox, None, None, token_resolver, [], [])
    if config["api_url"] == "none":
        side.services.append(OutboxService(outbox))
        log.warn(
            "No Kegbot Server (--api-url none): drinks stay in the outbox in {dir}",
            dir=str(ctx.state_dir),
        )
        if not ctx.options.core_config.taps:
            log.warn(
                "No taps configured: ticks are counted but no pour is recorded. "
                "Add [[taps]] to a --config file (see tap-configs/kegbot.toml)"
            )
        return side
    client = KegbotServerClient(ctx.reactor, config["api_url"], config["api_key"])
    if token_resolver is None:
        # One request per token at a time, its answer reused for 2 s.
        side.token_resolver = SharedLookups(server_token_resolver(client), ctx.clock)
    side.delivery = DeliveryService(
        outbox,
        client,
        ctx.clock,
        wall=ctx.wall,
        drain_seconds=2.0,
        listeners=[lambda item, drink_id: _drink_recorded(bridge(), item, drink_id)]
        + ([ctx.feed.drink_recorded] if ctx.feed is not None else []),
    )
    side.tap_sync = TapSyncService(
        client,
        lambda change: side.core[0].feed(change),
        ctx.options.core_config.taps,
        ctx.clock,
        # Held drinks wait for a tap: look for one as often as mid-pour.
        pours_active=lambda: bool(
            side.core and (side.core[0].core.pours or side.core[0].core.held)
        ),
        cache_path=ctx.state_dir / "taps.json",
    )
    side.services += [Closer("http-pool", client.close), OutboxService(outbox), side.delivery]
    log.info(
        "Kegbot Server at {url} ({key}); outbox in {dir}",
        url=config["api_url"],
        key="with an API key"
        if config["api_key"]
        else "no API key: set --api-key or $KEGBOT_API_KEY",
        dir=str(ctx.state_dir),
    )
    return side


def _drink_recorded(bridge: KegnetBridge | None, item: Any, drink_id: int) -> None:
    if bridge is not None:
        bridge.drink_recorded(item, drink_id)


def _core_service(
    ctx: Context,
    server: ServerSide,
    relay_driver: Callable[[str, bool], bool],
    *,
    with_bus: bool,
    bridge: Callable[[], KegnetBridge | None],
) -> CoreService:
    """The core on the reactor clock; its effects go to the outbox, tap
    sync (new boards) and the bus."""
    outbox, delivery, tap_sync = server.outbox, server.delivery, server.tap_sync

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

    def to_bus(effect: Effect) -> None:
        current = bridge()
        if current is not None:
            current.core_effect(effect)

    core = CoreService(
        Core(ctx.options.core_config, first_flow_id=int(ctx.wall() * 1000)),
        ctx.clock,
        relay_driver=relay_driver,
        token_resolver=server.token_resolver,
        monotonic=ctx.monotonic,
        wall=ctx.wall,
        checkpoint_path=ctx.state_dir / "pours.json",
        already_recorded=outbox.knows_flow,
        writer=ctx.writer,
        outbox_durable=outbox.durable,
        listeners=[to_outbox]
        + ([to_bus] if with_bus else [])
        + ([ctx.feed.core_effect] if ctx.feed is not None else []),
    )
    server.core.append(core)
    return core


def _boards(
    ctx: Context, sinks: list[Callable[[BoardInput], None]]
) -> tuple[list[IService], BoardService]:
    """Real boards, and simulated ones on pseudo-terminals (``--simulate``),
    which stop after the boards have closed."""
    config = ctx.config
    board_specs = list(ctx.options.board_specs)
    simulated: list[IService] = []
    if config["simulate"]:
        from kegtwist.boards.service import BoardSpec
        from kegtwist.boards.simulated import SimulatedBoards

        # The simulated taps are file taps: options adds them to core_config.
        demo = SimulatedBoards(ctx.reactor, config["simulate"], config["simulate_pours"], ctx.clock)
        simulated.append(demo)
        board_specs += [BoardSpec("path", path) for path in demo.paths]

    if ctx.feed is not None:
        sinks = [*sinks, ctx.feed.board_input]

    def board_input(item: BoardInput) -> None:
        for sink in sinks:
            sink(item)

    boards = BoardService(
        board_specs, sinks[0] if len(sinks) == 1 else board_input, ctx.reactor, ctx.clock
    )
    return simulated, boards


def _manhole(ctx: Context, daemon: Callable[[], KegbotService]) -> IService:
    from kegtwist.daemon.manhole import ManholeService
    from kegtwist.daemon.namespace import namespace

    return ManholeService(
        ctx.config["manhole"],
        ctx.config["manhole_keys"],
        ctx.state_dir,
        lambda: namespace(daemon()),
    )


def make_service(options: Options, reactor: Any | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from kegtwist.daemon.logs import exit_with, install_signal_handlers

    reactor.callWhenRunning(install_signal_handlers, reactor)
    top = build(options, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: exit_with(top.exit_status))
    return top


StatusParts = tuple["EventHub", "StatusFeed", "Histogram"]


def _status_parts(ctx: Context, role: Role) -> StatusParts:
    """The status page's event memory and the feed every part reports to."""
    from kegtwist.status.feed import StatusFeed
    from kegtwist.status.hub import EventHub
    from kegtwist.status.metrics import delivery_latency

    hub = EventHub(wall=ctx.wall)
    latency = delivery_latency()
    # Without a core (kegboard role) temperatures come from the boards.
    feed = StatusFeed(
        hub, latency=latency, wall=ctx.wall, temperatures_from_boards=role == "kegboard"
    )
    return hub, feed, latency


def _status_service(
    ctx: Context, status: StatusParts, daemon: Callable[[], KegbotService]
) -> IService:
    """``--status``: the page, /status.json, /events and /metrics, read-only."""
    from kegtwist.status.document import build_document
    from kegtwist.status.metrics import metrics_text
    from kegtwist.status.web import StatusService

    hub, _feed, latency = status
    started = ctx.wall()

    def document() -> dict[str, Any]:
        return build_document(daemon(), ctx.wall(), started, hub=hub)

    return StatusService(
        ctx.config["status"],
        document,
        lambda: metrics_text(document(), [latency]),
        hub,
        ctx.reactor,
        clock=ctx.clock,
    )
