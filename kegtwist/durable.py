"""Files that survive a crash: written whole or not at all, and written
off the reactor thread.

One implementation for every file the daemon rewrites (the pour
checkpoint, the outbox's compacted journal, the tap cache, the list of
local boards): tmp, write, fsync, rename, fsync of the directory.  The
``write`` and ``fsync`` seams are how tests make a disk fail (ENOSPC,
EIO); ``fsync=None`` skips syncing (tests of speed only).

An fsync takes 5-100 ms on an SD card, more on a busy one: done on the
reactor thread it stops everything (readings, valve commands, timers).  A
:class:`Writer` runs file work in the order it is submitted and answers
with a Deferred: :class:`DiskWriter` on its own single thread (one FIFO
for the checkpoint and the outbox journal, so their writes never overlap
and never reorder), :class:`SyncWriter` at once, for tests on a ``Clock``.
A writer is a service: the daemon starts it before the outbox and the core
and stops it after them, once their last writes are done.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from kegtwist.backoff import Backoff

_T = TypeVar("_T")


def write_all(write: Callable[[int, bytes], int], fd: int, data: bytes) -> None:
    """All of ``data``, or OSError: a short write that makes no progress is
    a full disk."""
    view = memoryview(data)
    while view:
        n = write(fd, view.tobytes())
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def fsync_dir(directory: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename or a new file in ``directory`` itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    write: Callable[[int, bytes], int] = os.write,
    fsync: Callable[[int], None] | None = os.fsync,
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the
    new file, never a torn one: tmp, fsync, rename, fsync of the directory.
    ``write`` and ``fsync`` are the seams a failing disk is tested through."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(write, fd, data)
            if fsync is not None:
                fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()  # frees the space it took
        except OSError:
            pass
        raise
    if fsync is not None:
        fsync_dir(path.parent, fsync)  # the rename itself


class Writer(Service):
    """Runs file work in submission order; a Deferred says when each is done."""

    name = "disk-writer"
    clock: IReactorTime | None = None
    """For retries with backoff after a failed write (None: no timers)."""

    def submit(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        raise NotImplementedError


class SyncWriter(Writer):
    """Runs the work at once, on the caller's thread: the Deferred it returns
    has already fired (tests on a ``Clock``, tools)."""

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.clock = clock

    def submit(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        try:
            result = fn(*args)
        except Exception:
            return defer.fail()
        return defer.succeed(result)


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(*args, **kwargs)
    thread.daemon = True
    return thread


class DiskWriter(Writer):
    """One thread of its own (never the reactor's pool, whose threads DNS
    and others share), taking work first in, first out.  Work submitted
    before it starts waits for it; work submitted after it stopped runs at
    once, on the caller's thread.  If the reactor stops without stopping
    it, the thread ends after the reactor (its work done), as the
    reactor's own pool does; and it never keeps the process alive (a
    daemon thread: a start-up that fails exits, a write that never returns
    is a crash, which the checkpoint and the journal are made for)."""

    def __init__(self, reactor: Any, name: str = "kegtwist-disk") -> None:
        self.reactor = reactor
        self.clock = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._stopped = False
        self._trigger: Any = None

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        if not self._pool.started:
            self._pool.start()
            self._trigger = self.reactor.addSystemEventTrigger("after", "shutdown", self._stop_pool)

    def submit(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        if self._stopped:
            return SyncWriter().submit(fn, *args)
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def stopService(self) -> defer.Deferred[None]:
        """Once the work already submitted is done, the thread ends."""
        super().stopService()
        if not self._pool.started:
            self._stopped = True
            return defer.succeed(None)
        done: defer.Deferred[None] = self.submit(lambda: None)

        def stop(_: object) -> None:
            if self._trigger is not None:
                self.reactor.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            self._stop_pool()

        return done.addBoth(stop)

    def _stop_pool(self) -> None:
        self._stopped = True
        if self._pool.started:
            self._pool.stop()  # joins the thread, idle by now


@dataclass
class _Entry:
    index: int
    data: bytes = b""
    sync: bool = False
    job: Callable[[], object] | None = None  # solitary work in the file's order
    then: Callable[[object], None] | None = None  # the job's result, or its Failure


class GroupCommit:
    """Appends to one file in order, written by a :class:`Writer`: at most
    one write in flight; what is appended meanwhile waits and goes in the
    next write, with one fsync for all of it (if any of it asked for one).

    :meth:`append` takes the data at once and returns a Deferred that fires
    once it is written (fsync'd if ``sync``), in order: when it fires,
    everything appended before is written too.  A write the disk refuses
    before :meth:`append` returns (a :class:`SyncWriter`) raises its
    ``OSError`` there, as if nothing had been appended.  One it refuses
    later is kept and written again after a backoff (0.5 s doubling to
    30 s), said once at error level; its Deferreds wait.  :meth:`run` puts
    other work for the same file (a rewrite, the close) in the same order.
    ``write(data, sync)`` runs on the writer's thread."""

    MAX_BATCH = 1 << 20

    def __init__(
        self,
        writer: Writer,
        write: Callable[[bytes, bool], None],
        *,
        what: str,
        log: Logger,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.writer = writer
        self._write = write
        self.what = what
        self.log = log
        self._on_failure = on_failure
        self.backoff = Backoff(initial=0.5, factor=2.0, maximum=30.0)
        self._queue: list[_Entry] = []  # the head is in flight while busy
        self._busy = False
        self._retry: IDelayedCall | None = None
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._appending: _Entry | None = None
        self._refused: BaseException | None = None
        self.closing = False  # a last go: what fails now is dropped (and said)
        self.accepted = 0  # entries taken so far, numbered from 1
        self.written = 0  # every entry up to this number is done
        self.error: str | None = None

    @property
    def waiting(self) -> int:
        """Appends not yet written."""
        return sum(1 for e in self._queue if e.job is None)

    def append(self, data: bytes, *, sync: bool) -> defer.Deferred[None]:
        entry = self._take(_Entry(0, data, sync))
        self._appending, self._refused = entry, None
        try:
            self._kick()
        finally:
            self._appending = None
        refused, self._refused = self._refused, None
        if refused is not None:
            raise refused
        return self.done(entry.index)

    def run(self, job: Callable[[], object], then: Callable[[object], None]) -> None:
        """``job`` on the writer once everything taken before it is done;
        ``then`` (on the reactor thread) gets its result or Failure."""
        self._take(_Entry(0, job=job, then=then))
        self._kick()

    def done(self, index: int | None = None) -> defer.Deferred[None]:
        """Fires once entry ``index`` (default: every entry taken so far),
        and every one before it, is done."""
        index = self.accepted if index is None else index
        if self.written >= index:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._forget)
        self._waiters.append((index, waiter))
        return waiter

    def retry_now(self) -> None:
        """Try what waits at once, without waiting out the backoff."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._kick()

    def _take(self, entry: _Entry) -> _Entry:
        self.accepted += 1
        entry.index = self.accepted
        self._queue.append(entry)
        return entry

    def _forget(self, waiter: defer.Deferred[None]) -> None:
        self._waiters = [(i, d) for i, d in self._waiters if d is not waiter]

    def _kick(self) -> None:
        if self._busy or not self._queue or (self._retry is not None and self._retry.active()):
            return
        head = self._queue[0]
        batch = [head]
        if head.job is not None:
            d: defer.Deferred[Any] = self.writer.submit(head.job)
        else:
            size = len(head.data)
            for entry in self._queue[1:]:
                if entry.job is not None or size + len(entry.data) > self.MAX_BATCH:
                    break
                batch.append(entry)
                size += len(entry.data)
            data = b"".join(e.data for e in batch)
            d = self.writer.submit(self._write, data, any(e.sync for e in batch))
        self._busy = True
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _succeeded(self, result: object, batch: list[_Entry]) -> None:
        self._busy = False
        del self._queue[: len(batch)]
        self.written = batch[-1].index
        head = batch[0]
        if head.job is None and self.error is not None:
            self.log.info("{what} written again", what=self.what)
            self.error = None
        if head.job is None:
            self.backoff.reset()
        if head.then is not None:
            head.then(result)
        self._fire()
        self._kick()

    def _failed(self, failure: Failure, batch: list[_Entry]) -> None:
        self._busy = False
        head = batch[0]
        if head.job is not None:  # its own business: it is told, the file goes on
            del self._queue[0]
            self.written = head.index
            if head.then is not None:
                head.then(failure)
            self._fire()
            self._kick()
            return
        error = failure.value if failure.value is not None else RuntimeError("write failed")
        if self._on_failure is not None:
            self._on_failure(error)
        if len(batch) == 1 and head is self._appending:
            # Refused before append() returned: as if never appended.
            self._queue.pop(0)
            self.accepted -= 1
            self._refused = error
            return
        if not isinstance(error, OSError):
            self.log.failure("Writing {what} failed", failure, what=self.what)
        if self.closing:
            del self._queue[: len(batch)]
            dropped = {e.index for e in batch}
            self._waiters = [(i, d) for i, d in self._waiters if i not in dropped]
            self.log.error(
                "Stopping: {count} record(s) could not be written to {what} ({error})",
                count=len(batch),
                what=self.what,
                error=error,
            )
            self._kick()
            return
        if self.error is None:
            self.log.error(
                "Cannot write {what} ({error}); {count} record(s) wait in memory, retrying "
                "with backoff",
                what=self.what,
                error=error,
                count=self.waiting,
            )
        self.error = str(error)
        clock = self.writer.clock
        if clock is not None:
            self._retry = clock.callLater(self.backoff.next_delay(), self.retry_now)

    def _fire(self) -> None:
        ready = [d for i, d in self._waiters if i <= self.written]
        self._waiters = [(i, d) for i, d in self._waiters if i > self.written]
        for waiter in ready:
            waiter.callback(None)
