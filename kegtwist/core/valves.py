"""Valves: an authorised pour's, a tap opened by hand, a board (re)connecting.

Rules (``docs/pour-rules.md``, "Valves"):

* An authorised pour opens its tap's relay (if it has one) and re-commands
  it every ``valve_refresh_seconds`` (the board drops a relay 10 s after
  the last command); the pour closes it when it ends
  (:meth:`kegtwist.core.pours.Pours.end`).
* A board that connects, or reconnects, has each of its tap relays
  commanded closed, except a tap whose authorised pour (or hand cleaning)
  is still running, which is commanded open.
* Cleaning: an operator may open a tap's valve by hand (``ManualValve``).
  The tap's pour in progress ends first; what flows while the valve is
  open is a cleaning pour, counted and logged, never a drink; the valve is
  re-commanded like a pour's, and ``max_pour_seconds`` closes it if nobody
  does.  Closing it ends the cleaning pour.
* On shutdown cleaning stops, and every valve the core opened is closed
  (:meth:`kegtwist.core.relays.Relays.close_all`).
"""

from __future__ import annotations

from collections.abc import Mapping

from kegtwist.core.config import PourSettings, TapConfig
from kegtwist.core.model import Effect, ManualValve, Notice, SetRelay
from kegtwist.core.pours import Pour, Pours
from kegtwist.core.relays import Relays
from kegtwist.core.timers import Timers


class Valves:
    def __init__(
        self, settings: PourSettings, timers: Timers, relays: Relays, pours: Pours
    ) -> None:
        self.settings = settings
        self.timers = timers
        self.relays = relays
        self.pours = pours

    # --- an authorised pour's valve ---------------------------------------

    def open_for_pour(self, pour: Pour, relay: str, mono: float, out: list[Effect]) -> None:
        pour.valve_open = True
        self.relays.turn_on(relay, "pour", out)
        self.timers.arm("valve", pour.meter_name, mono + self.settings.valve_refresh_seconds)

    def refresh_pour(self, meter: str, when: float, mono: float, out: list[Effect]) -> None:
        pour = self.pours.active.get(meter)
        if pour is not None and pour.valve_open and pour.tap.relay:
            out.append(SetRelay(pour.tap.relay, True, "refresh"))
            every = self.settings.valve_refresh_seconds
            self.timers.arm("valve", meter, max(when + every, mono))

    # --- by hand ----------------------------------------------------------------

    def manual(
        self, item: ManualValve, taps: Mapping[str, TapConfig], mono: float, out: list[Effect]
    ) -> None:
        tap = next((t for t in taps.values() if t.relay == item.relay_name), None)
        if tap is None:
            out.append(
                Notice(
                    "warn", "No tap has relay {relay}; nothing opened", {"relay": item.relay_name}
                )
            )
            return
        meter = tap.meter
        if item.on:
            if meter in self.pours.active:
                self.pours.end(meter, "cleaning", out)
            self.relays.cleaning[meter] = item.relay_name
            self.relays.turn_on(item.relay_name, "cleaning", out)
            self.timers.arm("clean", meter, mono + self.settings.valve_refresh_seconds)
            self.timers.arm("clean_guard", meter, mono + self.settings.max_pour_seconds)
        elif meter in self.relays.cleaning:
            self.stop_cleaning(meter, out)

    def stop_cleaning(self, meter: str, out: list[Effect]) -> None:
        relay = self.relays.cleaning.pop(meter)
        self.timers.disarm("clean", meter)
        self.timers.disarm("clean_guard", meter)
        if meter in self.pours.active:
            self.pours.end(meter, "cleaning", out)
        self.relays.turn_off(relay, "cleaning", out)

    def stop_all_cleaning(self, out: list[Effect]) -> None:
        for meter in list(self.relays.cleaning):
            self.stop_cleaning(meter, out)

    def refresh_cleaning(self, meter: str, when: float, mono: float, out: list[Effect]) -> None:
        relay = self.relays.cleaning.get(meter)
        if relay is not None:
            out.append(SetRelay(relay, True, "refresh"))
            every = self.settings.valve_refresh_seconds
            self.timers.arm("clean", meter, max(when + every, mono))

    def cleaning_guard(self, meter: str, when: float, mono: float, out: list[Effect]) -> None:
        if meter in self.relays.cleaning:
            out.append(
                Notice(
                    "warn",
                    "Valve of {meter} open by hand for {seconds:.0f} s: closed by the guard",
                    {"meter": meter, "seconds": self.settings.max_pour_seconds},
                )
            )
            self.stop_cleaning(meter, out)

    # --- boards -------------------------------------------------------------------

    def board_connected(self, board: str, taps: Mapping[str, TapConfig], out: list[Effect]) -> None:
        """Command every relay of the board to what the core holds it at."""
        prefix = board + "."
        for tap in taps.values():
            if tap.relay and tap.relay.startswith(prefix):
                pour = self.pours.active.get(tap.meter)
                keep_open = (
                    pour is not None and pour.valve_open
                ) or tap.meter in self.relays.cleaning
                out.append(SetRelay(tap.relay, keep_open, "board_connected"))
