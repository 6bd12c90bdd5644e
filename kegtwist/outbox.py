"""The durable outbox: drinks and temperatures waiting for the server.

Nothing is acknowledged before it is on disk.  The store is an append-only
journal of JSON lines in the state directory, each line flushed and
fsync'd before the call returns (all but ``done``, see
:meth:`Outbox.delivered`), so ``kill -9`` or a power cut right after a pour
ends loses nothing.  The journal is compacted (rewritten atomically) when it
holds mostly finished entries.  One process at a time: the state
directory's ``lock`` file is held (flock) while the outbox is open.

Entries and what the journal records about them:

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

Temperatures are best effort: only the newest reading per sensor per
minute is kept, and at most ``max_temperatures`` of them (oldest dropped
first, counted).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from twisted.logger import Logger

from .core.model import RecordDrink, RecordTemperature
from .errors import StartupError

JOURNAL = "outbox.jsonl"
MAX_TEMPERATURES = 1000
COMPACT_AFTER = 2000  # finished journal lines before a rewrite


def record_date(wall: float) -> str:
    """The instant a drink is recorded at: ISO 8601, microseconds, +00:00.

    The server stores it exactly; with ticks and drinker it identifies the
    pour on the server (the exactly-once check).
    """
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds")


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


class StateDirBusy(StartupError, RuntimeError):
    """Another process (a running kegbot) holds the state directory."""


def lock_state_dir(directory: Path) -> Any:
    """An exclusive lock on ``directory/lock`` for as long as the returned
    file stays open: two processes appending to one journal would corrupt
    it, and two cores would record every pour twice."""
    import fcntl

    f = open(directory / "lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StateDirBusy(
            f"another kegbot is using the state directory {directory} "
            "(stop it, or give this one its own --state-dir)"
        ) from None
    return f


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


@dataclass
class OutboxStats:
    drinks_added: int = 0
    drinks_delivered: int = 0
    drinks_dead: int = 0
    guest_reposts: int = 0
    found_on_server: int = 0
    temperatures_added: int = 0
    temperatures_delivered: int = 0
    temperatures_dropped: int = 0
    journal_lines_skipped: int = 0


@dataclass
class Outbox:
    """Pending items in delivery order, dead letters, and the journal."""

    directory: Path
    fsync: bool = True
    max_temperatures: int = MAX_TEMPERATURES
    stats: OutboxStats = field(default_factory=OutboxStats)

    log: ClassVar[Logger] = Logger()

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.pending: dict[int, Item] = {}
        self.dead: dict[int, DeadLetter] = {}
        self.delivered_ids: dict[int, int] = {}  # seq -> server drink id (recent)
        self.recent_flows: dict[int, None] = {}  # flow ids journaled lately, oldest first
        self._seq = 0
        self._finished_lines = 0
        self._file: Any = None
        self._lock: Any = None

    # --- opening ----------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.directory / JOURNAL

    def open(self) -> None:
        """Take the state directory's lock, replay the journal, then keep it
        open for appending."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = lock_state_dir(self.directory)
        if self.path.exists():
            for record in self._read_journal():
                self._apply(record)
            self._cut_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")
        if self._finished_lines > COMPACT_AFTER:
            self.compact()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _cut_torn_tail(self) -> None:
        """Drop a last line a power cut left without its newline, so the
        next record starts on a line of its own."""
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _read_journal(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "op" not in record:
                        raise ValueError("not a journal record")
                except ValueError:
                    # A torn last line from a power cut: it was never acknowledged.
                    self.stats.journal_lines_skipped += 1
                    self.log.warn("Outbox journal line {number} unreadable; skipped", number=number)
                    continue
                yield record

    # --- journal ------------------------------------------------------------

    def _write(self, record: dict[str, Any], *, sync: bool = True) -> None:
        """Append one record; ``sync=False`` only for records whose loss a
        restart repairs by itself (see :meth:`delivered`)."""
        self._apply(record)
        if self._file is None:
            raise RuntimeError("outbox is not open")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.fsync and sync:
            os.fsync(self._file.fileno())

    def _apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        seq = int(record.get("seq", 0))
        self._seq = max(self._seq, abs(seq))
        if op == "add":
            data = dict(record["item"])
            kind = data.pop("kind", "drink")
            item: Item = DrinkItem(**data) if kind == "drink" else TemperatureItem(**data)
            self.pending[seq] = item
            if isinstance(item, DrinkItem):
                self._remember_flow(item.flow_id)
            return
        if op == "flows":
            for flow_id in record.get("ids", []):
                self._remember_flow(int(flow_id))
            return
        self._finished_lines += 1
        item_or_none = self.pending.get(seq)
        if op == "sending" or op == "uncertain":
            if isinstance(item_or_none, DrinkItem):
                item_or_none.uncertain = True
                item_or_none.attempts += 1
        elif op == "sent_ok":
            pass
        elif op == "done":
            self.pending.pop(seq, None)
            if record.get("drink_id") is not None:
                self.delivered_ids[seq] = int(record["drink_id"])
                while len(self.delivered_ids) > 1000:
                    self.delivered_ids.pop(next(iter(self.delivered_ids)))
        elif op == "guest":
            if isinstance(item_or_none, DrinkItem):
                note = DrinkItem(**{**asdict(item_or_none), "uncertain": False})
                reason = f"{record.get('reason', '')} (re-posted as a guest pour)"
                self.dead[-seq] = DeadLetter(
                    note, reason, record.get("status"), float(record.get("wall", 0))
                )
                item_or_none.original_username = item_or_none.username
                item_or_none.username = None
                item_or_none.uncertain = False
        elif op == "note":
            note = DrinkItem(**record["item"])
            self.dead[seq] = DeadLetter(
                note, record.get("reason", ""), record.get("status"), float(record.get("wall", 0))
            )
        elif op == "dead":
            popped = self.pending.pop(seq, None)
            if isinstance(popped, DrinkItem):
                self.dead[seq] = DeadLetter(
                    popped,
                    record.get("reason", ""),
                    record.get("status"),
                    float(record.get("wall", 0)),
                )
        elif op == "retry":
            letter = self.dead.pop(seq, None)
            if letter is not None:
                letter.item.uncertain = False
                self.pending[seq] = letter.item
                self.pending = dict(sorted(self.pending.items()))
        elif op == "forget":
            self.dead.pop(seq, None)
        elif op in ("discard", "drop"):
            self.dead.pop(seq, None)
            self.pending.pop(seq, None)
        elif op == "certain":
            if isinstance(item_or_none, DrinkItem):
                item_or_none.uncertain = False

    def _remember_flow(self, flow_id: int) -> None:
        self.recent_flows[flow_id] = None
        while len(self.recent_flows) > 1000:
            del self.recent_flows[next(iter(self.recent_flows))]

    def knows_flow(self, flow_id: int) -> bool:
        """Was a drink for this flow journaled lately?  A pour restored from
        a checkpoint written just before its drink was journaled must not be
        recorded twice."""
        return flow_id in self.recent_flows

    # --- adding ---------------------------------------------------------------

    def add_drink(self, drink: RecordDrink) -> DrinkItem:
        """Journal a completed pour; returns once it is on disk."""
        self._seq += 1
        date = record_date(drink.end_wall)
        # Two pending drinks never share a record date: it is their key.
        taken = {i.record_date for i in self.pending.values() if isinstance(i, DrinkItem)}
        end = drink.end_wall
        while date in taken:
            end += 1e-6
            date = record_date(end)
        item = DrinkItem(
            seq=self._seq,
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
        self._write({"op": "add", "seq": item.seq, "item": asdict(item)})
        self.stats.drinks_added += 1
        return item

    def add_temperature(self, reading: RecordTemperature) -> TemperatureItem:
        self._seq += 1
        item = TemperatureItem(self._seq, reading.sensor_name, reading.celsius, reading.wall)
        for old in list(self.pending.values()):
            if (
                isinstance(old, TemperatureItem)
                and old.sensor_name == item.sensor_name
                and old.minute == item.minute
            ):
                self.drop(old, "superseded within the minute")
        temperatures = [i for i in self.pending.values() if isinstance(i, TemperatureItem)]
        while len(temperatures) >= self.max_temperatures:
            self.drop(temperatures.pop(0), "outbox full")
        self._write({"op": "add", "seq": item.seq, "item": asdict(item)})
        self.stats.temperatures_added += 1
        return item

    # --- delivery bookkeeping -----------------------------------------------------

    def next_item(self) -> Item | None:
        return next(iter(self.pending.values()), None)

    def __len__(self) -> int:
        return len(self.pending)

    def drinks(self) -> list[DrinkItem]:
        return [i for i in self.pending.values() if isinstance(i, DrinkItem)]

    def sending(self, item: DrinkItem) -> None:
        """About to send: from now on, a crash leaves the outcome unknown."""
        self._write({"op": "sending", "seq": item.seq})

    def uncertain(self, item: DrinkItem) -> None:
        self._write({"op": "uncertain", "seq": item.seq})

    def certain_not_recorded(self, item: DrinkItem) -> None:
        """The server was checked and does not have it: safe to send."""
        self._write({"op": "certain", "seq": item.seq})

    def delivered(self, item: Item, drink_id: int | None = None, *, found: bool = False) -> None:
        """The server has it.  Written but not fsync'd: the next record's
        fsync (the next ``sending``) makes it durable, and if a power cut
        takes it first, the drink's durable ``sending`` makes it uncertain
        on restart, so delivery finds it on the server instead of sending it
        twice (a temperature may be sent twice: best effort).  Half the
        fsyncs of a delivery, which are most of its cost (bench/delivery.py).
        ``kill -9`` loses nothing either way: the page cache survives it."""
        self._write({"op": "done", "seq": item.seq, "drink_id": drink_id}, sync=False)
        if isinstance(item, DrinkItem):
            self.stats.drinks_delivered += 1
            if found:
                self.stats.found_on_server += 1
        else:
            self.stats.temperatures_delivered += 1
        self._maybe_compact()

    def as_guest(self, item: DrinkItem, reason: str, status: int | None, wall: float) -> None:
        """Unknown drinker: keep a dead-letter record, deliver as a guest pour."""
        self._write(
            {"op": "guest", "seq": item.seq, "reason": reason, "status": status, "wall": wall}
        )
        self.stats.guest_reposts += 1

    def dead_letter(self, item: DrinkItem, reason: str, status: int | None, wall: float) -> None:
        self._write(
            {"op": "dead", "seq": item.seq, "reason": reason, "status": status, "wall": wall}
        )
        self.stats.drinks_dead += 1

    def drop(self, item: TemperatureItem, why: str) -> None:
        self._write({"op": "drop", "seq": item.seq, "why": why})
        self.stats.temperatures_dropped += 1

    # --- operator -----------------------------------------------------------------

    def retry_dead(self, seq: int) -> bool:
        """Put a dead letter back in the queue (e.g. after fixing the tap)."""
        if seq not in self.dead or seq < 0:
            return False
        self._write({"op": "retry", "seq": seq})
        return True

    def discard_dead(self, seq: int) -> bool:
        if seq not in self.dead:
            return False
        if seq < 0:  # a guest re-post note: nothing to deliver
            self._write({"op": "forget", "seq": seq})
            return True
        self._write({"op": "discard", "seq": seq})
        return True

    # --- compaction ------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        if self._finished_lines > COMPACT_AFTER and self._finished_lines > 4 * len(self.pending):
            self.compact()

    def compact(self) -> None:
        """Rewrite the journal as just what is pending or dead, atomically."""
        records: list[dict[str, Any]] = [{"op": "flows", "ids": list(self.recent_flows)}]
        for seq, letter in sorted(self.dead.items()):
            if seq < 0:
                records.append(
                    {
                        "op": "note",
                        "seq": seq,
                        "item": asdict(letter.item),
                        "reason": letter.reason,
                        "status": letter.status,
                        "wall": letter.wall,
                    }
                )
                continue
            records.append({"op": "add", "seq": seq, "item": asdict(letter.item)})
            records.append(
                {
                    "op": "dead",
                    "seq": seq,
                    "reason": letter.reason,
                    "status": letter.status,
                    "wall": letter.wall,
                }
            )
        for seq, item in self.pending.items():
            data = asdict(item)
            if isinstance(item, DrinkItem):
                data["uncertain"] = False
                data["attempts"] = 0
            records.append({"op": "add", "seq": seq, "item": data})
            if isinstance(item, DrinkItem) and item.uncertain:
                records.append({"op": "uncertain", "seq": seq})
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        if self._file is not None:
            self._file.close()
        os.replace(tmp, self.path)
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._file = open(self.path, "a", encoding="utf-8")
        self._finished_lines = sum(1 for r in records if r["op"] not in ("add", "flows"))
