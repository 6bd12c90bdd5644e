"""What the outbox journal holds: its items and its records, as data.

Pure: no files, no clock.  A journal line is one JSON object with an
``op`` and the fields of that op (:data:`RECORD_FIELDS`); :func:`parse_record`
reads one and says why when it cannot (not JSON, an unknown op, an unknown
or missing field, a wrong type), :func:`serialize` writes one.  What each op
does to the outbox is :meth:`kegtwist.delivery.outbox.Outbox._apply`.

What the journal records about an item:

* ``add``: a drink or temperature to deliver, with a sequence number that
  fixes delivery order.
* ``sending``: a request is about to leave.  If the process dies before the
  outcome is journaled, the drink is *uncertain* on restart: the server may
  have recorded it, so delivery checks the server before sending again.
* ``uncertain``: a request went out and no answer came (timeout, dropped
  connection, a 5xx from a proxy): same as above.
* ``done``: the server recorded it (with its drink id).
* ``guest``: the server does not know the drinker; the pour is re-posted as
  a guest pour and the original username kept in the dead-letter record.
* ``dead``: the server refused it for good (unknown meter, no keg): kept,
  with the server's reason, until an operator retries or discards it.
* ``retry`` / ``discard``: the operator's decision about a dead letter.
* ``drop``: a temperature given up (bound reached, stale, refused).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Literal

from kegtwist.core.model import RecordDrink
from kegtwist.protocol.server_api import record_date

__all__ = [
    "RECORD_FIELDS",
    "DeadLetter",
    "DrinkItem",
    "Item",
    "TemperatureItem",
    "compacted",
    "drink_item",
    "item_from",
    "parse_record",
    "printable",
    "record_date",
    "serialize",
]


@dataclass
class DrinkItem:
    seq: int
    flow_id: int
    meter_name: str
    ticks: int
    volume_ml: float
    username: str | None
    auth_device: str | None
    start_wall: float
    end_wall: float
    duration_seconds: float
    reason: str
    record_date: str
    kind: Literal["drink"] = "drink"
    uncertain: bool = False
    attempts: int = 0
    original_username: str | None = None  # set when re-posted as a guest
    post_volume: bool = False  # the config file calibrated the tap: send volume_ml


@dataclass
class TemperatureItem:
    seq: int
    sensor_name: str
    celsius: float
    wall: float
    kind: Literal["temperature"] = "temperature"
    attempts: int = 0

    @property
    def minute(self) -> int:
        return int(self.wall // 60)


Item = DrinkItem | TemperatureItem


@dataclass
class DeadLetter:
    item: DrinkItem
    reason: str
    status: int | None
    wall: float


# op -> (required fields, optional fields), besides "op" itself
_SEQ = frozenset({"seq"})
_REFUSAL = frozenset({"reason", "status", "wall"})
RECORD_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "add": (frozenset({"seq", "item"}), frozenset()),
    "flows": (frozenset({"ids"}), frozenset()),
    "sending": (_SEQ, frozenset()),
    "uncertain": (_SEQ, frozenset()),
    "certain": (_SEQ, frozenset()),
    "sent_ok": (_SEQ, frozenset()),
    "done": (_SEQ, frozenset({"drink_id"})),
    "guest": (_SEQ, _REFUSAL),
    "note": (frozenset({"seq", "item"}), _REFUSAL),
    "dead": (_SEQ, _REFUSAL),
    "retry": (_SEQ, frozenset()),
    "forget": (_SEQ, frozenset()),
    "discard": (_SEQ, frozenset()),
    "drop": (_SEQ, frozenset({"why"})),
}
_RECORD_TYPES: dict[str, Any] = {
    "seq": int,
    "item": dict,
    "ids": list[int],
    "drink_id": int | None,
    "reason": str,
    "status": int | None,
    "wall": float,
    "why": str,
}
_ITEM_CLASSES: dict[str, type[DrinkItem] | type[TemperatureItem]] = {
    "drink": DrinkItem,
    "temperature": TemperatureItem,
}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (arg,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, arg) for v in value)
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint is not bool:
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _item_problem(data: Any, *, drink_only: bool) -> str | None:
    if not isinstance(data, dict):
        return "its item is not a JSON object"
    kind = data.get("kind", "drink")
    cls = _ITEM_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None or (drink_only and cls is not DrinkItem):
        return f"unknown item kind {kind!r}"
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = [name for name in data if name not in known]
    if unknown:
        return f"unknown field {', '.join(map(repr, unknown))} in the {kind}"
    missing = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if missing:
        return f"missing field {', '.join(map(repr, missing))} in the {kind}"
    for name, value in data.items():
        if not _type_ok(value, hints[name]):
            return f"field {name!r} of the {kind} is {value!r}"
    return None


def parse_record(text: str) -> tuple[dict[str, Any] | None, str]:
    """One journal line: the record, or None and why it cannot be read."""
    try:
        record = json.loads(text)
    except ValueError as e:
        return None, f"not JSON ({e})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if "op" not in record:
        return None, "no op"
    op = record["op"]
    if not isinstance(op, str) or op not in RECORD_FIELDS:
        return None, f"unknown op {op!r}"
    required, optional = RECORD_FIELDS[op]
    unknown = [name for name in record if name != "op" and name not in required | optional]
    if unknown:
        return None, f"unknown field {', '.join(map(repr, unknown))} for {op}"
    missing = sorted(required - set(record))
    if missing:
        return None, f"missing field {', '.join(map(repr, missing))} for {op}"
    for name, value in record.items():
        if name != "op" and not _type_ok(value, _RECORD_TYPES[name]):
            return None, f"field {name!r} for {op} is {value!r}"
    if "item" in record:
        problem = _item_problem(record["item"], drink_only=op == "note")
        if problem is not None:
            return None, f"{problem} ({op})"
    return record, ""


def serialize(record: dict[str, Any]) -> bytes:
    """One journal line, its newline included."""
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def drink_item(seq: int, drink: RecordDrink, date: str) -> DrinkItem:
    """The outbox item of a completed pour, recorded at ``date``."""
    return DrinkItem(
        seq=seq,
        flow_id=drink.flow_id,
        meter_name=drink.meter_name,
        ticks=drink.ticks,
        volume_ml=drink.volume_ml,
        username=drink.username,
        auth_device=drink.auth_device,
        start_wall=drink.start_wall,
        end_wall=drink.end_wall,
        duration_seconds=drink.duration_seconds,
        reason=drink.reason,
        record_date=date,
        post_volume=drink.post_volume,
    )


def item_from(data: dict[str, Any]) -> Item:
    """The item of an ``add`` record (checked by :func:`parse_record`)."""
    data = dict(data)
    kind = data.pop("kind", "drink")
    return DrinkItem(**data) if kind == "drink" else TemperatureItem(**data)


def printable(text: str, limit: int | None = None) -> str:
    """A journal line as it may be shown (bytes that were not UTF-8 as \\x..)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def compacted(
    recent_flows: typing.Iterable[int], dead: dict[int, DeadLetter], pending: dict[int, Item]
) -> list[dict[str, Any]]:
    """The records of a journal holding just what is pending or dead (and
    the flows journaled lately): what compaction writes."""
    records: list[dict[str, Any]] = [{"op": "flows", "ids": list(recent_flows)}]
    for seq, letter in sorted(dead.items()):
        refusal = {"reason": letter.reason, "status": letter.status, "wall": letter.wall}
        if seq < 0:  # the note of a guest re-post
            records.append({"op": "note", "seq": seq, "item": asdict(letter.item), **refusal})
            continue
        records.append({"op": "add", "seq": seq, "item": asdict(letter.item)})
        records.append({"op": "dead", "seq": seq, **refusal})
    for seq, item in pending.items():
        data = asdict(item)
        if isinstance(item, DrinkItem):
            data["uncertain"] = False
            data["attempts"] = 0
        records.append({"op": "add", "seq": seq, "item": data})
        if isinstance(item, DrinkItem) and item.uncertain:
            records.append({"op": "uncertain", "seq": seq})
    return records
