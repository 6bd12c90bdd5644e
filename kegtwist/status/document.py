"""The status document: one JSON-able dict describing the running daemon.

``build_document(daemon, now_wall, started_wall)`` reads the parts of a
composed daemon (``kegtwist.daemon.compose.KegbotService``: ``role``,
``boards``, ``core``, ``outbox``, ``delivery``, ``tap_sync``, ``bus``,
``bridge``) and never raises: a part that is missing (the role has none)
or fails gives ``null`` for its section and an entry in ``errors``
(``kind`` ``absent`` or ``failed``).  Every field is described in
``docs/status.md``.

Every read of a daemon part is in this module, in the small functions of
the "readers" section below, so that a change in a part means a change
here only.  What the daemon does not keep (the last temperatures, recent
drinks, when a board went, since when the server is down) comes from the
hub's :class:`~kegtwist.status.hub.Memory`, fed by
:mod:`kegtwist.status.feed`; without a hub, a memory per daemon still
notes state changes each time a document is built.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.logger import Logger

from kegtwist.ratelimit import RateLimiter
from kegtwist.status.hub import EventHub, Memory, _finite

SCHEMA = 1
MAX_DEAD_LETTERS = 50
MAX_QUARANTINE = 10
MAX_QUARANTINE_BYTES = 1 << 20
MAX_TEXT = 200

_T = TypeVar("_T")
log = Logger(namespace="kegtwist.status")
_log_limit = RateLimiter(interval=600.0)
_memories: weakref.WeakKeyDictionary[Any, Memory] = weakref.WeakKeyDictionary()
_version: list[str | None] = []


class Absent(Exception):
    """This daemon has no such part (its role, or its options)."""


# --- the document -----------------------------------------------------------


def build_document(
    daemon: Any, now_wall: float, started_wall: float, *, hub: EventHub | None = None
) -> dict[str, Any]:
    """The status document of ``daemon`` at ``now_wall``.  Never raises."""
    errors: list[dict[str, str]] = []
    memory = _memory(daemon, hub)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "version": _package_version(),
        "role": None,
        "now": _t(now_wall),
        "started": _t(started_wall),
        "uptime_seconds": _t(max(0.0, now_wall - started_wall)),
    }

    def section(name: str, read: Callable[[], Any]) -> None:
        try:
            doc[name] = _finite(read())
        except Absent as e:
            doc[name] = None
            errors.append({"part": name, "kind": "absent", "error": str(e)})
        except Exception as e:
            doc[name] = None
            errors.append({"part": name, "kind": "failed", "error": _error_text(e)})
            if _log_limit.allow(name, now_wall):
                log.failure("Status: reading {part} failed", part=name)

    section("role", lambda: _role(daemon))
    section("boards", lambda: boards_section(daemon, memory))
    section("ports", lambda: ports_section(daemon))
    section("taps", lambda: taps_section(daemon, memory))
    section("pours", lambda: pours_section(daemon))
    section("valves", lambda: valves_section(daemon, memory))
    section("temperatures", lambda: temperatures_section(daemon, memory, now_wall))
    section("drinks", lambda: [dict(d) for d in reversed(memory.drinks)])
    section("untapped", lambda: untapped_section(daemon))
    section("outbox", lambda: outbox_section(daemon))
    section("server", lambda: server_section(daemon, memory, now_wall))
    section("redis", lambda: redis_section(daemon, memory, now_wall))
    section("kegnet", lambda: kegnet_section(daemon))
    section("counters", lambda: counters_section(daemon))
    doc["errors"] = errors
    return doc


# --- readers: every access to a daemon part is here ---------------------------


def _role(daemon: Any) -> str:
    return str(daemon.role)


def _board_service(daemon: Any) -> Any:
    boards = getattr(daemon, "boards", None)
    if boards is None:
        raise Absent("no boards in this daemon (--role core: boards report over Kegnet)")
    return boards


def _core_service(daemon: Any) -> Any:
    core = getattr(daemon, "core", None)
    if core is None:
        raise Absent("no core in this daemon (--role kegboard): ask the core's status")
    return core


def _core(daemon: Any) -> Any:
    return _core_service(daemon).core


def _outbox(daemon: Any) -> Any:
    outbox = getattr(daemon, "outbox", None)
    if outbox is None:
        raise Absent("no outbox in this daemon (--role kegboard)")
    return outbox


def _delivery(daemon: Any) -> Any:
    return getattr(daemon, "delivery", None)


def _tap_sync(daemon: Any) -> Any:
    return getattr(daemon, "tap_sync", None)


def _bus(daemon: Any) -> Any:
    return getattr(daemon, "bus", None)


def _bridge(daemon: Any) -> Any:
    return getattr(daemon, "bridge", None)


def _links(daemon: Any) -> list[Any]:
    """The board service's ports (one link per device node or bridge)."""
    return list(_board_service(daemon).links.values())


