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

Kegnet is a trust boundary: any client of the Redis server can publish, and
every subscriber sees every token presented (so tokens can be replayed).

* Boards of this daemon are authoritative: those connected now, and every
  board ever named here, remembered in ``<state_dir>/local_boards.json``
  (written atomically when a new board is named, read at start; a
  ``core``-role daemon has no boards and neither reads nor writes it, so a
  board that moved to a kegboard daemon elsewhere is heard there).  A bus
  event naming one of them is ignored: MeterUpdate of its meters,
  ThermoEvent of its sensors, ControllerConnectedEvent of it, FlowRequest
  ``start_flow``/``stop_flow`` for its meters (``report_status`` only
  reports: it passes), SetRelayOutputEvent for its relays (outside the
  ``kegboard`` role), and TokenAuthEvent as follows.
* A TokenAuthEvent names a local board when its ``meter_name`` is a meter of
  one, when its ``auth_device_name`` is qualified by one
  (``kegboard.core.rfid``), or when its token is pouring on (or being looked
  up for) a local board's tap.  A bare ``core.rfid`` or ``core.onewire``
  names no board: every Kegboard's readers have those names, so refusing
  them would refuse every remote board's tokens.  A token for every tap
  (``__all_taps__`` or no tap) reaches the taps the core would open for it
  (its reader's ``taps`` setting, else every tap); if one of them is a
  local board's, the token is ignored, unless exactly one of them is not,
  and then it is addressed to that tap alone.  So a token from the bus
  never opens a local valve: those open only for the board's own reader.
  A ``removed`` is taken unless its token pours on a local tap (removal
  opens nothing).
* Every ignored event is counted per reason (:attr:`BridgeStats.ignored`,
  :meth:`KegnetBridge.describe`) and logged at most once per reason per
  minute, with the number held back.
* Whatever the bus can make the daemon remember is bounded: at most
  :data:`MAX_REMOTE_NAMES` meters without a tap, sensors and boards each,
  and :data:`MAX_UNKNOWN_AUTH_DEVICES` auth devices besides the configured
  ones; events naming more are ignored (``too_many_*``).  At most
  :data:`BUS_TOKENS_PER_MINUTE` tokens a minute are taken from the bus.
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

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kegtwist.boards import naming
from kegtwist.core import Core, CoreInput, Effect, FlowRequest, PourSnapshot, PourUpdate, SetRelay
from kegtwist.core.inputs import (
    BoardConnected,
    BoardInput,
    MeterReading,
    ThermoReading,
    TokenEvent,
)
from kegtwist.delivery.outbox import DrinkItem
from kegtwist.protocol import kegnet as events
from kegtwist.ratelimit import RateLimiter

Role = Literal["all", "kegboard", "core"]
ROLES: tuple[Role, ...] = ("all", "kegboard", "core")
ALL_TAPS = "__all_taps__"
IDLE_DISPLAY_SECONDS = 1.0
"""A pour with no tick for this long is shown as ``idle`` until ticks resume."""
LOCAL_BOARDS_FILE = "local_boards.json"
MAX_LOCAL_BOARDS = 64
IGNORE_LOG_INTERVAL = 60.0
MAX_REMOTE_NAMES = 32
"""Meters without a tap, sensors and boards heard from the bus, each."""
MAX_UNKNOWN_AUTH_DEVICES = 8
"""Auth devices heard from the bus besides the configured and Kegboard ones."""
KEGBOARD_AUTH_DEVICES = frozenset({"core.rfid", "core.onewire"})
BUS_TOKENS_PER_MINUTE = 60
RELAY_SESSION_GAP = 10.0
"""The board's relay watchdog: an ``enabled`` after a silence this long
starts a new session of the relay guard."""

_WHY = {
    "local_meter": "its board is a board of this daemon; the serial line is the truth",
    "local_sensor": "its board is a board of this daemon",
    "local_controller": "it is a board of this daemon",
    "local_flow_request": "it names a tap of this daemon's boards; only pours on other "
    "daemons' boards are started or stopped over Kegnet",
    "local_token": "it names a tap or reader of this daemon's boards, or its token pours "
    "there; only the board's own reader authorises on them",
    "token_reaches_local_taps": "a token for every tap would open this daemon's own taps; "
    "a reader elsewhere must name its tap (meter_name)",
    "relay_not_kegboard_role": "only a --role kegboard daemon drives its relays from "
    "Kegnet; here the core opens and closes the valves",
    "relay_guard_latched": "the guard closed it after max_pour_seconds; send disabled first",
    "relay_board_not_connected": "its board is not connected",
    "too_many_meters": f"{MAX_REMOTE_NAMES} meters without a tap were heard already",
    "too_many_sensors": f"{MAX_REMOTE_NAMES} sensors were heard already",
    "too_many_boards": f"{MAX_REMOTE_NAMES} boards were heard already",
    "too_many_auth_devices": f"{MAX_UNKNOWN_AUTH_DEVICES} unknown auth devices were heard already",
    "token_rate": f"more than {BUS_TOKENS_PER_MINUTE} tokens a minute from Kegnet",
}
_LOCAL_HINT = (
    " (boards of this daemon are remembered in {path}: remove a name there if that "
    "board moved to a kegboard daemon on another machine)"
)

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
    """Events ignored at the trust boundary, by reason (fixed names)."""


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
        state_dir: Path | None = None,
        max_pour_seconds: float = 600.0,
        core: Core | None = None,
    ) -> None:
        self.role = role
        self.publish = publish
        self.clock = clock
        self.feed_core = feed_core
        self.set_local_relay = set_local_relay
        self.owns_board = owns_board
        self.core = core  # read only: taps, readers' taps, pours (for token rules)
        self.max_pour_seconds = max_pour_seconds
        self.flows: dict[int, _Flow] = {}
        self.stats = BridgeStats()
        self._log_limit = RateLimiter(IGNORE_LOG_INTERVAL)
        self._token_limit = RateLimiter(60.0, burst=BUS_TOKENS_PER_MINUTE)
        self._remote_names: dict[str, set[str]] = {
            "meter": set(),
            "sensor": set(),
            "board": set(),
            "auth_device": set(),
        }
        self._commanded: dict[str, _Commanded] = {}
        self.local_boards_path = (
            state_dir / LOCAL_BOARDS_FILE if state_dir is not None and role != "core" else None
        )
        self.local_boards: set[str] = self._load_local_boards()

    # --- outbound: what this daemon does ----------------------------------

    def board_input(self, item: BoardInput) -> None:
        """Publish what one of our boards said, in the classic daemon's events."""
        if isinstance(item, BoardConnected):
            self._remember(item.board)
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
        item = self._core_input(event)
        if item is None:
            return
        self.stats.remote_inputs += 1
        self.feed_core(item)

    def _core_input(self, event: events.Event) -> CoreInput | None:
        if isinstance(event, events.MeterUpdate):
            name = event.meter_name
            if self._is_local(name):
                # Our own board's meter, reported by someone else: the serial
                # line is the truth, a second source would double-count.
                self._ignore("local_meter", event, name)
                return None
            if not self._has_tap(name) and not self._admit("meter", event, name):
                return None
            return MeterReading(name, event.reading)
        if isinstance(event, events.TokenAuthEvent):
            return self._token_input(event)
        if isinstance(event, events.ThermoEvent):
            name = event.sensor_name
            if self._is_local(name):
                self._ignore("local_sensor", event, name)
                return None
            if not self._admit("sensor", event, name):
                return None
            return ThermoReading(name, event.sensor_value)
        if isinstance(event, events.FlowRequest):
            if event.request != "report_status" and self._is_local(event.meter_name):
                self._ignore("local_flow_request", event, event.meter_name)
                return None
            return FlowRequest(event.meter_name, event.request)
        if isinstance(event, events.ControllerConnectedEvent):
            name = event.controller_name
            if self._is_local_board(name):
                self._ignore("local_controller", event, name)
                return None
            if not self._admit("board", event, name):
                return None
            return BoardConnected(name, "kegnet", uptime_seconds=event.uptime_seconds)
        return None

    def _token_input(self, event: events.TokenAuthEvent) -> CoreInput | None:
        """The token rules of the module docstring."""
        device = event.auth_device_name
        value = event.token_value.lower()
        added = event.status == "added"
        meter = event.meter_name if event.meter_name not in ("", ALL_TAPS) else None
        if (
            (meter is not None and self._is_local(meter))
            or ("." in device and self._is_local(device))
            or self._token_used_locally((device, value))
        ):
            self._ignore("local_token", event, meter or device)
            return None
        if meter is None and added:
            reach = self._token_reach(device)
            remote = [m for m in reach if not self._is_local(m)]
            if len(remote) < len(reach):
                if len(remote) != 1:
                    self._ignore("token_reaches_local_taps", event, device)
                    return None
                meter = remote[0]
        known = KEGBOARD_AUTH_DEVICES | set(self.core.config.auth.devices if self.core else ())
        if device not in known and not self._admit("auth_device", event, device):
            return None
        if added and not self._token_limit.allow("token", self.clock.seconds()):
            self._ignore("token_rate", event, device)
            return None
        return TokenEvent(device, value, added, meter)

    def _token_reach(self, device: str) -> tuple[str, ...]:
        """The meters the core would open for a token for every tap."""
        if self.core is None:
            return ()
        taps = self.core.config.auth.device(device).taps
        return taps if taps is not None else tuple(self.core.taps)

    def _token_used_locally(self, key: tuple[str, str]) -> bool:
        """The token pours on, or is being looked up for, a local board's tap."""
        core = self.core
        if core is None:
            return False
        pending = core.pending.get(key)
        if pending is not None and any(self._is_local(m) for m in pending.meters):
            return True
        return any(p.token == key and self._is_local(m) for m, p in core.pours.items())

    def _relay_command(self, event: events.SetRelayOutputEvent) -> None:
        name = event.output_name
        parsed = naming.split_relay_name(name)
        if parsed is None or not self._is_local_board(parsed[0]):
            self.stats.ignored_foreign_relay += 1
            return
        if self.role != "kegboard" or self.set_local_relay is None:
            self._ignore("relay_not_kegboard_role", event, name)
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
            self._ignore("relay_guard_latched", event, name)
            return
        self.stats.remote_relay_commands += 1
        self._drive(event, True)

    def _drive(self, event: events.SetRelayOutputEvent, on: bool) -> None:
        assert self.set_local_relay is not None
        if not self.set_local_relay(event.output_name, on):
            self._ignore("relay_board_not_connected", event, event.output_name)

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

    # --- trust: local boards, bounds, the log ------------------------------

    def _is_local_board(self, board: str) -> bool:
        return self.owns_board(board) or board in self.local_boards

    def _is_local(self, name: str) -> bool:
        """``<board>.<name>`` (meter, sensor, relay, qualified reader) of a
        board of this daemon, connected now or ever named here."""
        board, dot, _ = name.partition(".")
        return bool(dot) and self._is_local_board(board)

    def _has_tap(self, meter: str) -> bool:
        return self.core is not None and meter in self.core.taps

    def _admit(self, kind: str, event: events.Event, name: str) -> bool:
        """A name from the bus the core will remember: at most so many."""
        names = self._remote_names[kind]
        if name in names:
            return True
        limit = MAX_UNKNOWN_AUTH_DEVICES if kind == "auth_device" else MAX_REMOTE_NAMES
        if len(names) >= limit:
            self._ignore(f"too_many_{kind}s", event, name)
            return False
        names.add(name)
        return True

    def _ignore(self, reason: str, event: events.Event, name: str) -> None:
        self.stats.ignored[reason] = self.stats.ignored.get(reason, 0) + 1
        if not self._log_limit.allow(reason, self.clock.seconds()):
            return
        hint = ""
        if reason.startswith("local_") and self.local_boards_path is not None:
            hint = _LOCAL_HINT.format(path=self.local_boards_path)
        log.warn(
            "Kegnet: ignored {event} for {name} from {origin}: {why}{hint}{more}",
            event=event.NAME,
            name=events.shown(name),
            origin=events.shown(event.origin) if event.origin else "a client without origin",
            why=_WHY[reason],
            hint=hint,
            more=self._log_limit.note(reason),
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

    # --- boards ever seen here ----------------------------------------------

    def _load_local_boards(self) -> set[str]:
        path = self.local_boards_path
        if path is None:
            return set()
        try:
            boards = json.loads(path.read_text())["boards"]
            if not isinstance(boards, list) or not all(isinstance(b, str) for b in boards):
                raise ValueError("'boards' is not a list of names")
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error(
                "Cannot read {path} ({error}): boards named here before are taken as this "
                "daemon's again only once they connect",
                path=str(path),
                error=e,
            )
            return set()
        return set(boards[:MAX_LOCAL_BOARDS])

    def _remember(self, board: str) -> None:
        """A board named here: authoritative from now on, across restarts."""
        if board in self.local_boards or len(self.local_boards) >= MAX_LOCAL_BOARDS:
            return
        self.local_boards.add(board)
        path = self.local_boards_path
        if path is None:
            return
        data = json.dumps({"version": 1, "boards": sorted(self.local_boards)}, indent=1)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            log.info(
                "Kegnet: {board} is a board of this daemon; events naming it from other "
                "programs are ignored from now on (remembered in {path})",
                board=board,
                path=str(path),
            )
        except OSError as e:
            log.error(
                "Cannot write {path} ({error}): {board} is this daemon's board only while "
                "it is connected",
                path=str(path),
                error=e,
                board=board,
            )
