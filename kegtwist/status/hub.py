"""What happens, for the status page: numbered events in a bounded ring.

Pure (no Twisted, no I/O).  The daemon calls :meth:`EventHub.publish` as
things happen (see :mod:`kegtwist.status.feed`); the event stream of the
web service sends each event to the connected pages and, when a page
reconnects with the id of the last event it saw, exactly the ones it
missed (:meth:`EventHub.since`).  If it missed more than the ring holds,
or the id is from another run of the daemon, :meth:`~EventHub.since` says
so (``None``) and the page reloads the whole document instead.

Ids increase by one per event.  By default the first id is the wall clock
in milliseconds at start, so the ids of the next run of the daemon are
above those of this one: a page that saw this run and reconnects to the
next is told to reload, never handed a stream with a hole in it.

The hub also keeps what a page needs that the daemon itself does not keep
(:class:`Memory`): the last temperature of each sensor, the last drinks of
each tap and the drinks and volume per tap since start, when each board
came or went, the state of the Kegbot Server and of Redis since when.
Everything is bounded.

Kinds and their data fields are listed in ``docs/status.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

KINDS = frozenset({"pour", "drink", "valve", "board", "server", "redis", "temperature"})
RING_SIZE = 500
MEMORY_LIMIT = 64
"""Sensors, boards, valves and taps remembered (each); the oldest goes first."""
DRINKS_PER_TAP = 5
RECENT_DRINKS = 20

Listener = Callable[["Event"], None]


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    data: Mapping[str, Any]
    wall: float
    json: str
    """``data`` as compact JSON on one line, made once at publish."""


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(data: Any) -> str:
    """Compact JSON on one line (SSE ``data:`` lines must not break)."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False, default=str)


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its least recently set key beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(slots=True)
class PartState:
    """The Kegbot Server's or Redis's state, and since when it holds."""

    state: str
    since: float
    error: str | None = None


@dataclass
class Memory:
    """What events leave behind that the daemon does not keep itself."""

    limit: int = MEMORY_LIMIT
    drinks_per_tap: int = DRINKS_PER_TAP
    recent_drinks: int = RECENT_DRINKS
    temperatures: _Bounded = field(init=False)
    """sensor -> {"celsius", "at"}"""
    boards: _Bounded = field(init=False)
    """board -> {"connected", "since", "device", "firmware", "reason"}"""
    valves: _Bounded = field(init=False)
    """relay -> {"open", "since", "reason", "source"}"""
    tap_drinks: _Bounded = field(init=False)
    """meter -> deque of the last drinks (newest last)"""
    totals: _Bounded = field(init=False)
    """meter -> [drinks, volume_ml] since start"""
    drinks: deque[dict[str, Any]] = field(init=False)
    states: dict[str, PartState] = field(init=False)
    _counted: deque[int] = field(init=False)

    def __post_init__(self) -> None:
        self.temperatures = _Bounded(self.limit)
        self.boards = _Bounded(self.limit)
        self.valves = _Bounded(self.limit)
        self.tap_drinks = _Bounded(self.limit)
        self.totals = _Bounded(self.limit)
        self.drinks = deque(maxlen=self.recent_drinks)
        self.states = {}
        self._counted = deque(maxlen=256)

    def observe(self, kind: str, data: Mapping[str, Any], wall: float) -> None:
        at = _number(data.get("at"), wall)
        if kind == "temperature":
            sensor = data.get("sensor")
            if isinstance(sensor, str):
                self.temperatures.put(sensor, {"celsius": data.get("celsius"), "at": at})
        elif kind == "board":
            board = data.get("board")
            if isinstance(board, str):
                connected = bool(data.get("connected"))
                self.boards.put(
                    board,
                    {
                        "connected": connected,
                        "since": _since(self.boards.get(board), "connected", connected, at),
                        "device": data.get("device"),
                        "firmware": data.get("firmware"),
                        "reason": None if connected else data.get("reason"),
                    },
                )
        elif kind == "valve":
            relay = data.get("relay")
            if isinstance(relay, str):
                opened = bool(data.get("open"))
                self.valves.put(
                    relay,
                    {
                        "open": opened,
                        "since": _since(self.valves.get(relay), "open", opened, at),
                        "reason": data.get("reason"),
                        "source": data.get("source"),
                    },
                )
        elif kind == "drink":
            self._drink(data)
        elif kind in ("server", "redis"):
            state = data.get("state")
            if isinstance(state, str):
                error = data.get("error")
                self.note_state(kind, state, error if isinstance(error, str) else None, at)

    def note_state(self, part: str, state: str, error: str | None, wall: float) -> PartState:
        """Record ``part``'s state; ``since`` moves only when it changes."""
        known = self.states.get(part)
        if known is None or known.state != state:
            known = self.states[part] = PartState(state, wall, error)
        else:
            known.error = error
        return known

    def _drink(self, data: Mapping[str, Any]) -> None:
        meter = data.get("meter")
        flow_id = data.get("flow_id")
        if not isinstance(meter, str):
            return
        drink = dict(data)
        recent = self.tap_drinks.get(meter)
        if recent is None:
            recent = deque(maxlen=self.drinks_per_tap)
        # The same drink again (recorded by the server now): update it in place.
        for queue in (recent, self.drinks):
            for i, known in enumerate(queue):
                if flow_id is not None and known.get("flow_id") == flow_id:
                    merged = {**known, **{k: v for k, v in drink.items() if v is not None}}
                    queue[i] = merged
                    break
            else:
                queue.append(drink)
        self.tap_drinks.put(meter, recent)
        if isinstance(flow_id, int) and flow_id in self._counted:
            return
        if isinstance(flow_id, int):
            self._counted.append(flow_id)
        totals = self.totals.get(meter) or [0, 0.0]
        totals[0] += 1
        totals[1] += _number(data.get("volume_ml"), 0.0)
        self.totals.put(meter, totals)


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


