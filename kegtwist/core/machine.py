"""The pure heart of kegtwist: ticks to pours to drinks, tokens to valves.

:class:`Core` takes inputs with the time they happened and returns effects;
it holds no Deferreds, reads no clock and calls nothing.  Two times go in:
``mono``, a monotonic clock for durations and deadlines (a Pi without an RTC
may jump its wall clock), and ``wall``, Unix seconds for the timestamps
reported.  :meth:`Core.next_deadline` says when the core next wants
:meth:`Core.advance`; the adapter schedules exactly that, no polling.

Rules (see ``docs/pour-rules.md``), and the decisions taken
where the sources are silent:

* One pour per tap.  Ticks on a tap with no pour start an anonymous one;
  anonymous pours never open a valve.
* A pour ends when idle longer than its limit after its last tick (or after
  its start, for an authorised pour that has not flowed yet), on a stop
  request, when its captive token is removed, after ``max_pour_seconds`` (the
  ghost-pour guard), or when its drinker's ``max_volume_ml`` is reached.
  Duration is measured to the last tick, never to the timeout.
* A token mid-pour: an anonymous pour is adopted whole (volume before the
  token does not count toward the drinker's limit); a different drinker's
  pour is split, the first part staying with the first drinker.
* Removing a captive token also cancels its pending lookup, so a late answer
  opens nothing.
* Volume is ticks x the tap's ``ml_per_tick``; the pour keeps the tap it
  started on even if the tap table changes under it.
* Flow ids count up from ``first_flow_id``; the adapter seeds it from the
  wall clock so ids stay unique across restarts.
* Ticks on a meter with no tap are never dropped: they make an *untapped*
  pour like any other (anonymous, no valve, volume unknown).  When it ends
  its drink is *held* (in the checkpoint) until a tap for the meter is
  known, then recorded with every tick; after ``untapped_hold_hours`` it
  becomes a drink with a ``dead_reason`` (a dead letter for the operator).
  A pour in progress gets its tap as soon as one is known.
* A board whose hello reports less than ``fresh_boot_seconds`` of uptime
  has just booted and counted from 0: its meters' baselines become 0, so a
  first report of N ticks is N ticks poured (still subject to
  ``max_delta_ticks``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kegtwist.core.config import AuthDevice, CoreConfig, TapConfig
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)
from kegtwist.core.meters import MeterState
from kegtwist.core.model import (
    CoreInput,
    Effect,
    FlowRequest,
    LookupToken,
    ManualValve,
    Notice,
    PourSnapshot,
    PourUpdate,
    RecordDrink,
    RecordTemperature,
    RegisterController,
    SensorState,
    SetRelay,
    TapsChanged,
    TokenLookupResult,
)
from kegtwist.ratelimit import RateLimiter

TokenKey = tuple[str, str]


@dataclass(slots=True)
class CoreStats:
    """Counters for the status screen and for tests."""

    readings: int = 0
    garbage_readings: int = 0
    resets: int = 0
    wraps: int = 0
    untapped_ticks: int = 0
    pours_started: int = 0
    drinks: int = 0
    pours_not_recorded: int = 0
    ghost_pours: int = 0
    tokens_denied: int = 0
    lookups_failed: int = 0
    temperatures_recorded: int = 0
    temperatures_dropped: int = 0
    cleaning_ticks: int = 0


@dataclass(slots=True)
class Pour:
    flow_id: int
    tap: TapConfig
    start_mono: float
    start_wall: float
    idle_seconds: float
    last_tick_mono: float | None = None
    last_tick_wall: float | None = None
    ticks: int = 0
    username: str | None = None
    auth_device: str | None = None
    token: TokenKey | None = None
    captive: bool = False
    max_volume_ml: float | None = None
    ticks_at_auth: int = 0
    valve_open: bool = False
    last_progress_mono: float | None = None
    cleaning: bool = False
    untapped: bool = False  # no tap known yet: ``tap`` is a placeholder

    @property
    def meter_name(self) -> str:
        return self.tap.meter

    @property
    def volume_ml(self) -> float:
        return self.ticks * self.tap.ml_per_tick

    def idle_deadline(self) -> float:
        base = self.last_tick_mono if self.last_tick_mono is not None else self.start_mono
        return base + self.idle_seconds

    def snapshot(self) -> PourSnapshot:
        last_mono = self.last_tick_mono if self.last_tick_mono is not None else self.start_mono
        last_wall = self.last_tick_wall if self.last_tick_wall is not None else self.start_wall
        return PourSnapshot(
            flow_id=self.flow_id,
            meter_name=self.meter_name,
            username=self.username,
            auth_device=self.auth_device,
            ticks=self.ticks,
            volume_ml=self.volume_ml,
            start_wall=self.start_wall,
            last_activity_wall=last_wall,
            duration_seconds=max(0.0, last_mono - self.start_mono),
        )


@dataclass(slots=True)
class HeldDrink:
    """A pour that ended on a meter with no tap, waiting for one."""

    drink: RecordDrink
    end_mono: float


@dataclass(slots=True)
class PendingLookup:
    meters: tuple[str, ...]
    device: AuthDevice


@dataclass(slots=True)
class Sensor:
    last_seen_mono: float
    last_recorded_mono: float | None = None
    lost: bool = False


@dataclass(slots=True)
class _Timer:
    """A heap entry; stale ones are skipped or re-pushed when popped."""

    when: float
    seq: int
    kind: str  # pour, valve, sensor
    key: str
    generation: int

    def __lt__(self, other: _Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


@dataclass
class Core:
    """Inputs in, effects out.  See the module docstring for the rules."""

    config: CoreConfig = field(default_factory=CoreConfig)
    first_flow_id: int = 1
    stats: CoreStats = field(default_factory=CoreStats)

    def __post_init__(self) -> None:
        self.taps: dict[str, TapConfig] = {t.meter: t for t in self.config.taps}
        self.meters: dict[str, MeterState] = {}
        self.pours: dict[str, Pour] = {}
        self.pending: dict[TokenKey, PendingLookup] = {}
        self.confirmed: dict[TokenKey, tuple[str, float]] = {}  # username, mono
        self.sensors: dict[str, Sensor] = {}
        self.boards: set[str] = set()
        self.open_relays: set[str] = set()
        self.cleaning: dict[str, str] = {}  # meter -> relay opened by hand
        self.held: dict[int, HeldDrink] = {}  # flow id -> drink without a tap
        self.untapped_warned: set[str] = set()
        self.fresh_boards: set[str] = set()  # booted just now: meters start at 0
        # A reader repeating a refused token warns once a minute, not per frame.
        self._token_warnings = RateLimiter(interval=60.0, max_keys=256)
        self._next_flow_id = self.first_flow_id
        self._timers: list[_Timer] = []
        self._seq = 0
        self._generation: dict[tuple[str, str], int] = {}

    # --- public API ---------------------------------------------------

    def handle(self, item: CoreInput, mono: float, wall: float) -> list[Effect]:
        """Apply one input at time (mono, wall); due timers run first."""
        out: list[Effect] = []
        if self._timers and self._timers[0].when <= mono:
            self._run_timers(mono, wall, out)
        if type(item) is MeterReading:
            self._meter(item, mono, wall, out)
        elif isinstance(item, TokenEvent):
            self._token(item, mono, wall, out)
        elif isinstance(item, TokenLookupResult):
            self._lookup_result(item, mono, wall, out)
        elif isinstance(item, ThermoReading):
            self._thermo(item, mono, wall, out)
        elif isinstance(item, FlowRequest):
            self._flow_request(item, mono, wall, out)
        elif isinstance(item, BoardConnected):
            self._board_connected(item, out)
        elif isinstance(item, BoardGone):
            self.boards.discard(item.board)
        elif isinstance(item, TapsChanged):
            self.taps = {t.meter: t for t in item.taps}
            self._tap_untapped(out)
        elif isinstance(item, ManualValve):
            self._manual_valve(item, mono, wall, out)
        elif isinstance(item, RelayStatus):
            pass  # informational: the core tracks what it commanded
        return out

    def advance(self, mono: float, wall: float) -> list[Effect]:
        """Run whatever timers are due at ``mono``."""
        out: list[Effect] = []
        self._run_timers(mono, wall, out)
        return out

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`advance` has work, if any."""
        return self._timers[0].when if self._timers else None

    def shutdown(self, mono: float, wall: float) -> list[Effect]:
        """End every pour (recorded as usual) and close every valve we opened."""
        out: list[Effect] = []
        for meter in list(self.cleaning):
            self._stop_cleaning(meter, out)
        for meter in list(self.pours):
            self._end_pour(meter, "shutdown", out)
        for relay in sorted(self.open_relays):
            out.append(SetRelay(relay, False, "shutdown"))
        self.open_relays.clear()
        return out

    def pour_snapshots(self) -> list[PourSnapshot]:
        return [p.snapshot() for p in self.pours.values()]

    # --- crash safety -----------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """What must survive a crash: meter baselines and open pours.

        Plain JSON-able values.  Times are stored as wall clock, since the
        monotonic clock of this process means nothing to the next one.
        """
        pours = []
        for pour in self.pours.values():
            snap = pour.snapshot()
            pours.append(
                {
                    "flow_id": pour.flow_id,
                    "tap": {
                        "meter": pour.tap.meter,
                        "ml_per_tick": pour.tap.ml_per_tick,
                        "relay": pour.tap.relay,
                    },
                    "start_wall": pour.start_wall,
                    "last_tick_wall": pour.last_tick_wall,
                    "duration_seconds": snap.duration_seconds,
                    "ticks": pour.ticks,
                    "idle_seconds": pour.idle_seconds,
                    "username": pour.username,
                    "auth_device": pour.auth_device,
                    "token": list(pour.token) if pour.token else None,
                    "captive": pour.captive,
                    "max_volume_ml": pour.max_volume_ml,
                    "ticks_at_auth": pour.ticks_at_auth,
                    "untapped": pour.untapped,
                }
            )
        return {
            "version": 1,
            "next_flow_id": self._next_flow_id,
            "meters": {name: m.last for name, m in self.meters.items() if m.last is not None},
            "pours": pours,
            "held": [_drink_state(h.drink) for h in self.held.values()],
        }

    def restore(self, state: dict[str, Any], mono: float, wall: float) -> list[Effect]:
        """Take up where a crashed process left off.

        Baselines come back, so the board's cumulative count carries every
        tick poured while we were down.  Open pours come back with their
        ticks and drinker; their idle time counts from their last tick (on
        the wall clock), so a pour that went idle meanwhile ends at once and
        is recorded.  Valves are not reopened: the drinker presents the token
        again.
        """
        out: list[Effect] = []
        self._next_flow_id = max(self._next_flow_id, int(state.get("next_flow_id", 0)))
        for name, last in state.get("meters", {}).items():
            self.meters[name] = MeterState(last=int(last))
        for p in state.get("pours", []):
            tap_data = p["tap"]
            untapped = bool(p.get("untapped"))
            tap = TapConfig(
                tap_data["meter"], float(tap_data["ml_per_tick"]), tap_data.get("relay")
            )
            start_wall = float(p["start_wall"])
            last_wall = p.get("last_tick_wall")
            # Map wall times onto this process's monotonic clock; never into the future.
            start_mono = mono - max(0.0, wall - start_wall)
            last_mono = None if last_wall is None else mono - max(0.0, wall - float(last_wall))
            token = p.get("token")
            pour = Pour(
                flow_id=int(p["flow_id"]),
                tap=tap,
                start_mono=start_mono,
                start_wall=start_wall,
                idle_seconds=float(p["idle_seconds"]),
                last_tick_mono=last_mono,
                last_tick_wall=None if last_wall is None else float(last_wall),
                ticks=int(p["ticks"]),
                username=p.get("username"),
                auth_device=p.get("auth_device"),
                token=(token[0], token[1]) if token else None,
                captive=bool(p.get("captive")),
                max_volume_ml=p.get("max_volume_ml"),
                ticks_at_auth=int(p.get("ticks_at_auth", 0)),
                last_progress_mono=mono,
                untapped=untapped,
            )
            if last_mono is not None:
                # Keep the measured duration even if the wall clock moved.
                pour.start_mono = last_mono - float(p.get("duration_seconds", 0.0))
            self.pours[tap.meter] = pour
            self._arm("pour", tap.meter, pour.idle_deadline())
            self._arm("ghost", tap.meter, pour.start_mono + self.config.pours.max_pour_seconds)
            out.append(
                Notice(
                    "info",
                    "Resumed pour {flow_id} on {meter}: {ticks} ticks so far",
                    {"flow_id": pour.flow_id, "meter": tap.meter, "ticks": pour.ticks},
                )
            )
        for d in state.get("held", []):
            drink = RecordDrink(**d)
            end_mono = mono - max(0.0, wall - drink.end_wall)
            self._hold(drink, end_mono)
        self._tap_untapped(out)
        self._run_timers(mono, wall, out)
        return out

    # --- meters and pours ----------------------------------------------

    def _meter(self, item: MeterReading, mono: float, wall: float, out: list[Effect]) -> None:
        stats = self.stats
        stats.readings += 1
        meter = self.meters.get(item.meter_name)
        if meter is None:
            fresh = item.meter_name.rpartition(".")[0] in self.fresh_boards
            meter = self.meters[item.meter_name] = MeterState(last=0 if fresh else None)
        delta, verdict = meter.update(item.ticks, self.config.pours.max_delta_ticks)
        if verdict == "garbage":
            stats.garbage_readings += 1
            out.append(
                Notice(
                    "warn",
                    "Discarded reading {ticks} of {meter}: a jump of more than {limit} ticks",
                    {
                        "ticks": item.ticks,
                        "meter": item.meter_name,
                        "limit": self.config.pours.max_delta_ticks,
                    },
                )
            )
            return
        if verdict == "reset":
            stats.resets += 1
            out.append(
                Notice(
                    "info",
                    "{meter} restarted from {ticks} (board reset)",
                    {"meter": item.meter_name, "ticks": item.ticks},
                )
            )
        elif verdict == "wrap":
            stats.wraps += 1
        if delta <= 0:
            return
        pour = self.pours.get(item.meter_name)
        if pour is None:
            tap = self.taps.get(item.meter_name)
            if tap is None:
                pour = self._start_untapped_pour(item.meter_name, mono, wall, out)
            else:
                pour = self._start_pour(tap, mono, wall, out)
        if pour.untapped:
            stats.untapped_ticks += delta
        pour.ticks += delta
        pour.last_tick_mono = mono
        pour.last_tick_wall = wall
        limit = pour.max_volume_ml
        if limit is not None and (pour.ticks - pour.ticks_at_auth) * pour.tap.ml_per_tick >= limit:
            self._end_pour(pour.meter_name, "max_volume", out)
            return
        last = pour.last_progress_mono
        if last is None or mono - last >= self.config.pours.progress_seconds:
            pour.last_progress_mono = mono
            out.append(PourUpdate(pour.snapshot(), "active"))

    def _start_pour(self, tap: TapConfig, mono: float, wall: float, out: list[Effect]) -> Pour:
        pour = Pour(
            flow_id=self._next_flow_id,
            tap=tap,
            start_mono=mono,
            start_wall=wall,
            idle_seconds=self.config.pours.idle_seconds,
            last_progress_mono=mono,
            cleaning=tap.meter in self.cleaning,
        )
        self._next_flow_id += 1
        self.pours[tap.meter] = pour
        self.stats.pours_started += 1
        self._arm("pour", tap.meter, pour.idle_deadline())
        self._arm("ghost", tap.meter, mono + self.config.pours.max_pour_seconds)
        out.append(PourUpdate(pour.snapshot(), "active"))
        return pour

    def _start_untapped_pour(self, meter: str, mono: float, wall: float, out: list[Effect]) -> Pour:
        """Ticks with no tap: a pour all the same, its drink held for a tap."""
        pour = self._start_pour(TapConfig(meter, 0.0), mono, wall, out)
        pour.untapped = True
        if meter not in self.untapped_warned:
            self.untapped_warned.add(meter)
            out.append(
                Notice(
                    "warn",
                    "Ticks on {meter}, which has no tap: pour {flow_id} is kept and recorded once "
                    "a tap for {meter} is known (on the Kegbot Server or in [[taps]]); "
                    "after {hours:g} h it becomes a dead letter",
                    {
                        "meter": meter,
                        "flow_id": pour.flow_id,
                        "hours": self.config.pours.untapped_hold_hours,
                    },
                )
            )
        return pour

    def _hold(self, drink: RecordDrink, end_mono: float) -> None:
        self.held[drink.flow_id] = HeldDrink(drink, end_mono)
        self._arm(
            "hold", str(drink.flow_id), end_mono + self.config.pours.untapped_hold_hours * 3600
        )

    def _tap_untapped(self, out: list[Effect]) -> None:
        """Taps became known: untapped pours get theirs, held drinks are recorded."""
        for meter, pour in self.pours.items():
            tap = self.taps.get(meter)
            if pour.untapped and tap is not None:
                pour.tap = tap
                pour.untapped = False
        for flow_id, held in list(self.held.items()):
            drink = held.drink
            tap = self.taps.get(drink.meter_name)
            if tap is None:
                continue
            del self.held[flow_id]
            self._disarm("hold", str(flow_id))
            volume = drink.ticks * tap.ml_per_tick
            recorded = volume >= self.config.pours.min_volume_ml
            out.append(
                Notice(
                    "info",
                    "Held pour {flow_id} on {meter} now has a tap: {ticks} ticks, {volume_ml:.1f} mL{extra}",
                    {
                        "flow_id": flow_id,
                        "meter": drink.meter_name,
                        "ticks": drink.ticks,
                        "volume_ml": volume,
                        "extra": "" if recorded else ", not recorded (too small)",
                    },
                )
            )
            if recorded:
                self.stats.drinks += 1
                out.append(replace(drink, volume_ml=volume, post_volume=tap.post_volume))
            else:
                self.stats.pours_not_recorded += 1

    def _end_pour(self, meter: str, reason: str, out: list[Effect]) -> None:
        pour = self.pours.pop(meter)
        self._disarm("pour", meter)
        self._disarm("ghost", meter)
        self._disarm("valve", meter)
        if pour.valve_open and pour.tap.relay:
            pour.valve_open = False
            self.open_relays.discard(pour.tap.relay)
            out.append(SetRelay(pour.tap.relay, False, "pour_end"))
        snapshot = pour.snapshot()
        if pour.cleaning:
            self.stats.cleaning_ticks += pour.ticks
            out.append(PourUpdate(snapshot, "completed", "cleaning", False))
            out.append(
                Notice(
                    "info",
                    "Cleaning on {meter}: {ticks} ticks, {volume_ml:.0f} mL (not a drink)",
                    {"meter": meter, "ticks": pour.ticks, "volume_ml": snapshot.volume_ml},
                )
            )
            return
        drink = RecordDrink(
            flow_id=pour.flow_id,
            meter_name=meter,
            ticks=pour.ticks,
            volume_ml=snapshot.volume_ml,
            username=pour.username,
            auth_device=pour.auth_device,
            start_wall=snapshot.start_wall,
            end_wall=snapshot.last_activity_wall,
            duration_seconds=snapshot.duration_seconds,
            reason=reason,
            post_volume=pour.tap.post_volume,
        )
        if pour.untapped:
            out.append(PourUpdate(snapshot, "completed", reason, False, held=True))
            if pour.ticks > 0:
                end_mono = pour.last_tick_mono if pour.last_tick_mono is not None else pour.start_mono
                self._hold(drink, end_mono)
            return
        recorded = pour.ticks > 0 and snapshot.volume_ml >= self.config.pours.min_volume_ml
        out.append(PourUpdate(snapshot, "completed", reason, recorded))
        if recorded:
            self.stats.drinks += 1
            out.append(drink)
        else:
            self.stats.pours_not_recorded += 1

    def _flow_request(self, item: FlowRequest, mono: float, wall: float, out: list[Effect]) -> None:
        pour = self.pours.get(item.meter_name)
        if item.request == "stop_flow":
            if pour is not None:
                self._end_pour(item.meter_name, "stopped", out)
        elif item.request == "start_flow":
            tap = self.taps.get(item.meter_name)
            if pour is None and tap is not None:
                self._start_pour(tap, mono, wall, out)
        elif pour is not None:
            out.append(PourUpdate(pour.snapshot(), "active"))

    # --- tokens -----------------------------------------------------------

    def _token(self, item: TokenEvent, mono: float, wall: float, out: list[Effect]) -> None:
        key = (item.auth_device, item.token_value)
        device = self.config.auth.device(item.auth_device)
        if item.present:
            if item.meter_name is not None:
                meters: tuple[str, ...] = (item.meter_name,)
            elif device.taps is not None:
                meters = device.taps
            else:
                meters = tuple(self.taps)
            if key not in self.pending:
                out.append(LookupToken(item.auth_device, item.token_value))
            self.pending[key] = PendingLookup(meters, device)
            return
        if not device.captive:
            return  # a contactless card leaves at once; idle ends the pour
        self.pending.pop(key, None)
        for meter, pour in list(self.pours.items()):
            if pour.token == key and pour.captive:
                self._end_pour(meter, "token_removed", out)

    def _lookup_result(
        self, item: TokenLookupResult, mono: float, wall: float, out: list[Effect]
    ) -> None:
        key = (item.auth_device, item.token_value)
        pending = self.pending.pop(key, None)
        if pending is None:
            return  # removed meanwhile, or an answer nobody asked for
        fields: dict[str, object] = {"device": item.auth_device, "token": item.token_value}
        warn: Literal["warn", "debug"] = (
            "warn" if self._token_warnings.allow(f"{key[0]}/{key[1]}", mono) else "debug"
        )
        username: str | None
        if item.error is not None:
            self.stats.lookups_failed += 1
            fields["error"] = item.error
            cached = self.confirmed.get(key)
            auth = self.config.auth
            if (
                auth.offline_policy == "cached"
                and cached is not None
                and mono - cached[1] <= auth.offline_cache_seconds
            ):
                username = cached[0]
                fields["username"] = username
                out.append(
                    Notice(
                        warn,
                        "Token {device}/{token}: server unavailable ({error}); opening for {username}, confirmed earlier (offline_policy cached)",
                        fields,
                    )
                )
            else:
                self.stats.tokens_denied += 1
                fields["policy"] = auth.offline_policy
                out.append(
                    Notice(
                        warn,
                        "Token {device}/{token}: server unavailable ({error}); opening nothing (offline_policy {policy})",
                        fields,
                    )
                )
                return
        elif item.username is None or not item.enabled:
            self.stats.tokens_denied += 1
            self.confirmed.pop(key, None)
            why = (
                "is disabled"
                if item.username is not None
                else "belongs to nobody (unknown or unassigned)"
            )
            fields["why"] = why
            out.append(Notice(warn, "Token {device}/{token} {why}; opening nothing", fields))
            return
        else:
            username = item.username
            self.confirmed[key] = (username, mono)
        for meter in pending.meters:
            tap = self.taps.get(meter)
            if tap is not None:
                self._authorize(tap, username, key, pending.device, mono, wall, out)

    def _authorize(
        self,
        tap: TapConfig,
        username: str,
        key: TokenKey,
        device: AuthDevice,
        mono: float,
        wall: float,
        out: list[Effect],
    ) -> None:
        if tap.meter in self.cleaning:
            out.append(
                Notice(
                    "warn",
                    "Token for {username} ignored on {meter}: the tap is being cleaned",
                    {"username": username, "meter": tap.meter},
                )
            )
            return
        pour = self.pours.get(tap.meter)
        if pour is not None and pour.username is not None and pour.username != username:
            self._end_pour(tap.meter, "replaced", out)
            pour = None
        if pour is None:
            pour = self._start_pour(tap, mono, wall, out)
        if pour.username is None:
            pour.ticks_at_auth = pour.ticks  # adopted: earlier volume is theirs, not their limit's
        pour.username = username
        pour.auth_device = key[0]
        pour.token = key
        pour.captive = device.captive
        pour.idle_seconds = device.idle_seconds
        pour.max_volume_ml = device.max_volume_ml
        self._arm("pour", tap.meter, pour.idle_deadline())
        out.append(PourUpdate(pour.snapshot(), "active"))
        if tap.relay and not pour.valve_open:
            pour.valve_open = True
            self.open_relays.add(tap.relay)
            out.append(SetRelay(tap.relay, True, "pour"))
            self._arm("valve", tap.meter, mono + self.config.pours.valve_refresh_seconds)

    def _manual_valve(self, item: ManualValve, mono: float, wall: float, out: list[Effect]) -> None:
        tap = next((t for t in self.taps.values() if t.relay == item.relay_name), None)
        if tap is None:
            out.append(
                Notice(
                    "warn", "No tap has relay {relay}; nothing opened", {"relay": item.relay_name}
                )
            )
            return
        meter = tap.meter
        if item.on:
            if meter in self.pours:
                self._end_pour(meter, "cleaning", out)
            self.cleaning[meter] = item.relay_name
            self.open_relays.add(item.relay_name)
            out.append(SetRelay(item.relay_name, True, "cleaning"))
            self._arm("clean", meter, mono + self.config.pours.valve_refresh_seconds)
            self._arm("clean_guard", meter, mono + self.config.pours.max_pour_seconds)
        elif meter in self.cleaning:
            self._stop_cleaning(meter, out)

    def _stop_cleaning(self, meter: str, out: list[Effect]) -> None:
        relay = self.cleaning.pop(meter)
        self._disarm("clean", meter)
        self._disarm("clean_guard", meter)
        if meter in self.pours:
            self._end_pour(meter, "cleaning", out)
        self.open_relays.discard(relay)
        out.append(SetRelay(relay, False, "cleaning"))

    # --- boards and temperatures --------------------------------------------

    def _board_connected(self, item: BoardConnected, out: list[Effect]) -> None:
        self.boards.add(item.board)
        out.append(RegisterController(item.board))
        prefix = item.board + "."
        uptime = item.uptime_seconds
        if uptime is not None and uptime < self.config.pours.fresh_boot_seconds:
            self.fresh_boards.add(item.board)
            for name, meter in self.meters.items():
                if name.startswith(prefix):
                    meter.last = 0
                    meter.suspect = None
            out.append(
                Notice(
                    "info",
                    "{board} booted {uptime:.1f} s ago: its meters count from 0",
                    {"board": item.board, "uptime": uptime},
                )
            )
        else:
            self.fresh_boards.discard(item.board)
        for tap in self.taps.values():
            if tap.relay and tap.relay.startswith(prefix):
                pour = self.pours.get(tap.meter)
                keep_open = (pour is not None and pour.valve_open) or tap.meter in self.cleaning
                out.append(SetRelay(tap.relay, keep_open, "board_connected"))

    def _thermo(self, item: ThermoReading, mono: float, wall: float, out: list[Effect]) -> None:
        settings = self.config.thermo
        celsius = item.celsius
        if not settings.min_celsius <= celsius <= settings.max_celsius:
            self.stats.temperatures_dropped += 1
            out.append(
                Notice(
                    "debug",
                    "Dropped {sensor} reading {celsius} °C: out of range",
                    {"sensor": item.sensor_name, "celsius": celsius},
                )
            )
            return
        sensor = self.sensors.get(item.sensor_name)
        if sensor is None:
            sensor = self.sensors[item.sensor_name] = Sensor(mono)
        sensor.last_seen_mono = mono
        if sensor.lost:
            sensor.lost = False
            out.append(SensorState(item.sensor_name, False))
        self._arm("sensor", item.sensor_name, mono + settings.lost_after_seconds)
        last = sensor.last_recorded_mono
        if last is None or mono - last >= settings.record_interval_seconds:
            sensor.last_recorded_mono = mono
            self.stats.temperatures_recorded += 1
            out.append(RecordTemperature(item.sensor_name, celsius, wall))

    # --- timers -------------------------------------------------------------

    def _arm(self, kind: str, key: str, when: float) -> None:
        gen_key = (kind, key)
        generation = self._generation.get(gen_key, 0) + 1
        self._generation[gen_key] = generation
        self._seq += 1
        heapq.heappush(self._timers, _Timer(when, self._seq, kind, key, generation))

    def _disarm(self, kind: str, key: str) -> None:
        gen_key = (kind, key)
        if gen_key in self._generation:
            self._generation[gen_key] += 1

    def _run_timers(self, mono: float, wall: float, out: list[Effect]) -> None:
        timers = self._timers
        while timers and timers[0].when <= mono:
            timer = heapq.heappop(timers)
            if self._generation.get((timer.kind, timer.key)) != timer.generation:
                continue  # superseded or disarmed
            if timer.kind == "pour":
                pour = self.pours.get(timer.key)
                if pour is None:
                    continue
                deadline = pour.idle_deadline()
                if deadline > mono:  # ticks came since: check again later
                    self._arm("pour", timer.key, deadline)
                else:
                    self._end_pour(timer.key, "idle", out)
            elif timer.kind == "ghost":
                if timer.key in self.pours:
                    self.stats.ghost_pours += 1
                    out.append(
                        Notice(
                            "warn",
                            "Pour on {meter} ran {seconds:.0f} s: ended by the ghost-pour guard (max_pour_seconds)",
                            {"meter": timer.key, "seconds": self.config.pours.max_pour_seconds},
                        )
                    )
                    self._end_pour(timer.key, "max_duration", out)
            elif timer.kind == "valve":
                pour = self.pours.get(timer.key)
                if pour is not None and pour.valve_open and pour.tap.relay:
                    out.append(SetRelay(pour.tap.relay, True, "refresh"))
                    every = self.config.pours.valve_refresh_seconds
                    self._arm("valve", timer.key, max(timer.when + every, mono))
            elif timer.kind == "clean":
                relay = self.cleaning.get(timer.key)
                if relay is not None:
                    out.append(SetRelay(relay, True, "refresh"))
                    every = self.config.pours.valve_refresh_seconds
                    self._arm("clean", timer.key, max(timer.when + every, mono))
            elif timer.kind == "clean_guard":
                if timer.key in self.cleaning:
                    out.append(
                        Notice(
                            "warn",
                            "Valve of {meter} open by hand for {seconds:.0f} s: closed by the guard",
                            {"meter": timer.key, "seconds": self.config.pours.max_pour_seconds},
                        )
                    )
                    self._stop_cleaning(timer.key, out)
            elif timer.kind == "hold":
                held = self.held.pop(int(timer.key), None)
                if held is not None:
                    meter = held.drink.meter_name
                    out.append(
                        Notice(
                            "error",
                            "Pour {flow_id} on {meter} ({ticks} ticks) waited {hours:g} h for a "
                            "tap: kept as a dead letter (kegbot-outbox dead)",
                            {
                                "flow_id": held.drink.flow_id,
                                "meter": meter,
                                "ticks": held.drink.ticks,
                                "hours": self.config.pours.untapped_hold_hours,
                            },
                        )
                    )
                    out.append(replace(held.drink, dead_reason=f"no tap for {meter}"))
            elif timer.kind == "sensor":
                sensor = self.sensors.get(timer.key)
                if sensor is not None and not sensor.lost:
                    sensor.lost = True
                    out.append(SensorState(timer.key, True))


def _drink_state(drink: RecordDrink) -> dict[str, Any]:
    """A drink as plain JSON-able values, for the checkpoint."""
    return {name: getattr(drink, name) for name in RecordDrink.__dataclass_fields__}