def _link_facts(link: Any) -> dict[str, Any]:
    hello = getattr(link, "hello", None)
    return {
        "name": link.name,
        "device": link.device,
        "state": _state_name(getattr(link, "state", None)),
        "firmware": getattr(hello, "firmware_version", None),
        "serial": getattr(hello, "serial_number", None) or None,
    }


def _state_name(state: Any) -> str | None:
    """A link's state as text (a string, or an Enum's value)."""
    if state is None:
        return None
    value = getattr(state, "value", state)
    return value if isinstance(value, str) else str(value)


def _link_counters(link: Any) -> dict[str, int] | None:
    """The decoder's counters of the port as opened now (None if closed)."""
    stats = getattr(link, "stats", None)
    if stats is None:
        return None
    names = (
        "frames",
        "crc_errors",
        "framing_errors",
        "payload_errors",
        "unknown_messages",
        "bytes_skipped",
    )
    return {name: int(getattr(stats, name, 0)) for name in names}


def _relay_states(daemon: Any) -> dict[str, bool]:
    """What the boards of this daemon last reported for each relay."""
    boards = getattr(daemon, "boards", None)
    return dict(getattr(boards, "relay_states", {}) or {}) if boards is not None else {}


def _local_boards(daemon: Any) -> set[str]:
    """Boards ever named here (``local_boards.json``), if a bridge keeps them."""
    bridge = _bridge(daemon)
    return set(getattr(bridge, "local_boards", ()) or ()) if bridge is not None else set()


def _core_boards(daemon: Any) -> set[str]:
    """Boards the core heard a hello from (local and over Kegnet)."""
    core = getattr(daemon, "core", None)
    return set(getattr(core.core, "boards", ()) or ()) if core is not None else set()


def _file_meters(daemon: Any) -> set[str]:
    """Meters of ``[[taps]]`` in the config file (and simulated boards)."""
    tap_sync = _tap_sync(daemon)
    if tap_sync is not None:
        return {t.meter for t in tap_sync.file_taps}
    return {t.meter for t in _core(daemon).config.taps}


def _keg_of(daemon: Any, meter: str) -> int | None:
    """The server's keg on the tap of ``meter``, where tap sync keeps it.

    Tap sync keeps only the tap table today: this is None until it keeps
    the server's ``current_keg_id`` (as ``kegs: {meter: id}``)."""
    kegs = getattr(_tap_sync(daemon), "kegs", None)
    if isinstance(kegs, dict):
        keg = kegs.get(meter)
        return keg if isinstance(keg, int) else None
    return None


def _mono_now(daemon: Any) -> float:
    return float(_core_service(daemon).monotonic())


def _core_pending(daemon: Any) -> tuple[int, str | None]:
    """Drinks not yet in the outbox (waiting for the disk), and the disk error."""
    status = _core_service(daemon).status()
    return int(status.get("drinks_not_in_outbox", 0)), status.get("disk_error")


def _hold_seconds(daemon: Any) -> float:
    return float(_core(daemon).config.pours.untapped_hold_hours) * 3600.0


