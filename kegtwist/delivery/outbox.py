"""The durable outbox: drinks and temperatures waiting for the server.

Nothing is acknowledged before it is on disk.  The store is an append-only
journal of JSON lines in the state directory (:mod:`kegtwist.delivery.journal`:
the file; :mod:`kegtwist.delivery.records`: its lines), each line written
and fsync'd (all but ``done``, see :meth:`Outbox.delivered`) by the
outbox's writer (:class:`~kegtwist.durable.Writer`), off the reactor thread
in the daemon.  The outbox in memory changes at once; a record's durability
is a Deferred: :meth:`Outbox.sending` returns one (delivery posts only once
it has fired), and :meth:`Outbox.durable` fires once everything written so
far is on disk (the core drops a drink from its checkpoint only then).
Records waiting while a write is in flight go in the next one, with one
fsync.  The journal is compacted (rewritten atomically) when it holds
mostly finished entries.  One process at a time: the state
directory's ``lock`` file is held (flock) while the outbox is open.
Constructing an :class:`Outbox` touches nothing; :meth:`Outbox.open` locks,
replays and opens the journal.

What each record does is in :mod:`kegtwist.delivery.records`.

Temperatures are best effort: only the newest reading per sensor per
minute is kept, and at most ``max_temperatures`` of them (oldest dropped
first, counted).

When the disk fails (full, EIO, read-only) the journal is cut back to its
last whole record.  With a :class:`~kegtwist.durable.SyncWriter` (tests,
``kegbot-outbox``) the append raises ``OSError`` and nothing is applied,
so the caller retries it (the core keeps the drink, delivery retries the
step).  With the daemon's :class:`~kegtwist.durable.DiskWriter` the refusal
comes after memory changed: the records stay queued, in order, and are
written again with backoff; their Deferreds wait (the drink stays in the
core's checkpoint, the POST waits for its ``sending``).  A record that
cannot be read is never fatal and never lost: it is set aside in
``outbox.quarantine.jsonl`` (the journal module says how).
``open(read_only=True)`` (``kegbot-outbox list``/``dead``) writes nothing
at all and reports what a writer would set aside.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.logger import Logger

from kegtwist.core.model import RecordDrink, RecordTemperature
from kegtwist.delivery.journal import (
    JOURNAL,
    QUARANTINE,
    Journal,
    Unreadable,
    read_quarantine,
)
from kegtwist.delivery.records import (
    RECORD_FIELDS,
    DeadLetter,
    DrinkItem,
    Item,
    TemperatureItem,
    compacted,
    drink_item,
    item_from,
    parse_record,
    printable,
    record_date,
    serialize,
)
from kegtwist.delivery.state_lock import StateDirBusy, lock_state_dir
from kegtwist.durable import SyncWriter, Writer

__all__ = [
    "COMPACT_AFTER",
    "JOURNAL",
    "MAX_TEMPERATURES",
    "QUARANTINE",
    "RECORD_FIELDS",
    "DeadLetter",
    "DrinkItem",
    "Item",
    "Outbox",
    "OutboxStats",
    "StateDirBusy",
    "TemperatureItem",
    "Unreadable",
    "lock_state_dir",
    "parse_record",
    "printable",
    "read_quarantine",
    "record_date",
]

MAX_TEMPERATURES = 1000
COMPACT_AFTER = 2000  # finished journal lines before a rewrite


def _letter(item: DrinkItem, record: dict[str, Any], why: str = "") -> DeadLetter:
    """The dead letter a ``dead``, ``guest`` or ``note`` record makes of ``item``."""
    reason = f"{record.get('reason', '')}{why}"
    return DeadLetter(item, reason, record.get("status"), float(record.get("wall", 0)))


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
    journal_lines_skipped: int = 0  # unreadable lines found (set aside, never applied)
    journal_lines_quarantined: int = 0
    journal_write_errors: int = 0


@dataclass
class Outbox:
    """Pending items in delivery order, dead letters, and the journal."""

    directory: Path
    fsync: bool = True
    max_temperatures: int = MAX_TEMPERATURES
    stats: OutboxStats = field(default_factory=OutboxStats)
    # The seams a disk fails through (tests inject ENOSPC, EIO).
    os_write: Callable[[int, bytes], int] = field(default=os.write, repr=False)
    os_fsync: Callable[[int], None] = field(default=os.fsync, repr=False)
    # Where the journal's writes run (the daemon: a DiskWriter thread).
    writer: Writer = field(default_factory=SyncWriter, repr=False)

    log: ClassVar[Logger] = Logger()

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.pending: dict[int, Item] = {}
        self.dead: dict[int, DeadLetter] = {}
        self.delivered_ids: dict[int, int] = {}  # seq -> server drink id (recent)
        self.recent_flows: dict[int, None] = {}  # flow ids journaled lately, oldest first
        self.unreadable: list[Unreadable] = []  # found by open(): set aside (or to be)
        self.read_only = False
        self._seq = 0
        self._finished_lines = 0
        self._journal = Journal(self.directory, self, self.log)
        self._writable = False  # open() for writing (the fd may come later: a read-only disk)
        self._compacting = False  # a rewrite is queued
        self._lock: Any = None

    # --- opening ----------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._journal.path

    @property
    def quarantine_path(self) -> Path:
        return self._journal.quarantine_path

    def open(self, *, read_only: bool = False) -> None:
        """Take the state directory's lock, replay the journal, then keep it
        open for appending.

        Unreadable lines are set aside (see the module docstring); start-up
        goes on.  ``read_only``: replay only, writing nothing (no lock file
        created, no quarantine, no repair, no compaction); ``unreadable``
        lists what a writer would set aside."""
        self.read_only = read_only
        if read_only:
            self._lock = lock_state_dir(self.directory, shared=True)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = lock_state_dir(self.directory)
        data = self._journal.read()
        self.unreadable = self._journal.replay(data, self._apply, quiet=read_only)
        if read_only:
            return
        if self.unreadable:
            self._journal.set_aside(data, self.unreadable)
        self._journal.commits.closing = False
        self._writable = True
        try:
            self._journal.open_for_append()
        except OSError as e:
            # A read-only or failing disk: start all the same; every append
            # tries again (the core keeps drinks until one succeeds).
            self.stats.journal_write_errors += 1
            self.log.error(
                "Outbox journal {path} cannot be opened for writing ({error}); retrying at "
                "every write",
                path=str(self.path),
                error=e,
            )
            return
        if self._finished_lines > COMPACT_AFTER:
            self.compact()

    def close(self) -> defer.Deferred[None]:
        """What is queued gets one last go, then the journal is closed and
        the lock released (at once with a SyncWriter)."""
        self._writable = False
        closed = self._journal.close()

        def release(_: object) -> None:
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None

        return closed.addCallback(release)

    # --- journal ------------------------------------------------------------

    def _write(self, record: dict[str, Any], *, sync: bool = True) -> defer.Deferred[None]:
        """Append one record and apply it; the Deferred fires once it is on
        disk.  ``sync=False`` only for records whose loss a restart repairs
        by itself (see :meth:`delivered`).

        A write refused at once (disk full, EIO, read-only, with a
        SyncWriter) raises ``OSError`` with nothing applied and the journal
        cut back to its last whole record, so the caller may simply try
        again later (see the module docstring for a refusal that comes
        later)."""
        if not self._writable:
            raise RuntimeError("outbox is not open" + (" for writing" if self.read_only else ""))
        written = self._journal.append(serialize(record), sync=sync)
        self._apply(record)
        return written

    def durable(self) -> defer.Deferred[None]:
        """Fires once every record written so far is on disk."""
        return self._journal.commits.done()

    @property
    def write_error(self) -> str | None:
        """Why records wait in memory for the journal (retried), if they do."""
        return self._journal.commits.error

    def _apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        seq = int(record.get("seq", 0))
        self._seq = max(self._seq, abs(seq))
        if op == "add":
            item = item_from(record["item"])
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
                self.dead[-seq] = _letter(note, record, " (re-posted as a guest pour)")
                item_or_none.original_username = item_or_none.username
                item_or_none.username = None
                item_or_none.uncertain = False
        elif op == "note":
            self.dead[seq] = _letter(DrinkItem(**record["item"]), record)
        elif op == "dead":
            popped = self.pending.pop(seq, None)
            if isinstance(popped, DrinkItem):
                self.dead[seq] = _letter(popped, record)
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
        """Journal a completed pour (on disk once :meth:`durable` fires).
        Raises ``OSError`` (nothing journaled) if the disk refuses it at once."""
        seq = self._seq + 1
        date = record_date(drink.end_wall)
        # Two drinks that may still be sent never share a record date: it is
        # their key.  A dead letter counts: an operator may retry it.
        taken = {i.record_date for i in self.pending.values() if isinstance(i, DrinkItem)}
        taken.update(letter.item.record_date for letter in self.dead.values())
        end = drink.end_wall
        while date in taken:
            end += 1e-6
            date = record_date(end)
        item = drink_item(seq, drink, date)
        self._write({"op": "add", "seq": item.seq, "item": asdict(item)})
        self.stats.drinks_added += 1
        return item

    def add_temperature(self, reading: RecordTemperature) -> TemperatureItem:
        item = TemperatureItem(self._seq + 1, reading.sensor_name, reading.celsius, reading.wall)
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

    def sending(self, item: DrinkItem) -> defer.Deferred[None]:
        """About to send: from now on, a crash leaves the outcome unknown.
        Send only once the Deferred fired: a POST made before ``sending`` is
        durable could be sent again after a crash, not looked up."""
        return self._write({"op": "sending", "seq": item.seq})

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
        """Rewrite the journal as just what is pending or dead, atomically,
        in its place among the writes (at once with a SyncWriter).

        Never while the journal holds unreadable lines that are not yet in
        the quarantine file: it would erase them.  A failed rewrite leaves
        the old journal as it was."""
        if self.read_only:
            raise RuntimeError("outbox is open read-only")
        if self._compacting:
            return
        records = compacted(self.recent_flows, self.dead, self.pending)
        finished = sum(1 for r in records if r["op"] not in ("add", "flows"))
        before = self._finished_lines

        def then(problem: str | None) -> None:
            self._compacting = False
            if problem is not None:
                # The old journal stays whole; the next compaction tries again.
                self.log.warn("Outbox journal not compacted ({error})", error=problem)
                return
            self._finished_lines = finished + self._finished_lines - before

        self._compacting = True
        self._journal.rewrite(b"".join(serialize(r) for r in records), then)
