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

When the disk fails (full, EIO, read-only) a record is either on disk or
not applied at all: an append that fails is cut back off the journal and
raises ``OSError``, leaving memory as it was, so the caller retries it
(the core keeps the drink, delivery retries the step).  A complete last
record a power cut left without its newline is kept (the newline is added
before the next append).  A record that cannot be read (not JSON, an
unknown op, an unknown or missing field for its op, a wrong type) is never
fatal and never lost: it is logged with its content and moved whole to
``outbox.quarantine.jsonl`` (appended, fsync'd, with the line's number and
the reason) before it leaves the journal; compaction waits until that is
done.  ``open(read_only=True)`` (``kegbot-outbox list``/``dead``) writes
nothing at all and reports what a writer would set aside.
"""

from __future__ import annotations

import errno
import json
import os
import time
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from twisted.logger import Logger

from kegtwist.core.model import RecordDrink, RecordTemperature
from kegtwist.errors import StartupError

JOURNAL = "outbox.jsonl"
QUARANTINE = "outbox.quarantine.jsonl"
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


def lock_state_dir(directory: Path, *, shared: bool = False) -> Any:
    """An exclusive lock on ``directory/lock`` for as long as the returned
    file stays open: two processes appending to one journal would corrupt
    it, and two cores would record every pour twice.

    ``shared``: a reader's lock, taken without creating or writing anything
    (None if no lock file exists: no daemon ever ran there)."""
    import fcntl

    f: Any
    if shared:
        try:
            f = open(directory / "lock", "rb")
        except FileNotFoundError:
            return None
    else:
        try:
            f = open(directory / "lock", "a+")
        except OSError as e:  # a read-only state dir: the lock file may still be there
            try:
                f = open(directory / "lock", "rb")
            except OSError:
                raise e from None
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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
class Unreadable:
    """A journal line that cannot be read: set aside whole, never applied."""

    number: int  # the line's number in the journal, from 1
    text: str  # the whole line (bytes that are not UTF-8 kept as surrogate escapes)
    reason: str
    start: int  # byte offsets of the line in the journal, its newline included
    end: int


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


def printable(text: str, limit: int | None = None) -> str:
    """A journal line as it may be shown (bytes that were not UTF-8 as \\x..)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_quarantine(directory: Path | str) -> list[dict[str, Any]]:
    """What was set aside, oldest first (never writes)."""
    path = Path(directory) / QUARANTINE
    try:
        data = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    entries = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            entry = {"line": None, "reason": "unreadable quarantine entry", "text": line}
        entries.append(entry)
    return entries