def _server_facts(daemon: Any) -> dict[str, Any] | None:
    """The Kegbot Server as delivery and tap sync see it; None if none is set."""
    delivery = _delivery(daemon)
    tap_sync = _tap_sync(daemon)
    if delivery is None and tap_sync is None:
        return None
    client = getattr(delivery, "client", None) or getattr(tap_sync, "client", None)
    return {
        "url": getattr(client, "api_url", None),
        "delivery": getattr(delivery, "state", None),
        "last_error": getattr(delivery, "last_error", None) or None,
        "taps_reachable": getattr(tap_sync, "reachable", None),
    }


def _bus_facts(daemon: Any) -> dict[str, Any] | None:
    bus = _bus(daemon)
    if bus is None:
        return None
    state = getattr(bus, "_state", None)
    target = getattr(bus, "target", None)
    return {
        "url": target.redacted() if target is not None else None,
        "channel": getattr(bus, "channel", None),
        "state": "starting" if state is None else ("connected" if bus.connected else "down"),
        "last_error": getattr(bus, "last_error", None) or None,
        "queued": len(getattr(bus, "queue", ())),
    }


def _bus_counters(daemon: Any) -> dict[str, Any]:
    stats = _bus(daemon).stats
    counters: dict[str, Any] = {
        name: int(getattr(stats, name, 0))
        for name in (
            "published",
            "received",
            "decoded",
            "rejected",
            "ignored",
            "dropped_queue_full",
            "publish_failed",
            "echoes",
            "foreign_cores",
            "connects",
        )
    }
    counters["reasons"] = dict(getattr(stats, "reasons", {}) or {})
    return counters


def _bridge_counters(daemon: Any) -> dict[str, Any] | None:
    bridge = _bridge(daemon)
    if bridge is None:
        return None
    stats = bridge.stats
    return {
        "remote_inputs": stats.remote_inputs,
        "remote_relay_commands": stats.remote_relay_commands,
        "relay_guard_closed": stats.relay_guard_closed,
        "ignored": dict(stats.ignored),
    }


# --- sections -----------------------------------------------------------------


def boards_section(daemon: Any, memory: Memory) -> list[dict[str, Any]]:
    """Boards: connected here, gone (when, why), remote ones the core hears."""
    rows: dict[str, dict[str, Any]] = {}
    boards = getattr(daemon, "boards", None)
    if boards is not None:
        for link in _links(daemon):
            facts = _link_facts(link)
            name = facts["name"]
            if name is None:
                continue
            remembered = memory.boards.get(name)
            since = remembered["since"] if remembered and remembered["connected"] else None
            rows[name] = {
                "name": name,
                "device": facts["device"],
                "connected": True,
                "remote": False,
                "seen": True,
                "firmware": facts["firmware"],
                "serial": facts["serial"],
                "since": since,
                "reason": None,
                "counters": _link_counters(link),
            }
    # The core hears this daemon's boards too: the others are remote.
    no_names: set[str] = set()
    remote = _optional(lambda: _core_boards(daemon), no_names) - set(rows)
    for name in sorted(remote):
        rows[name] = _board_row(name, connected=True, remote=True)
    for name, remembered in memory.boards.items():
        if name in rows or remembered["connected"]:
            continue
        row = _board_row(name, connected=False, remote=False)
        row.update(
            device=remembered["device"],
            firmware=remembered["firmware"],
            since=remembered["since"],
            reason=remembered["reason"],
        )
        rows[name] = row
    for name in sorted(_optional(lambda: _local_boards(daemon), no_names) - set(rows)):
        row = _board_row(name, connected=False, remote=False)
        row.update(seen=False, reason="not seen since the daemon started (local_boards.json)")
        rows[name] = row
    return [rows[name] for name in sorted(rows)]


