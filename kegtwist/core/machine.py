"""The pure heart of kegtwist: ticks to pours to drinks, tokens to valves.

:class:`Core` takes inputs with the time they happened and returns effects;
it holds no Deferreds, reads no clock and calls nothing.  Two times go in:
``mono``, a monotonic clock for durations and deadlines (a Pi without an RTC
may jump its wall clock), and ``wall``, Unix seconds for the timestamps
reported.  :meth:`Core.next_deadline` says when the core next wants
:meth:`Core.advance`; the adapter schedules exactly that, no polling.

``Core`` only dispatches: each input goes to the part whose rules it
concerns, and the effects are collected in order.  The parts, and where
their rules are written down:

* :mod:`kegtwist.core.meters`: readings to ticks (baselines, wraps, resets,
  garbage, fresh boots).
* :mod:`kegtwist.core.pours`: pours and the drinks they make;
  :mod:`kegtwist.core.held`: drinks of untapped meters waiting for a tap.
* :mod:`kegtwist.core.tokens`: lookups, authorisation, offline policy.
* :mod:`kegtwist.core.valves`: valve refresh, cleaning by hand, boards
  (re)connecting; :mod:`kegtwist.core.relays` keeps what was commanded.
* :mod:`kegtwist.core.thermo`: temperatures and silent sensors.
* :mod:`kegtwist.core.timers`: the deadlines; :mod:`kegtwist.core.checkpoint`:
  what survives a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kegtwist.core import checkpoint as checkpoint_format
from kegtwist.core.config import CoreConfig, TapConfig
from kegtwist.core.held import Held, HeldDrink
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)
from kegtwist.core.meters import Meters, MeterState
from kegtwist.core.model import (
    CoreInput,
    Effect,
    FlowRequest,
    ManualValve,
    PourSnapshot,
    PourUpdate,
    RegisterController,
    TapsChanged,
    TokenLookupResult,
)
from kegtwist.core.pours import Pour, Pours
from kegtwist.core.relays import Relays
from kegtwist.core.stats import CoreStats
from kegtwist.core.thermo import Sensor, Thermo
from kegtwist.core.timers import TimerKind, Timers
from kegtwist.core.tokens import PendingLookup, Tokens
from kegtwist.core.valves import Valves

__all__ = ["Core", "CoreStats"]

TimerHandler = Callable[[str, float, float, list[Effect]], None]


@dataclass
class Core:
    """Inputs in, effects out.  See the module docstring for the parts."""

    config: CoreConfig = field(default_factory=CoreConfig)
    first_flow_id: int = 1
    stats: CoreStats = field(default_factory=CoreStats)

    def __post_init__(self) -> None:
        settings = self.config.pours
        self.taps: dict[str, TapConfig] = {t.meter: t for t in self.config.taps}
        self.boards: set[str] = set()
        self._timers = Timers()
        self._relays = Relays()
        self._meters = Meters(settings, self.stats)
        self._held = Held(settings, self.stats, self._timers)
        self._pours = Pours(
            settings, self.stats, self._timers, self._relays, self._held, self.first_flow_id
        )
        self._valves = Valves(settings, self._timers, self._relays, self._pours)
        self._tokens = Tokens(self.config.auth, self.stats, self._pours, self._valves, self._relays)
        self._thermo = Thermo(self.config.thermo, self.stats, self._timers)
        self._on_timer: dict[TimerKind, TimerHandler] = {
            "pour": self._pours.idle_due,
            "ghost": self._pours.ghost_due,
            "hold": self._held.expire_due,
            "valve": self._valves.refresh_pour,
            "clean": self._valves.refresh_cleaning,
            "clean_guard": self._valves.cleaning_guard,
            "sensor": self._thermo.silent_due,
        }

    # --- public API ---------------------------------------------------

    def handle(self, item: CoreInput, mono: float, wall: float) -> list[Effect]:
        """Apply one input at time (mono, wall); due timers run first."""
        out: list[Effect] = []
        self._run_timers(mono, out)
        if type(item) is MeterReading:
            delta = self._meters.read(item, out)
            if delta > 0:
                self._pours.add_ticks(item.meter_name, delta, self.taps, mono, wall, out)
        elif isinstance(item, TokenEvent):
            self._tokens.event(item, self.taps, out)
        elif isinstance(item, TokenLookupResult):
            self._tokens.lookup_result(item, self.taps, mono, wall, out)
        elif isinstance(item, ThermoReading):
            self._thermo.reading(item, mono, wall, out)
        elif isinstance(item, FlowRequest):
            self._flow_request(item, mono, wall, out)
        elif isinstance(item, BoardConnected):
            self.boards.add(item.board)
            out.append(RegisterController(item.board))
            self._meters.board_connected(item.board, item.uptime_seconds, out)
            self._valves.board_connected(item.board, self.taps, out)
        elif isinstance(item, BoardGone):
            self.boards.discard(item.board)
        elif isinstance(item, TapsChanged):
            self.taps = {t.meter: t for t in item.taps}
            self._taps_known(out)
        elif isinstance(item, ManualValve):
            self._valves.manual(item, self.taps, mono, out)
        elif isinstance(item, RelayStatus):
            pass  # informational: the core tracks what it commanded
        return out

    def advance(self, mono: float, wall: float) -> list[Effect]:
        """Run whatever timers are due at ``mono``."""
        out: list[Effect] = []
        self._run_timers(mono, out)
        return out

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`advance` has work, if any."""
        return self._timers.next_deadline()

    def shutdown(self, mono: float, wall: float) -> list[Effect]:
        """End every pour (recorded as usual) and close every valve we opened."""
        out: list[Effect] = []
        self._valves.stop_all_cleaning(out)
        self._pours.end_all("shutdown", out)
        self._relays.close_all("shutdown", out)
        return out

    def pour_snapshots(self) -> list[PourSnapshot]:
        return [p.snapshot() for p in self._pours.active.values()]

    # --- crash safety -----------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """What must survive a crash: meter baselines, open pours, held drinks.

        Plain JSON-able values (:mod:`kegtwist.core.checkpoint`).
        """
        pours = self._pours
        return checkpoint_format.dump(
            pours.next_flow_id,
            self._meters.baselines(),
            pours.active.values(),
            self._held.drinks.values(),
        )

    def restore(self, state: dict[str, Any], mono: float, wall: float) -> list[Effect]:
        """Take up where a crashed process left off.

        Baselines come back, so the board's cumulative count carries every
        tick poured while we were down.  Open pours come back with their
        ticks and drinker; their idle time counts from their last tick (on
        the wall clock), so a pour that went idle meanwhile ends at once and
        is recorded.  Valves are not reopened: the drinker presents the token
        again.
        """
        restored = checkpoint_format.load(state, mono, wall)
        out: list[Effect] = []
        pours = self._pours
        pours.next_flow_id = max(pours.next_flow_id, restored.next_flow_id)
        self._meters.restore(restored.baselines)
        for pour in restored.pours:
            pours.resume(pour, out)
        for held in restored.held:
            self._held.hold(held.drink, held.end_mono)
        self._taps_known(out)
        self._run_timers(mono, out)
        return out

    # --- what the parts hold (the status screen, the bus bridge, tests) ----

    @property
    def pours(self) -> dict[str, Pour]:
        """Pours in progress, by meter."""
        return self._pours.active

    @property
    def held(self) -> dict[int, HeldDrink]:
        """Drinks waiting for a tap, by flow id."""
        return self._held.drinks

    @property
    def meters(self) -> dict[str, MeterState]:
        return self._meters.states

    @property
    def fresh_boards(self) -> set[str]:
        return self._meters.fresh_boards

    @property
    def pending(self) -> dict[tuple[str, str], PendingLookup]:
        """Token lookups in flight, by (auth_device, token)."""
        return self._tokens.pending

    @property
    def confirmed(self) -> dict[tuple[str, str], tuple[str, float]]:
        return self._tokens.confirmed

    @property
    def open_relays(self) -> set[str]:
        """Relays the core commanded on and has not closed."""
        return self._relays.open

    @property
    def cleaning(self) -> dict[str, str]:
        """Meter -> relay, for valves open by hand."""
        return self._relays.cleaning

    @property
    def sensors(self) -> dict[str, Sensor]:
        return self._thermo.sensors

    @property
    def untapped_warned(self) -> set[str]:
        return self._pours.untapped_warned

    # --- internals ------------------------------------------------------------

    def _flow_request(self, item: FlowRequest, mono: float, wall: float, out: list[Effect]) -> None:
        pour = self._pours.active.get(item.meter_name)
        if item.request == "stop_flow":
            if pour is not None:
                self._pours.end(item.meter_name, "stopped", out)
        elif item.request == "start_flow":
            tap = self.taps.get(item.meter_name)
            if pour is None and tap is not None:
                self._pours.start(tap, mono, wall, out)
        elif pour is not None:
            out.append(PourUpdate(pour.snapshot(), "active"))

    def _taps_known(self, out: list[Effect]) -> None:
        """Untapped pours get their tap, held drinks are recorded."""
        self._pours.take_taps(self.taps)
        self._held.record_tapped(self.taps, out)

    def _run_timers(self, mono: float, out: list[Effect]) -> None:
        for due in self._timers.due(mono):
            self._on_timer[due.kind](due.key, due.when, mono, out)