def _write_all(write: Callable[[int, bytes], int], fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = write(fd, view.tobytes())
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _fsync_dir(directory: Path, fsync: Callable[[int], None]) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


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
        self._fd: int | None = None
        self._writable = False  # open() for writing (the fd may come later: a read-only disk)
        self._size = 0  # bytes of the journal that hold whole, acknowledged records
        self._cut_back = False  # a failed append may have left bytes after _size
        self._needs_newline = False  # the journal's last line has no newline yet
        self._unquarantined: list[Unreadable] = []  # compaction must wait for these
        self._lock: Any = None

    # --- opening ----------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.directory / JOURNAL

    @property
    def quarantine_path(self) -> Path:
        return self.directory / QUARANTINE

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
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        self.unreadable = self._replay(data)
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        if read_only:
            return
        if self.unreadable:
            self._set_aside(data)
        self._writable = True
        try:
            self._open_fd()
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

    def _open_fd(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._cut_back = False

    def close(self) -> None:
        self._writable = False
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self.fsync:
                    self.os_fsync(fd)  # the unsynced ``done`` records
            except OSError as e:
                # Harmless: a lost ``done`` leaves its drink uncertain, so
                # delivery looks it up on the server instead of resending.
                self.log.warn("Outbox journal: final fsync failed ({error})", error=e)
            finally:
                os.close(fd)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _replay(self, data: bytes) -> list[Unreadable]:
        """Apply every readable record; return the unreadable lines."""
        bad: list[Unreadable] = []
        lines = data.split(b"\n")
        offset = 0
        for number, raw in enumerate(lines, 1):
            start, offset = offset, offset + len(raw) + 1
            text = raw.decode("utf-8", "surrogateescape")
            if not text.strip():
                continue
            record, reason = parse_record(text)
            if record is not None:
                try:
                    self._apply(record)
                    continue
                except (KeyError, TypeError, ValueError) as e:  # never fatal at start-up
                    reason = f"cannot be applied ({e!r})"
            if number == len(lines):
                reason += "; the last line, without its newline: a write cut short"
            bad.append(Unreadable(number, text, reason, start, min(offset, len(data))))
            self.stats.journal_lines_skipped += 1
        if not self.read_only:
            for line in bad:
                self.log.error(
                    "Outbox journal line {number} unreadable ({reason}), set aside in "
                    "{quarantine}: {text}",
                    number=line.number,
                    reason=line.reason,
                    quarantine=QUARANTINE,
                    text=printable(line.text, 2000),
                )
        return bad

    def _set_aside(self, data: bytes) -> None:
        """Move unreadable lines to the quarantine file, then out of the
        journal.  Until the first step is durable they stay in the journal
        (and compaction, which would erase them, waits)."""
        try:
            self._quarantine(self.unreadable)
        except OSError as e:
            self.stats.journal_write_errors += 1
            self._unquarantined = list(self.unreadable)
            self.log.error(
                "Cannot write {quarantine} ({error}): {count} unreadable line(s) stay in the "
                "journal, which is not compacted until they are set aside",
                quarantine=str(self.quarantine_path),
                error=e,
                count=len(self.unreadable),
            )
            return
        drop = {(line.start, line.end) for line in self.unreadable}
        kept: list[bytes] = []
        position = 0
        for start, end in sorted(drop):
            kept.append(data[position:start])
            position = end
        kept.append(data[position:])
        rest = b"".join(kept)
        if rest and not rest.endswith(b"\n"):
            rest += b"\n"
        try:
            self._atomic_write(self.path, rest)
        except OSError as e:
            # They are safe in the quarantine file; the next start finds
            # them again and does not set them aside twice.
            self.stats.journal_write_errors += 1
            self.log.warn(
                "Cannot rewrite {path} without the unreadable line(s) ({error}); "
                "they stay in it, already set aside",
                path=str(self.path),
                error=e,
            )
            return
        self._needs_newline = False

    def _quarantine(self, lines: list[Unreadable]) -> None:
        """Append ``lines`` to the quarantine file, fsync'd; lines already
        there (same journal file, number and text) are not added again."""
        try:
            journal_id = f"{os.stat(self.path).st_ino}"
        except OSError:
            journal_id = ""
        seen = {
            (e.get("journal_id"), e.get("line"), e.get("text"))
            for e in read_quarantine(self.directory)
        }
        entries = [
            {
                "line": line.number,
                "reason": line.reason,
                "text": line.text,
                "journal": JOURNAL,
                "journal_id": journal_id,
                "wall": time.time(),
            }
            for line in lines
            if (journal_id, line.number, line.text) not in seen
        ]
        if not entries:
            return
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries).encode(
            "utf-8", "surrogateescape"
        )
        existed = self.quarantine_path.exists()
        fd = os.open(self.quarantine_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(self.os_write, fd, data)
                self.os_fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        if not existed:
            _fsync_dir(self.directory, self.os_fsync)
        self.stats.journal_lines_quarantined += len(entries)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        """``path`` becomes ``data`` or stays as it was (tmp, fsync, rename)."""
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(self.os_write, fd, data)
                if self.fsync:
                    self.os_fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        if self.fsync:
            _fsync_dir(self.directory, self.os_fsync)

    # --- journal ------------------------------------------------------------

    def _write(self, record: dict[str, Any], *, sync: bool = True) -> None:
        """Append one record, then apply it; ``sync=False`` only for records
        whose loss a restart repairs by itself (see :meth:`delivered`).

        A failed write (disk full, EIO, read-only) raises ``OSError`` with
        nothing applied and the journal cut back to its last whole record,
        so the caller may simply try again later."""
        if not self._writable:
            raise RuntimeError("outbox is not open" + (" for writing" if self.read_only else ""))
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self._append(line, sync=sync)
        self._apply(record)

    def _append(self, line: bytes, *, sync: bool) -> None:
        try:
            if self._fd is None:
                self._open_fd()
            assert self._fd is not None
            fd = self._fd
            if self._cut_back:
                os.ftruncate(fd, self._size)
                self._cut_back = False
            data = b"\n" + line if self._needs_newline else line
            try:
                _write_all(self.os_write, fd, data)
                if self.fsync and sync:
                    self.os_fsync(fd)
            except OSError:
                self._cut_back = True  # part of it may be there: never half a record
                try:
                    os.ftruncate(fd, self._size)
                    self._cut_back = False
                except OSError:
                    pass
                raise
        except OSError:
            self.stats.journal_write_errors += 1
            raise
        self._size += len(data)
        self._needs_newline = False

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
        """Journal a completed pour; returns once it is on disk.  Raises
        ``OSError`` (nothing journaled) if the disk refuses it."""
        seq = self._seq + 1
        date = record_date(drink.end_wall)
        # Two pending drinks never share a record date: it is their key.
        taken = {i.record_date for i in self.pending.values() if isinstance(i, DrinkItem)}
        end = drink.end_wall
        while date in taken:
            end += 1e-6
            date = record_date(end)
        item = DrinkItem(
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
        """Rewrite the journal as just what is pending or dead, atomically.

        Never while the journal holds unreadable lines that are not yet in
        the quarantine file: it would erase them.  A failed rewrite leaves
        the old journal as it was."""
        if self.read_only:
            raise RuntimeError("outbox is open read-only")
        if self._unquarantined:
            try:
                self._quarantine(self._unquarantined)
            except OSError as e:
                self.stats.journal_write_errors += 1
                self.log.warn(
                    "Outbox journal not compacted: its unreadable lines cannot be set aside "
                    "yet ({error})",
                    error=e,
                )
                return
            self._unquarantined = []
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
        journal = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        try:
            self._atomic_write(self.path, journal)
        except OSError as e:
            # The old journal stays whole; the next compaction tries again.
            self.stats.journal_write_errors += 1
            self.log.warn("Outbox journal not compacted ({error})", error=e)
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._needs_newline = False
        self._finished_lines = sum(1 for r in records if r["op"] not in ("add", "flows"))
        try:
            self._open_fd()
        except OSError:
            pass  # the next append opens it