def _board_row(name: str, *, connected: bool, remote: bool) -> dict[str, Any]:
    return {
        "name": name,
        "device": None,
        "connected": connected,
        "remote": remote,
        "seen": True,
        "firmware": None,
        "serial": None,
        "since": None,
        "reason": None,
        "counters": None,
    }


def ports_section(daemon: Any) -> list[dict[str, Any]]:
    """Every port the board service holds, named or not."""
    rows = []
    for link in _links(daemon):
        facts = _link_facts(link)
        rows.append(
            {
                "device": facts["device"],
                "state": facts["state"],
                "board": facts["name"],
                "counters": _link_counters(link),
            }
        )
    return sorted(rows, key=lambda r: str(r["device"]))


def taps_section(daemon: Any, memory: Memory) -> list[dict[str, Any]]:
    core = _core(daemon)
    file_meters = _file_meters(daemon)
    rows = []
    for meter, tap in sorted(core.taps.items()):
        totals = memory.totals.get(meter) or [0, 0.0]
        rows.append(
            {
                "meter": meter,
                "name": tap.name,
                "relay": tap.relay,
                "ml_per_tick": tap.ml_per_tick,
                "source": "file" if meter in file_meters else "server",
                "keg": _keg_of(daemon, meter),
                "pouring": meter in core.pours,
                "drinks": totals[0],
                "volume_ml": _t(totals[1]),
                "last_drinks": [dict(d) for d in reversed(memory.tap_drinks.get(meter) or ())],
            }
        )
    return rows


def pours_section(daemon: Any) -> list[dict[str, Any]]:
    core = _core(daemon)
    rows = []
    for meter, pour in sorted(core.pours.items()):
        snap = pour.snapshot()
        tap = core.taps.get(meter)
        rows.append(
            {
                "flow_id": snap.flow_id,
                "meter": meter,
                "tap": tap.name if tap is not None else None,
                "username": snap.username,
                "guest": snap.username is None,
                "auth_device": snap.auth_device,
                "ticks": snap.ticks,
                "volume_ml": _t(snap.volume_ml),
                "started": _t(snap.start_wall),
                "last_tick": _t(pour.last_tick_wall) if pour.last_tick_wall is not None else None,
                "duration_seconds": _t(snap.duration_seconds),
                "valve_open": bool(getattr(pour, "valve_open", False)),
                "untapped": bool(getattr(pour, "untapped", False)),
                "cleaning": bool(getattr(pour, "cleaning", False)),
            }
        )
    return rows


def valves_section(daemon: Any, memory: Memory) -> list[dict[str, Any]]:
    """Each tap's relay (and every relay a board reported), open or not."""
    reported = _relay_states(daemon)
    core_service = getattr(daemon, "core", None)
    core = core_service.core if core_service is not None else None
    rows: dict[str, dict[str, Any]] = {}
    relays: dict[str, str | None] = {}  # relay -> meter
    if core is not None:
        for meter, tap in core.taps.items():
            if tap.relay:
                relays[tap.relay] = meter
    for relay in reported:
        relays.setdefault(relay, None)
    for relay in memory.valves:
        relays.setdefault(relay, None)
    cleaning = set(core.cleaning.values()) if core is not None else set()
    for relay, meter in relays.items():
        remembered = memory.valves.get(relay) or {}
        commanded = relay in core.open_relays if core is not None else None
        rows[relay] = {
            "relay": relay,
            "meter": meter,
            "open": commanded if commanded is not None else reported.get(relay),
            "commanded": commanded,
            "reported": reported.get(relay),
            "cleaning": relay in cleaning,
            "since": remembered.get("since"),
            "reason": remembered.get("reason"),
        }
    return [rows[r] for r in sorted(rows)]


