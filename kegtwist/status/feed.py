"""From what the daemon does to :class:`~kegtwist.status.hub.EventHub` events.

:class:`StatusFeed` has one method per place the daemon already tells
listeners something:

=============================  ==============================================
daemon                          feed method, and the events it publishes
=============================  ==============================================
``CoreService.listeners``       :meth:`~StatusFeed.core_effect`: ``pour``
                                (start, progress, end) from ``PourUpdate``;
                                ``drink`` (state ``logged``) from
                                ``RecordDrink``; ``valve`` from ``SetRelay``
                                (changes only, never the 2 s refreshes);
                                ``temperature`` from ``RecordTemperature``
the board service's sink         :meth:`~StatusFeed.board_input`: ``board``
                                from ``BoardConnected``/``BoardGone``;
                                ``valve`` (source ``board``) from
                                ``RelayStatus`` changes; ``temperature`` from
                                ``ThermoReading`` only where there is no core
                                (``--role kegboard``), at most one a minute
                                per sensor
``DeliveryService.listeners``   :meth:`~StatusFeed.drink_recorded`: ``drink``
                                (state ``recorded``, with the server's drink
                                id), and the delivery latency (end of pour to
                                recorded) into the histogram
server / Redis state changes    :meth:`~StatusFeed.server_state`,
                                :meth:`~StatusFeed.redis_state`: ``server``,
                                ``redis``
=============================  ==============================================

The composition (:mod:`kegtwist.daemon.compose`) gives each part these
methods as listeners when it builds it.  No method ever raises into the
daemon: a failure is counted (:attr:`StatusFeed.errors`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kegtwist.status.hub import EventHub

if TYPE_CHECKING:
    from kegtwist.status.metrics import Histogram

THERMO_FROM_BOARDS_SECONDS = 60.0
MAX_TRACKED = 256


class StatusFeed:
    """Turns daemon values into hub events (see the module docstring)."""

    def __init__(
        self,
        hub: EventHub,
        *,
        latency: Histogram | None = None,
        wall: Callable[[], float] = time.time,
        temperatures_from_boards: bool = False,
    ) -> None:
        self.hub = hub
        self.latency = latency
        self.wall = wall
        self.temperatures_from_boards = temperatures_from_boards
        self.errors = 0
        self._flows: OrderedDict[int, None] = OrderedDict()  # pours in progress seen
        self._commanded: dict[str, bool] = {}
        self._reported: dict[str, bool] = {}
        self._thermo_last: dict[str, float] = {}

    # --- the core ---------------------------------------------------------

    def core_effect(self, effect: Any) -> None:
        try:
            self._core_effect(effect)
        except Exception:
            self.errors += 1

    def _core_effect(self, effect: Any) -> None:
        from kegtwist.core import PourUpdate, RecordDrink, RecordTemperature, SetRelay

        if isinstance(effect, PourUpdate):
            self._pour(effect)
        elif isinstance(effect, RecordDrink):
            self.hub.publish(
                "drink",
                {
                    "state": "logged",
                    "flow_id": effect.flow_id,
                    "meter": effect.meter_name,
                    "username": effect.username,
                    "ticks": effect.ticks,
                    "volume_ml": round(effect.volume_ml, 3),
                    "started": round(effect.start_wall, 3),
                    "ended": round(effect.end_wall, 3),
                    "duration_seconds": round(effect.duration_seconds, 3),
                    "drink_id": None,
                    "dead_reason": effect.dead_reason,
                },
            )
        elif isinstance(effect, SetRelay):
            if self._commanded.get(effect.relay_name) == effect.on:
                return  # a refresh
            self._remember(self._commanded, effect.relay_name, effect.on)
            self.hub.publish(
                "valve",
                {
                    "relay": effect.relay_name,
                    "open": effect.on,
                    "reason": effect.reason,
                    "source": "command",
                },
            )
        elif isinstance(effect, RecordTemperature):
            self.hub.publish(
                "temperature",
                {"sensor": effect.sensor_name, "celsius": effect.celsius, "at": effect.wall},
            )

    def _pour(self, effect: Any) -> None:
        snap = effect.pour
        if effect.state == "completed":
            phase = "end"
            self._flows.pop(snap.flow_id, None)
        elif snap.flow_id in self._flows:
            phase = "progress"
        else:
            phase = "start"
            self._flows[snap.flow_id] = None
            while len(self._flows) > MAX_TRACKED:
                self._flows.popitem(last=False)
        data: dict[str, Any] = {
            "phase": phase,
            "flow_id": snap.flow_id,
            "meter": snap.meter_name,
            "username": snap.username,
            "ticks": snap.ticks,
            "volume_ml": round(snap.volume_ml, 3),
            "started": round(snap.start_wall, 3),
            "last_tick": round(snap.last_activity_wall, 3),
            "duration_seconds": round(snap.duration_seconds, 3),
        }
        if phase == "end":
            data["reason"] = effect.reason
            data["recorded"] = effect.recorded
            data["held"] = effect.held
        self.hub.publish("pour", data)

    # --- boards -------------------------------------------------------------

    def board_input(self, item: Any) -> None:
        try:
            self._board_input(item)
        except Exception:
            self.errors += 1

    def _board_input(self, item: Any) -> None:
        from kegtwist.core.inputs import BoardConnected, BoardGone, RelayStatus, ThermoReading

        if isinstance(item, BoardConnected):
            self.hub.publish(
                "board",
                {
                    "board": item.board,
                    "device": item.device,
                    "connected": True,
                    "firmware": item.firmware_version,
                },
            )
        elif isinstance(item, BoardGone):
            self.hub.publish(
                "board",
                {
                    "board": item.board,
                    "device": item.device,
                    "connected": False,
                    "reason": item.reason,
                },
            )
        elif isinstance(item, RelayStatus):
            if self._reported.get(item.relay_name) == item.on:
                return
            self._remember(self._reported, item.relay_name, item.on)
            self.hub.publish(
                "valve", {"relay": item.relay_name, "open": item.on, "source": "board"}
            )
        elif isinstance(item, ThermoReading) and self.temperatures_from_boards:
            now = self.wall()
            last = self._thermo_last.get(item.sensor_name)
            if last is not None and 0 <= now - last < THERMO_FROM_BOARDS_SECONDS:
                return
            self._remember(self._thermo_last, item.sensor_name, now)
            self.hub.publish(
                "temperature", {"sensor": item.sensor_name, "celsius": item.celsius, "at": now}
            )

    # --- delivery and health ------------------------------------------------

    def drink_recorded(self, item: Any, drink_id: int) -> None:
        """A ``DeliveryService`` listener: the server recorded ``item``."""
        try:
            now = self.wall()
            if self.latency is not None:
                self.latency.observe(max(0.0, now - float(item.end_wall)))
            self.hub.publish(
                "drink",
                {
                    "state": "recorded",
                    "flow_id": item.flow_id,
                    "meter": item.meter_name,
                    "username": getattr(item, "original_username", None) or item.username,
                    "ticks": item.ticks,
                    "volume_ml": round(float(item.volume_ml), 3),
                    "started": round(float(item.start_wall), 3),
                    "ended": round(float(item.end_wall), 3),
                    "duration_seconds": round(float(item.duration_seconds), 3),
                    "drink_id": drink_id,
                },
            )
        except Exception:
            self.errors += 1

    def server_state(self, state: str, error: str | None = None) -> None:
        """The Kegbot Server became ``ok``, ``down`` or ``bad_key``."""
        self._state("server", state, error)

    def redis_state(self, state: str, error: str | None = None) -> None:
        """Redis became ``connected`` or ``down``."""
        self._state("redis", state, error)

    def _state(self, kind: str, state: str, error: str | None) -> None:
        try:
            self.hub.publish(kind, {"state": state, "error": error})
        except Exception:
            self.errors += 1

    # --- wiring -------------------------------------------------------------

    @staticmethod
    def _remember(table: dict[str, Any], key: str, value: Any) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > MAX_TRACKED:
            del table[next(iter(table))]
