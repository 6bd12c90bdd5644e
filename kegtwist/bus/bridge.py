"""Between the daemon and Kegnet: what it publishes and what it takes in.

The bus (:mod:`kegtwist.bus.redis`) moves JSON; the catalogue
(:mod:`kegtwist.protocol.kegnet`) says what the JSON means; this module decides, by
role, which of the daemon's doings become events and which events from
other programs become core inputs or relay commands.

- ``all``: local boards feed the core in-process *and* are published (so
  displays see meters and tokens); the core's pours, valves and drinks are
  published; inputs from other programs (remote kegboard daemons, token
  readers, ``test_flow``) feed the core for the taps of *other* boards.  No
  SetRelayOutputEvent from the bus drives a relay: the core opens its own
  valves, and shuts them.
- ``kegboard``: no core.  Board inputs are published; SetRelayOutputEvent
  for our boards drives them, under the relay guard (below).
- ``core``: no boards.  Everything arrives over the bus; valve commands
  leave over it.

Kegnet is a trust boundary: what is believed from the bus is decided by
:mod:`kegtwist.bus.trust` (boards of this daemon are authoritative, tokens
never open a local valve, whatever the bus makes the daemon remember is
bounded); this module adds the rules for relay commands:

* SetRelayOutputEvent drives a relay only in the ``kegboard`` role, and
  only for this daemon's boards.
* Relay guard (``kegboard`` role): a relay opened by a SetRelayOutputEvent
  stays open at most ``max_pour_seconds`` (the core's ghost-pour guard,
  ``[pours]`` in the config) from its first ``enabled``, refreshed or not;
  then this daemon closes it and ignores ``enabled`` for it until a
  ``disabled`` arrives or none has come for :data:`RELAY_SESSION_GAP` s (the
  board's own watchdog has closed it).  A core never holds a valve open that
  long (its own guard ends the pour first).  On stop the daemon closes what
  was opened (:mod:`kegtwist.daemon.compose`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kegtwist.boards import naming
from kegtwist.bus.trust import ALL_TAPS, LOCAL_BOARDS_FILE, TrustBoundary
from kegtwist.core import Core, CoreInput, Effect, PourSnapshot, PourUpdate, SetRelay
from kegtwist.core.inputs import BoardConnected, BoardInput, MeterReading, ThermoReading, TokenEvent
from kegtwist.delivery.outbox import DrinkItem
from kegtwist.protocol import kegnet as events

Role = Literal["all", "kegboard", "core"]
ROLES: tuple[Role, ...] = ("all", "kegboard", "core")
IDLE_DISPLAY_SECONDS = 1.0
"""A pour with no tick for this long is shown as ``idle`` until ticks resume."""
RELAY_SESSION_GAP = 10.0
"""The board's relay watchdog: an ``enabled`` after a silence this long
starts a new session of the relay guard."""

log = Logger(namespace="kegtwist.bus.redis")


@dataclass
class _Flow:
    snapshot: PourSnapshot
    last_tick_mono: float
    idle_shown: bool = False
    timer: IDelayedCall | None = None


@dataclass
class _Commanded:
    """A relay of ours opened from the bus (kegboard role)."""

    opened: float
    last_enable: float
    latched: bool = False
    timer: IDelayedCall | None = None


@dataclass
class BridgeStats:
    remote_inputs: int = 0
    remote_relay_commands: int = 0
    ignored_foreign_relay: int = 0  # for boards of other daemons: not ours to judge
    relay_guard_closed: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    """Events ignored at the trust boundary, by reason (fixed names): the
    :attr:`TrustBoundary.ignored` of the bridge."""


class KegnetBridge:
    """Translates between daemon values and Kegnet events for one role.

    Every collaborator is a constructor argument.  ``feed_core``,
    ``set_local_relay``, ``owns_board``, ``core`` and ``max_pour_seconds``
    may still be assigned afterwards."""

    def __init__(
        self,
        role: Role,
        publish: Callable[[events.Event], None],
        clock: IReactorTime,
        *,
        feed_core: Callable[[CoreInput], None] | None = None,
        set_local_relay: Callable[[str, bool], bool] | None = None,
        owns_board: Callable[[str], bool] = lambda board: False,
        state_dir: Path | None = None,
        max_pour_seconds: float = 600.0,
        core: Core | None = None,
    ) -> None:
        self.role = role
        self.publish = publish
        self.clock = clock
        self.feed_core = feed_core
        self.set_local_relay = set_local_relay
        self.max_pour_seconds = max_pour_seconds
        self.trust = TrustBoundary(
            clock,
            owns_board=owns_board,
            core=core,  # read only: taps, readers' taps, pours (for token rules)
            local_boards_path=(
                state_dir / LOCAL_BOARDS_FILE if state_dir is not None and role != "core" else None
            ),
        )
        self.flows: dict[int, _Flow] = {}
        self.stats = BridgeStats(ignored=self.trust.ignored)
        self._commanded: dict[str, _Commanded] = {}

    @property
    def owns_board(self) -> Callable[[str], bool]:
        return self.trust.owns_board

    @owns_board.setter
    def owns_board(self, owns_board: Callable[[str], bool]) -> None:
        self.trust.owns_board = owns_board

    @property
    def core(self) -> Core | None:
        return self.trust.core

    @core.setter
    def core(self, core: Core | None) -> None:
        self.trust.core = core

    @property
    def local_boards(self) -> set[str]:
        return self.trust.local_boards

    @property
    def local_boards_path(self) -> Path | None:
        return self.trust.local_boards_path

    # --- outbound: what this daemon does ----------------------------------

    def board_input(self, item: BoardInput) -> None:
        """Publish what one of our boards said, in the classic daemon's events."""
        if isinstance(item, BoardConnected):
            self.trust.remember(item.board)
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
        for held in self._commanded.values():
            if held.timer is not None and held.timer.active():
                held.timer.cancel()
        self._commanded.clear()

    # --- inbound: what other programs say ----------------------------------

    def on_event(self, event: events.Event) -> None:
        """An event from another program on the channel (never our echo)."""
        if isinstance(event, events.SetRelayOutputEvent):
            self._relay_command(event)
            return
        if self.feed_core is None:
            return  # kegboard role: only relay commands concern us
        item = self.trust.core_input(event)
        if item is None:
            return
        self.stats.remote_inputs += 1
        self.feed_core(item)

    def _relay_command(self, event: events.SetRelayOutputEvent) -> None:
        name = event.output_name
        parsed = naming.split_relay_name(name)
        if parsed is None or not self.trust.is_local_board(parsed[0]):
            self.stats.ignored_foreign_relay += 1
            return
        if self.role != "kegboard" or self.set_local_relay is None:
            self.trust.ignore("relay_not_kegboard_role", event, name)
            return
        now = self.clock.seconds()
        held = self._commanded.get(name)
        if event.output_mode == "disabled":
            if held is not None:
                self._forget_relay(name)
            self.stats.remote_relay_commands += 1
            self._drive(event, False)
            return
        if held is not None and now - held.last_enable > RELAY_SESSION_GAP:
            self._forget_relay(name)  # silent long enough: the board closed it
            held = None
        if held is None:
            held = self._commanded[name] = _Commanded(now, now)
            held.timer = self.clock.callLater(self.max_pour_seconds, self._relay_guard, name)
        held.last_enable = now
        if held.latched:
            self.trust.ignore("relay_guard_latched", event, name)
            return
        self.stats.remote_relay_commands += 1
        self._drive(event, True)

    def _drive(self, event: events.SetRelayOutputEvent, on: bool) -> None:
        assert self.set_local_relay is not None
        if not self.set_local_relay(event.output_name, on):
            self.trust.ignore("relay_board_not_connected", event, event.output_name)

    def _forget_relay(self, name: str) -> None:
        held = self._commanded.pop(name)
        if held.timer is not None and held.timer.active():
            held.timer.cancel()

    def _relay_guard(self, name: str) -> None:
        """``max_pour_seconds`` after a bus ``enabled`` opened ``name``."""
        held = self._commanded.get(name)
        if held is None or self.set_local_relay is None:
            return
        held.timer = None
        if self.clock.seconds() - held.last_enable > RELAY_SESSION_GAP:
            del self._commanded[name]  # nobody kept it open: the board closed it
            self.set_local_relay(name, False)
            return
        held.latched = True
        self.stats.relay_guard_closed += 1
        self.set_local_relay(name, False)
        log.warn(
            "Relay {relay} opened over Kegnet {seconds:g} s ago: closed by the guard "
            "(max_pour_seconds); 'enabled' is ignored until a 'disabled'",
            relay=name,
            seconds=self.max_pour_seconds,
        )

    def describe(self) -> str:
        """One line for the status screen."""
        s = self.stats
        ignored = ", ".join(f"{n} {reason}" for reason, n in sorted(s.ignored.items()))
        return (
            f"role {self.role}: {s.remote_inputs} inputs and {s.remote_relay_commands} relay "
            f"commands taken from Kegnet, {s.relay_guard_closed} relays closed by the guard; "
            f"boards of this daemon: {', '.join(sorted(self.local_boards)) or 'none'}; "
            f"ignored: {ignored or 'nothing'}"
        )