def temperatures_section(daemon: Any, memory: Memory, now_wall: float) -> list[dict[str, Any]]:
    values: dict[str, tuple[Any, float]] = {
        sensor: (seen["celsius"], seen["at"]) for sensor, seen in memory.temperatures.items()
    }
    outbox = getattr(daemon, "outbox", None)
    if outbox is not None:
        for item in list(outbox.pending.values()):
            if getattr(item, "kind", None) == "temperature":
                known = values.get(item.sensor_name)
                if known is None or known[1] < item.wall:
                    values[item.sensor_name] = (item.celsius, item.wall)
    sensors: dict[str, Any] = {}
    mono_now: float | None = None
    core_service = getattr(daemon, "core", None)
    if core_service is not None:
        sensors = dict(core_service.core.sensors)
        mono_now = _mono_now(daemon)
    rows = []
    for name in sorted(set(values) | set(sensors)):
        celsius, at = values.get(name, (None, None))
        sensor = sensors.get(name)
        if sensor is not None and mono_now is not None:
            age: float | None = max(0.0, mono_now - sensor.last_seen_mono)
        elif at is not None:
            age = max(0.0, now_wall - at)
        else:
            age = None
        rows.append(
            {
                "sensor": name,
                "celsius": celsius,
                "at": _t(at) if at is not None else None,
                "age_seconds": _t(age) if age is not None else None,
                "lost": bool(sensor.lost) if sensor is not None else None,
            }
        )
    return rows


def untapped_section(daemon: Any) -> dict[str, Any]:
    core = _core(daemon)
    hold = _hold_seconds(daemon)
    meters = {m for m, p in core.pours.items() if getattr(p, "untapped", False)}
    meters |= set(getattr(core, "untapped_warned", ())) - set(core.taps)
    held = []
    for flow_id, entry in sorted(core.held.items()):
        drink = entry.drink
        held.append(
            {
                "flow_id": flow_id,
                "meter": drink.meter_name,
                "ticks": drink.ticks,
                "username": drink.username,
                "ended": _t(drink.end_wall),
                "dead_letter_at": _t(drink.end_wall + hold),
            }
        )
    return {"ticks": core.stats.untapped_ticks, "meters": sorted(meters), "held": held}


def outbox_section(daemon: Any) -> dict[str, Any]:
    outbox = _outbox(daemon)
    pending = list(outbox.pending.values())
    drinks = [i for i in pending if getattr(i, "kind", None) == "drink"]
    uncertain = [i for i in drinks if getattr(i, "uncertain", False)]
    dead = []
    for seq, letter in sorted(outbox.dead.items())[:MAX_DEAD_LETTERS]:
        item = letter.item
        dead.append(
            {
                "number": seq,
                "flow_id": item.flow_id,
                "meter": item.meter_name,
                "ticks": item.ticks,
                "volume_ml": _t(item.volume_ml),
                "username": getattr(item, "original_username", None) or item.username,
                "ended": _t(item.end_wall),
                "reason": letter.reason,
                "status": letter.status,
                "at": _t(letter.wall),
            }
        )
    quarantined, quarantine = _quarantine(Path(outbox.directory))
    section: dict[str, Any] = {
        "pending": len(pending),
        "drinks": len(drinks),
        "temperatures": len(pending) - len(drinks),
        "uncertain": len(uncertain),
        "uncertain_flows": [i.flow_id for i in uncertain][:MAX_DEAD_LETTERS],
        "dead_letters": len(outbox.dead),
        "dead": dead,
        "quarantined": quarantined,
        "quarantine": quarantine,
        "not_in_outbox": None,
        "disk_error": None,
        "stats": dataclasses.asdict(outbox.stats),
    }
    if getattr(daemon, "core", None) is not None:
        section["not_in_outbox"], section["disk_error"] = _core_pending(daemon)
    return section


_quarantine_cache: dict[str, tuple[tuple[int, int], tuple[int | None, list[dict[str, Any]]]]] = {}