class EventHub:
    """Numbered events, the last ``capacity`` of them kept, and :class:`Memory`."""

    def __init__(
        self,
        capacity: int = RING_SIZE,
        *,
        first_id: int | None = None,
        wall: Callable[[], float] = time.time,
        memory: Memory | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.wall = wall
        self._next = first_id if first_id is not None else int(wall() * 1000)
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._listeners: list[Listener] = []
        self.memory = memory if memory is not None else Memory()
        self.published = 0
        self.listener_errors = 0

    @property
    def last_id(self) -> int:
        """The id of the newest event (one below the first id if none yet)."""
        return self._next - 1

    def publish(self, kind: str, data: Mapping[str, Any]) -> int:
        """Number ``data`` as an event of ``kind``; hand it to every listener.

        A listener that raises is counted, never lets the error through:
        the daemon calls this from its pour path."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r} (one of {', '.join(sorted(KINDS))})")
        wall = self.wall()
        copied = dict(data)
        event = Event(self._next, kind, copied, wall, to_json(copied))
        self._next += 1
        self._ring.append(event)
        self.published += 1
        try:
            self.memory.observe(kind, copied, wall)
        except Exception:
            self.listener_errors += 1
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.listener_errors += 1
        return event.id

    def since(self, last_id: int) -> list[Event] | None:
        """The events after ``last_id``, oldest first; ``[]`` if none.

        ``None`` when that cannot be answered without a gap: ``last_id`` is
        older than the ring (events after it were dropped) or newer than the
        newest event (another run of the daemon).  The client then reloads
        the document."""
        newest = self._next - 1
        if last_id == newest:
            return []
        if last_id > newest:
            return None
        oldest = self._ring[0].id if self._ring else self._next
        if last_id < oldest - 1:
            return None
        return list(islice(self._ring, last_id + 1 - oldest, None))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every new event; returns the unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def listeners(self) -> int:
        return len(self._listeners)


def _since(before: dict[str, Any] | None, key: str, value: bool, at: float) -> Any:
    """When ``key`` last became ``value``: now if it just changed."""
    if before is None or before[key] != value:
        return at
    return before["since"]
