"""Between the daemon and Kegnet: what it publishes and what it takes in.

The bus (:mod:`kegtwist.kegnet`) moves JSON; the catalogue
(:mod:`kegtwist.events`) says what the JSON means; this module decides, by
role, which of the daemon's doings become events and which events from
other programs become core inputs or relay commands.

- ``all``: local boards feed the core in-process *and* are published (so
  displays see meters and tokens); the core's pours, valves and drinks are
  published; inputs from other programs (remote kegboard daemons, token
  readers, ``test_flow``) feed the core; a SetRelayOutputEvent for a board
  of ours drives it.
- ``kegboard``: no core.  Board inputs are published; SetRelayOutputEvent
  for our boards drives them.
- ``core``: no boards.  Everything arrives over the bus; valve commands
  leave over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from . import events, naming
from .core import CoreInput, Effect, FlowRequest, PourSnapshot, PourUpdate, SetRelay
from .inputs import (
    BoardConnected,
    BoardInput,
    MeterReading,
    ThermoReading,
    TokenEvent,
)
from .outbox import DrinkItem

Role = Literal["all", "kegboard", "core"]
ROLES: tuple[Role, ...] = ("all", "kegboard", "core")
ALL_TAPS = "__all_taps__"
IDLE_DISPLAY_SECONDS = 1.0
"""A pour with no tick for this long is shown as ``idle`` until ticks resume."""

log = Logger(namespace="kegtwist.kegnet")


@dataclass
class _Flow:
    snapshot: PourSnapshot
    last_tick_mono: float
    idle_shown: bool = False
    timer: IDelayedCall | None = None


@dataclass
class BridgeStats:
    remote_inputs: int = 0
    remote_relay_commands: int = 0
    ignored_local_meter: int = 0
    ignored_foreign_relay: int = 0


class KegnetBridge:
    """Translates between daemon values and Kegnet events for one role."""

    def __init__(
        self,
        role: Role,
        publish: Callable[[events.Event], None],
        clock: IReactorTime,
        *,
        feed_core: Callable[[CoreInput], None] | None = None,
        set_local_relay: Callable[[str, bool], bool] | None = None,
        owns_board: Callable[[str], bool] = lambda board: False,
    ) -> None:
        self.role = role
        self.publish = publish
        self.clock = clock
        self.feed_core = feed_core
        self.set_local_relay = set_local_relay
        self.owns_board = owns_board
        self.flows: dict[int, _Flow] = {}
        self.stats = BridgeStats()

    # --- outbound: what this daemon does ----------------------------------

    def board_input(self, item: BoardInput) -> None:
        """Publish what one of our boards said, in the classic daemon's events."""
        if isinstance(item, MeterReading):
            self.publish(events.MeterUpdate(item.meter_name, item.ticks))
        elif isinstance(item, TokenEvent):
            self.publish(
                events.TokenAuthEvent(
                    item.meter_name or ALL_TAPS,
                    item.auth_device,
                    item.token_value,
                    "added" if item.present else "removed",
                )
            )
        elif isinstance(item, ThermoReading):
            self.publish(events.ThermoEvent(item.sensor_name, item.celsius))
        elif isinstance(item, BoardConnected):
            self.publish(
                events.ControllerConnectedEvent(item.board, uptime_seconds=item.uptime_seconds)
            )

    def relay_driver(self, relay_name: str, on: bool) -> bool:
        """The core's relay driver: a local board if ours, else the bus.

        The SetRelayOutputEvent itself is published by :meth:`core_effect`,
        for every valve command, so a remote kegboard daemon hears it."""
        parsed = naming.split_relay_name(relay_name)
        if parsed is not None and self.owns_board(parsed[0]) and self.set_local_relay is not None:
            return self.set_local_relay(relay_name, on)
        return True

    def core_effect(self, effect: Effect) -> None:
        if isinstance(effect, SetRelay):
            self.publish(
                events.SetRelayOutputEvent(
                    effect.relay_name, "enabled" if effect.on else "disabled"
                )
            )
        elif isinstance(effect, PourUpdate):
            self._pour_update(effect)

    def drink_recorded(self, item: DrinkItem, drink_id: int) -> None:
        self.publish(
            events.DrinkCreatedEvent(
                flow_id=item.flow_id,
                drink_id=drink_id,
                meter_name=item.meter_name,
                start_time=item.start_wall,
                end_time=item.end_wall,
                username=item.original_username or item.username,
            )
        )

    def _pour_update(self, effect: PourUpdate) -> None:
        snap = effect.pour
        now = self.clock.seconds()
        flow = self.flows.get(snap.flow_id)
        if effect.state == "completed":
            if flow is not None:
                self._cancel(flow)
                del self.flows[snap.flow_id]
            self._publish_flow(snap, "completed")
            return
        if flow is None:
            flow = self.flows[snap.flow_id] = _Flow(snap, now)
        elif snap.ticks != flow.snapshot.ticks:
            flow.last_tick_mono = now
            flow.idle_shown = False
        flow.snapshot = snap
        self._publish_flow(snap, "active")
        if flow.timer is None:
            flow.timer = self.clock.callLater(IDLE_DISPLAY_SECONDS, self._check_idle, snap.flow_id)

    def _check_idle(self, flow_id: int) -> None:
        """Lazy timer: rearmed from the last tick, never once per reading."""
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        flow.timer = None
        quiet = self.clock.seconds() - flow.last_tick_mono
        if quiet >= IDLE_DISPLAY_SECONDS:
            if not flow.idle_shown:
                flow.idle_shown = True
                self._publish_flow(flow.snapshot, "idle")
            wait = IDLE_DISPLAY_SECONDS
        else:
            wait = IDLE_DISPLAY_SECONDS - quiet
        flow.timer = self.clock.callLater(wait, self._check_idle, flow_id)

    def _cancel(self, flow: _Flow) -> None:
        if flow.timer is not None and flow.timer.active():
            flow.timer.cancel()
        flow.timer = None

    def _publish_flow(
        self, snap: PourSnapshot, state: Literal["active", "idle", "completed"]
    ) -> None:
        self.publish(
            events.FlowUpdate(
                flow_id=snap.flow_id,
                meter_name=snap.meter_name,
                state=state,
                username=snap.username,
                start_time=snap.start_wall,
                last_activity_time=snap.last_activity_wall,
                ticks=snap.ticks,
                volume_ml=round(snap.volume_ml, 3),
            )
        )

    def stop(self) -> None:
        for flow in self.flows.values():
            self._cancel(flow)
        self.flows.clear()

    # --- inbound: what other programs say ----------------------------------

    def on_event(self, event: events.Event) -> None:
        """An event from another program on the channel (never our echo)."""
        if isinstance(event, events.SetRelayOutputEvent):
            self._relay_command(event)
            return
        if self.feed_core is None:
            return  # kegboard role: only relay commands concern us
        item = self._core_input(event)
        if item is None:
            return
        self.stats.remote_inputs += 1
        self.feed_core(item)

    def _core_input(self, event: events.Event) -> CoreInput | None:
        if isinstance(event, events.MeterUpdate):
            board = event.meter_name.split(".", 1)[0]
            if self.owns_board(board):
                # Our own board's meter, reported by someone else: the serial
                # line is the truth, a second source would double-count.
                self.stats.ignored_local_meter += 1
                return None
            return MeterReading(event.meter_name, event.reading)
        if isinstance(event, events.TokenAuthEvent):
            meter = event.meter_name if event.meter_name not in ("", ALL_TAPS) else None
            return TokenEvent(
                event.auth_device_name, event.token_value.lower(), event.status == "added", meter
            )
        if isinstance(event, events.ThermoEvent):
            return ThermoReading(event.sensor_name, event.sensor_value)
        if isinstance(event, events.FlowRequest):
            return FlowRequest(event.meter_name, event.request)
        if isinstance(event, events.ControllerConnectedEvent):
            if self.owns_board(event.controller_name):
                return None
            return BoardConnected(
                event.controller_name, "kegnet", uptime_seconds=event.uptime_seconds
            )
        return None

    def _relay_command(self, event: events.SetRelayOutputEvent) -> None:
        parsed = naming.split_relay_name(event.output_name)
        if parsed is None or not self.owns_board(parsed[0]) or self.set_local_relay is None:
            self.stats.ignored_foreign_relay += 1
            return
        self.stats.remote_relay_commands += 1
        on = event.output_mode == "enabled"
        if not self.set_local_relay(event.output_name, on):
            log.warn(
                "Kegnet asked to set {relay} {mode} but its board is not connected",
                relay=event.output_name,
                mode=event.output_mode,
            )