def _quarantine(directory: Path) -> tuple[int | None, list[dict[str, Any]]]:
    """How many records were set aside (all time) and the last few.

    Read again only when the file changed; a file over 1 MiB is counted
    but not listed (``kegbot-outbox quarantine`` lists it)."""
    from kegtwist.delivery.outbox import QUARANTINE, read_quarantine

    path = directory / QUARANTINE
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0, []
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _quarantine_cache.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    result: tuple[int | None, list[dict[str, Any]]]
    if stat.st_size > MAX_QUARANTINE_BYTES:
        with open(path, "rb") as f:
            result = (sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")), [])
    else:
        entries = read_quarantine(directory)
        result = (
            len(entries),
            [
                {
                    "line": e.get("line"),
                    "reason": _clip(e.get("reason")),
                    "text": _clip(e.get("text")),
                    "at": e.get("wall"),
                }
                for e in entries[-MAX_QUARANTINE:]
            ],
        )
    _quarantine_cache.clear()  # one daemon, one state dir
    _quarantine_cache[str(path)] = (key, result)
    return result


SERVER_DOWN = ("down", "bad_key")


def server_section(daemon: Any, memory: Memory, now_wall: float) -> dict[str, Any]:
    facts = _server_facts(daemon)
    if facts is None:
        if getattr(daemon, "core", None) is None:
            raise Absent("no Kegbot Server in this daemon (--role kegboard)")
        raise Absent("no Kegbot Server configured (--api-url none)")
    delivery = facts["delivery"]
    reachable = facts["taps_reachable"]
    if delivery == "bad_key":
        state = "bad_key"
    elif delivery == "down" or reachable is False:
        state = "down"
    elif delivery == "ok" or reachable is True:
        state = "ok"
    else:
        state = "starting"
    noted = memory.note_state("server", state, facts["last_error"], now_wall)
    return {
        "url": _public_url(facts["url"]),
        "state": state,
        "since": _t(noted.since),
        "last_error": facts["last_error"] or noted.error,
        "delivery": delivery,
        "taps_reachable": reachable,
    }


def redis_section(daemon: Any, memory: Memory, now_wall: float) -> dict[str, Any]:
    facts = _bus_facts(daemon)
    if facts is None:
        raise Absent("no Kegnet bus (--redis-url none)")
    noted = memory.note_state("redis", facts["state"], facts["last_error"], now_wall)
    return {**facts, "since": _t(noted.since), "last_error": facts["last_error"] or noted.error}


def kegnet_section(daemon: Any) -> dict[str, Any]:
    if _bus(daemon) is None:
        raise Absent("no Kegnet bus (--redis-url none)")
    counters = _bus_counters(daemon)
    return {
        "in": counters["received"],
        "out": counters["published"],
        "rejected": counters["rejected"],
        "ignored": counters["ignored"],
        "bus": counters,
        "bridge": _bridge_counters(daemon),
        "local_boards": sorted(_local_boards(daemon)),
    }


def counters_section(daemon: Any) -> dict[str, Any]:
    stats = _core(daemon).stats
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return dict(vars(stats))


# --- helpers --------------------------------------------------------------------


def _optional(read: Callable[[], _T], default: _T) -> _T:
    """A read that only adds to a section: its failure is another section's."""
    try:
        return read()
    except Exception:
        return default


def _memory(daemon: Any, hub: EventHub | None) -> Memory:
    if hub is not None:
        return hub.memory
    try:
        memory = _memories.get(daemon)
        if memory is None:
            memory = _memories[daemon] = Memory()
        return memory
    except TypeError:  # not weakly referenceable
        return Memory()


def _package_version() -> str | None:
    if not _version:
        try:
            from importlib.metadata import version

            _version.append(version("kegtwist"))
        except Exception:
            import kegtwist

            found = getattr(kegtwist, "__version__", None)
            _version.append(str(found) if found is not None else None)
    return _version[0]


def _public_url(url: Any) -> str | None:
    """A URL without any user or password in it."""
    if not isinstance(url, str):
        return None
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _t(value: float) -> float:
    return round(float(value), 3)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "..."
    return value


def _error_text(error: BaseException) -> str:
    return _clip(f"{type(error).__name__}: {error}")  # type: ignore[no-any-return]
