"""The Kegnet trust boundary: what a daemon believes from the bus.

Any client of the Redis server can publish, and every subscriber sees every
token presented (so tokens can be replayed).  :class:`TrustBoundary` turns
an event from another program into a core input, or ignores it:

* Boards of this daemon are authoritative: those connected now, and every
  board ever named here, remembered in ``<state_dir>/local_boards.json``
  (written atomically when a new board is named, read at start; a
  ``core``-role daemon has no boards and neither reads nor writes it, so a
  board that moved to a kegboard daemon elsewhere is heard there).  A bus
  event naming one of them is ignored: MeterUpdate of its meters,
  ThermoEvent of its sensors, ControllerConnectedEvent of it, FlowRequest
  ``start_flow``/``stop_flow`` for its meters (``report_status`` only
  reports: it passes), SetRelayOutputEvent for its relays (outside the
  ``kegboard`` role, :mod:`kegtwist.bus.bridge`), and TokenAuthEvent as
  follows.
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
* Every ignored event is counted per reason (:attr:`TrustBoundary.ignored`)
  and logged at most once per reason per minute, with the number held back.
* Whatever the bus can make the daemon remember is bounded: at most
  :data:`MAX_REMOTE_NAMES` meters without a tap, sensors and boards each,
  and :data:`MAX_UNKNOWN_AUTH_DEVICES` auth devices besides the configured
  ones; events naming more are ignored (``too_many_*``).  At most
  :data:`BUS_TOKENS_PER_MINUTE` tokens a minute are taken from the bus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kegtwist.core import Core, CoreInput, FlowRequest
from kegtwist.core.inputs import BoardConnected, MeterReading, ThermoReading, TokenEvent
from kegtwist.durable import write_atomic
from kegtwist.protocol import kegnet as events
from kegtwist.ratelimit import RateLimiter

ALL_TAPS = "__all_taps__"
LOCAL_BOARDS_FILE = "local_boards.json"
MAX_LOCAL_BOARDS = 64
IGNORE_LOG_INTERVAL = 60.0
MAX_REMOTE_NAMES = 32
"""Meters without a tap, sensors and boards heard from the bus, each."""
MAX_UNKNOWN_AUTH_DEVICES = 8
"""Auth devices heard from the bus besides the configured and Kegboard ones."""
KEGBOARD_AUTH_DEVICES = frozenset({"core.rfid", "core.onewire"})
BUS_TOKENS_PER_MINUTE = 60

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


class TrustBoundary:
    """The rules of the module docstring for one daemon.

    ``owns_board`` says whether a board is connected here now; ``core`` (read
    only: taps, readers' taps, pours) feeds the token rules; both may be
    replaced later (the bridge's attributes of the same names)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        owns_board: Callable[[str], bool] = lambda board: False,
        core: Core | None = None,
        local_boards_path: Path | None = None,
    ) -> None:
        self.clock = clock
        self.owns_board = owns_board
        self.core = core
        self.ignored: dict[str, int] = {}
        """Events ignored, by reason (fixed names)."""
        self._log_limit = RateLimiter(IGNORE_LOG_INTERVAL)
        self._token_limit = RateLimiter(60.0, burst=BUS_TOKENS_PER_MINUTE)
        self._remote_names: dict[str, set[str]] = {
            "meter": set(),
            "sensor": set(),
            "board": set(),
            "auth_device": set(),
        }
        self.local_boards_path = local_boards_path
        self.local_boards: set[str] = self._load_local_boards()

    # --- an event from the bus, as a core input or nothing ------------------

    def core_input(self, event: events.Event) -> CoreInput | None:
        if isinstance(event, events.MeterUpdate):
            name = event.meter_name
            if self.is_local(name):
                # Our own board's meter, reported by someone else: the serial
                # line is the truth, a second source would double-count.
                self.ignore("local_meter", event, name)
                return None
            if not self._has_tap(name) and not self._admit("meter", event, name):
                return None
            return MeterReading(name, event.reading)
        if isinstance(event, events.TokenAuthEvent):
            return self._token_input(event)
        if isinstance(event, events.ThermoEvent):
            name = event.sensor_name
            if self.is_local(name):
                self.ignore("local_sensor", event, name)
                return None
            if not self._admit("sensor", event, name):
                return None
            return ThermoReading(name, event.sensor_value)
        if isinstance(event, events.FlowRequest):
            if event.request != "report_status" and self.is_local(event.meter_name):
                self.ignore("local_flow_request", event, event.meter_name)
                return None
            return FlowRequest(event.meter_name, event.request)
        if isinstance(event, events.ControllerConnectedEvent):
            name = event.controller_name
            if self.is_local_board(name):
                self.ignore("local_controller", event, name)
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
            (meter is not None and self.is_local(meter))
            or ("." in device and self.is_local(device))
            or self._token_used_locally((device, value))
        ):
            self.ignore("local_token", event, meter or device)
            return None
        if meter is None and added:
            reach = self._token_reach(device)
            remote = [m for m in reach if not self.is_local(m)]
            if len(remote) < len(reach):
                if len(remote) != 1:
                    self.ignore("token_reaches_local_taps", event, device)
                    return None
                meter = remote[0]
        known = KEGBOARD_AUTH_DEVICES | set(self.core.config.auth.devices if self.core else ())
        if device not in known and not self._admit("auth_device", event, device):
            return None
        if added and not self._token_limit.allow("token", self.clock.seconds()):
            self.ignore("token_rate", event, device)
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
        if pending is not None and any(self.is_local(m) for m in pending.meters):
            return True
        return any(p.token == key and self.is_local(m) for m, p in core.pours.items())

    # --- local boards, bounds, the log --------------------------------------

    def is_local_board(self, board: str) -> bool:
        return self.owns_board(board) or board in self.local_boards

    def is_local(self, name: str) -> bool:
        """``<board>.<name>`` (meter, sensor, relay, qualified reader) of a
        board of this daemon, connected now or ever named here."""
        board, dot, _ = name.partition(".")
        return bool(dot) and self.is_local_board(board)

    def _has_tap(self, meter: str) -> bool:
        return self.core is not None and meter in self.core.taps

    def _admit(self, kind: str, event: events.Event, name: str) -> bool:
        """A name from the bus the core will remember: at most so many."""
        names = self._remote_names[kind]
        if name in names:
            return True
        limit = MAX_UNKNOWN_AUTH_DEVICES if kind == "auth_device" else MAX_REMOTE_NAMES
        if len(names) >= limit:
            self.ignore(f"too_many_{kind}s", event, name)
            return False
        names.add(name)
        return True

    def ignore(self, reason: str, event: events.Event, name: str) -> None:
        """Count ``event`` as ignored for ``reason`` (a key of ``_WHY``) and
        say so, at most once a minute per reason."""
        self.ignored[reason] = self.ignored.get(reason, 0) + 1
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

    # --- boards ever named here ---------------------------------------------

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

    def remember(self, board: str) -> None:
        """A board named here: authoritative from now on, across restarts."""
        if board in self.local_boards or len(self.local_boards) >= MAX_LOCAL_BOARDS:
            return
        self.local_boards.add(board)
        path = self.local_boards_path
        if path is None:
            return
        data = json.dumps({"version": 1, "boards": sorted(self.local_boards)}, indent=1)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, (data + "\n").encode())
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
