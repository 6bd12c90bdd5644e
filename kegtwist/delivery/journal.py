"""The outbox journal as a file: appends that are whole or absent, torn
tails, the quarantine, atomic rewrites, and the state directory's lock.

The journal is ``outbox.jsonl`` in the state directory, one record per line
(:mod:`kegtwist.delivery.records`).  Writes go through the host's seams
(``os_write``, ``os_fsync``: tests inject ENOSPC and EIO through them).

* **An append is whole or absent.**  A failed write or fsync (disk full,
  EIO, read-only) cuts the journal back to its last whole record and
  raises ``OSError``; the caller applies nothing and tries again later.
* **A torn tail.**  A complete last record a power cut left without its
  newline is kept (the newline is written before the next append).  A last
  line cut short is unreadable like any other (below), its reason saying so.
* **The quarantine.**  A line that cannot be read is never fatal and never
  lost: it is moved whole to ``outbox.quarantine.jsonl`` (appended,
  fsync'd, with the line's number and the reason) before it leaves the
  journal; until that is durable it stays in the journal, and compaction
  (which would erase it) waits.
* **Rewrites are atomic** (tmp, fsync, rename, directory fsync): a failed
  one leaves the old journal whole.
* **Off the reactor thread.**  Appends, rewrites and the final fsync run on
  the host's :class:`~kegtwist.durable.Writer`, in order, through a
  :class:`~kegtwist.durable.GroupCommit`: records that wait while a write
  is in flight go together in the next one, with one fsync.  An append
  refused later than it was made (a :class:`~kegtwist.durable.DiskWriter`)
  stays queued and is written again after a backoff: the file is always a
  prefix of what was appended, in order.

One process at a time: :func:`~kegtwist.delivery.state_lock.lock_state_dir`.

Nothing here touches the disk before :meth:`Journal.read` or
:meth:`Journal.open_for_append` is called.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kegtwist.delivery.records import parse_record, printable
from kegtwist.durable import GroupCommit, Writer, fsync_dir, write_all, write_atomic

JOURNAL = "outbox.jsonl"
QUARANTINE = "outbox.quarantine.jsonl"


@dataclass
class Unreadable:
    """A journal line that cannot be read: set aside whole, never applied."""

    number: int  # the line's number in the journal, from 1
    text: str  # the whole line (bytes that are not UTF-8 kept as surrogate escapes)
    reason: str
    start: int  # byte offsets of the line in the journal, its newline included
    end: int


@dataclass(frozen=True)
class Line:
    """One line of the journal as read (blank lines are not listed)."""

    number: int
    text: str
    start: int
    end: int  # after its newline (the end of the data for a last line without one)
    last: bool  # no newline after it: a complete record, or a write cut short

    def unreadable(self, reason: str) -> Unreadable:
        if self.last:
            reason += "; the last line, without its newline: a write cut short"
        return Unreadable(self.number, self.text, reason, self.start, self.end)


def lines(data: bytes) -> Iterator[Line]:
    """The non-blank lines of journal ``data``, with their byte offsets."""
    raw_lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(raw_lines, 1):
        start, offset = offset, offset + len(raw) + 1
        text = raw.decode("utf-8", "surrogateescape")
        if text.strip():
            yield Line(number, text, start, min(offset, len(data)), number == len(raw_lines))


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


class JournalCounters(Protocol):
    journal_lines_skipped: int
    journal_lines_quarantined: int
    journal_write_errors: int


class JournalHost(Protocol):
    """Whose journal it is (an :class:`~kegtwist.delivery.outbox.Outbox`):
    its seams are read at every write, so a test may swap them any time."""

    @property
    def fsync(self) -> bool: ...
    @property
    def os_write(self) -> Callable[[int, bytes], int]: ...
    @property
    def os_fsync(self) -> Callable[[int], None]: ...
    @property
    def stats(self) -> JournalCounters: ...
    @property
    def writer(self) -> Writer: ...


class Journal:
    """The file, its append position and what waits to be set aside."""

    def __init__(self, directory: Path, host: JournalHost, log: Logger) -> None:
        self.directory = directory
        self.host = host
        self.log = log
        self.fd: int | None = None
        self.size = 0  # bytes of the journal that hold whole, acknowledged records
        self.cut_back = False  # a failed append may have left bytes after ``size``
        self.needs_newline = False  # the journal's last line has no newline yet
        self.unquarantined: list[Unreadable] = []  # compaction must wait for these
        self.commits = GroupCommit(
            host.writer,
            self.write_now,
            what=f"the outbox journal {self.path}",
            log=log,
            on_failure=self._count_failure,
        )

    def _count_failure(self, error: BaseException) -> None:
        self.host.stats.journal_write_errors += 1

    @property
    def path(self) -> Path:
        return self.directory / JOURNAL

    @property
    def quarantine_path(self) -> Path:
        return self.directory / QUARANTINE

    def read(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        self.needs_newline = bool(data) and not data.endswith(b"\n")
        return data

    def replay(
        self, data: bytes, apply: Callable[[dict[str, Any]], None], *, quiet: bool = False
    ) -> list[Unreadable]:
        """``apply`` every readable record of ``data``; return the unreadable
        lines (logged, unless ``quiet``: a reader that sets nothing aside)."""
        bad: list[Unreadable] = []
        for line in lines(data):
            record, reason = parse_record(line.text)
            if record is not None:
                try:
                    apply(record)
                    continue
                except (KeyError, TypeError, ValueError) as e:  # never fatal at start-up
                    reason = f"cannot be applied ({e!r})"
            bad.append(line.unreadable(reason))
            self.host.stats.journal_lines_skipped += 1
        if not quiet:
            for unreadable in bad:
                self.log.error(
                    "Outbox journal line {number} unreadable ({reason}), set aside in "
                    "{quarantine}: {text}",
                    number=unreadable.number,
                    reason=unreadable.reason,
                    quarantine=QUARANTINE,
                    text=printable(unreadable.text, 2000),
                )
        return bad

    def open_for_append(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.cut_back = False

    def close(self) -> defer.Deferred[None]:
        """Once what is queued is written (one last go: what the disk still
        refuses is dropped, and said), the final fsync and the close."""
        closed: defer.Deferred[None] = defer.Deferred()

        def then(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("Closing the outbox journal failed", result)
            elif isinstance(result, OSError):
                # Harmless: a lost ``done`` leaves its drink uncertain, so
                # delivery looks it up on the server instead of resending.
                self.log.warn("Outbox journal: final fsync failed ({error})", error=result)
            closed.callback(None)

        self.commits.closing = True
        self.commits.retry_now()
        self.commits.run(self._close_now, then)
        return closed

    def _close_now(self) -> OSError | None:
        """(On the writer.)"""
        if self.fd is None:
            return None
        fd, self.fd = self.fd, None
        try:
            if self.host.fsync:
                self.host.os_fsync(fd)  # the unsynced ``done`` records
        except OSError as e:
            return e
        finally:
            os.close(fd)
        return None

    def append(self, line: bytes, *, sync: bool) -> defer.Deferred[None]:
        """Queue ``line``: the Deferred fires once it is on disk (fsync'd if
        ``sync``), and everything appended before it too.  ``OSError`` if
        the disk refused it before this returned (nothing appended)."""
        return self.commits.append(line, sync=sync)

    def write_now(self, data: bytes, sync: bool) -> None:
        """(On the writer.)  ``data`` is on disk (fsync'd if ``sync``), or
        ``OSError`` with the journal cut back to its last whole record."""
        if self.fd is None:
            self.open_for_append()
        assert self.fd is not None
        fd = self.fd
        if self.cut_back:
            os.ftruncate(fd, self.size)
            self.cut_back = False
        if self.needs_newline:
            data = b"\n" + data
        try:
            write_all(self.host.os_write, fd, data)
            if self.host.fsync and sync:
                self.host.os_fsync(fd)
        except OSError:
            self.cut_back = True  # part of it may be there: never half a record
            try:
                os.ftruncate(fd, self.size)
                self.cut_back = False
            except OSError:
                pass
            raise
        self.size += len(data)
        self.needs_newline = False

    def replace(self, data: bytes) -> None:
        """The journal becomes ``data`` (compaction), or ``OSError`` with
        the old one whole."""
        self.atomic_write(self.path, data)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.needs_newline = False
        try:
            self.open_for_append()
        except OSError:
            pass  # the next append opens it

    def set_aside(self, data: bytes, unreadable: list[Unreadable]) -> None:
        """Move unreadable lines to the quarantine file, then out of the
        journal.  Until the first step is durable they stay in the journal
        (and compaction, which would erase them, waits)."""
        try:
            self.quarantine(unreadable)
        except OSError as e:
            self.host.stats.journal_write_errors += 1
            self.unquarantined = list(unreadable)
            self.log.error(
                "Cannot write {quarantine} ({error}): {count} unreadable line(s) stay in the "
                "journal, which is not compacted until they are set aside",
                quarantine=str(self.quarantine_path),
                error=e,
                count=len(unreadable),
            )
            return
        drop = {(line.start, line.end) for line in unreadable}
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
            self.atomic_write(self.path, rest)
        except OSError as e:
            # They are safe in the quarantine file; the next start finds
            # them again and does not set them aside twice.
            self.host.stats.journal_write_errors += 1
            self.log.warn(
                "Cannot rewrite {path} without the unreadable line(s) ({error}); "
                "they stay in it, already set aside",
                path=str(self.path),
                error=e,
            )
            return
        self.needs_newline = False

    def rewrite(self, data: bytes, then: Callable[[str | None], None]) -> None:
        """The journal becomes ``data`` (compaction) once everything queued
        before is written; ``then`` gets None, or why it did not.  Never
        while lines that cannot be read are not yet in the quarantine file:
        it would erase them (they are set aside first)."""

        def done(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("Compacting the outbox journal failed", result)
                then("failed")
                return
            if isinstance(result, str):
                self.host.stats.journal_write_errors += 1
            then(result if isinstance(result, str) else None)

        self.commits.run(lambda: self._rewrite_now(data), done)

    def _rewrite_now(self, data: bytes) -> str | None:
        """(On the writer.)"""
        if self.unquarantined:
            try:
                self.quarantine(self.unquarantined)
            except OSError as e:
                return f"its unreadable lines cannot be set aside yet ({e})"
            self.unquarantined = []
        try:
            self.replace(data)
        except OSError as e:
            return str(e)
        return None

    def quarantine(self, lines: list[Unreadable]) -> None:
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
                write_all(self.host.os_write, fd, data)
                self.host.os_fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        if not existed:
            fsync_dir(self.directory, self.host.os_fsync)
        self.host.stats.journal_lines_quarantined += len(entries)

    def atomic_write(self, path: Path, data: bytes) -> None:
        """``path`` becomes ``data`` or stays as it was (tmp, fsync, rename)."""
        write_atomic(
            path, data, self.host.os_write, self.host.os_fsync if self.host.fsync else None
        )
