"""Disk work off the reactor thread, the exactly-once rules unchanged.

The writers themselves (:class:`DiskWriter`: one thread of its own, first
in first out; :class:`SyncWriter`: at once), then what runs on them: the
core's checkpoint (effects never wait for it; at most one write in flight,
the next state right after; a drink reaches the outbox only once a
checkpoint holding it is durable, and leaves the checkpoint only once the
outbox's record is durable), the outbox journal (group commit, a refusal
that comes late is retried, never half-applied on disk) and delivery (no
POST before its ``sending`` record is durable).  Most of it on a ``Clock``
with a writer whose work the test runs by hand; one test with a real
thread whose fsync blocks until the test lets it go.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from kegtwist.core import (
    Core,
    CoreConfig,
    RecordDrink,
    TapConfig,
    TokenLookupResult,
)
from kegtwist.core.inputs import MeterReading, TokenEvent
from kegtwist.daemon.core_service import STOP_WRITE_SECONDS, CoreService
from kegtwist.delivery.outbox import Outbox
from kegtwist.durable import DiskWriter, GroupCommit, SyncWriter, Writer

_T = TypeVar("_T")
WALL0 = 1_800_000_000.0
METER = "kegboard.flow0"
RELAY = "kegboard.relay0"
TOKEN = "0000111122223333"


class HandWriter(Writer):
    """Work waits until the test runs it, in order (a disk as slow as the
    test likes, on a Clock)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

    def submit(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        d: defer.Deferred[_T] = defer.Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_one(self) -> None:
        fn, args, d = self.jobs.pop(0)
        try:
            result = fn(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def run_all(self) -> int:
        done = 0
        while self.jobs:
            self.run_one()
            done += 1
        return done


@pytest.fixture
def logged() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        events.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def until(condition: Callable[[], bool], seconds: float = 5.0) -> defer.Deferred[None]:
    """Spin the real reactor until ``condition`` holds."""
    from twisted.internet import reactor

    async def poll() -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await task.deferLater(reactor, 0.005, lambda: None)

    return defer.Deferred.fromCoroutine(poll())


# --- the writers ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_disk_writer_runs_work_in_order_on_one_thread_of_its_own() -> Any:
    from twisted.internet import reactor

    writer = DiskWriter(reactor)
    threads: list[str] = []
    order: list[int] = []

    def work(n: int) -> int:
        threads.append(threading.current_thread().name)
        time.sleep(0.002 if n % 2 else 0)
        order.append(n)
        return n * 10

    def refuse() -> None:
        raise OSError(errno.EIO, "Input/output error")

    early = writer.submit(work, 0)  # before start: it waits for the thread
    assert not early.called
    writer.startService()
    try:
        results = yield defer.gatherResults(
            [early] + [writer.submit(work, n) for n in range(1, 20)]
        )
        assert results == [n * 10 for n in range(20)]
        assert order == list(range(20))  # first in, first out
        assert len(set(threads)) == 1 and "kegtwist-disk" in threads[0]
        assert threads[0] != threading.current_thread().name
        failed = yield writer.submit(refuse).addErrback(lambda f: f.value)
        assert isinstance(failed, OSError) and failed.errno == errno.EIO
        last = writer.submit(work, 99)
    finally:
        yield writer.stopService()  # waits for what was submitted
    assert last.called and order[-1] == 99
    after = writer.submit(work, 100)  # stopped: at once, on the caller's thread
    assert after.called and threads[-1] == threading.current_thread().name
    assert not any("kegtwist-disk" in t.name for t in threading.enumerate())


def test_sync_writer_has_answered_before_submit_returns() -> None:
    writer = SyncWriter()
    ok = writer.submit(lambda a, b: a + b, 1, 2)
    assert ok.called and ok.result == 3

    def refuse() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    errors: list[Any] = []
    writer.submit(refuse).addErrback(errors.append)
    assert errors and errors[0].check(OSError)


# --- group commit ---------------------------------------------------------------------


class File:
    """What a GroupCommit writes to: bytes, fsyncs and a switch to refuse."""

    def __init__(self) -> None:
        self.data = b""
        self.writes: list[tuple[bytes, bool]] = []
        self.refusing = False

    def write(self, data: bytes, sync: bool) -> None:
        if self.refusing:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.writes.append((data, sync))
        self.data += data


def test_records_that_wait_go_in_one_write_with_one_fsync(
    logged: list[tuple[str, str]],
) -> None:
    from twisted.logger import Logger

    writer, file = HandWriter(Clock()), File()
    commits = GroupCommit(writer, file.write, what="the file", log=Logger())
    fired: list[int] = []
    first = commits.append(b"a\n", sync=True)
    first.addCallback(lambda _: fired.append(1))
    # While "a" is being written, three more wait; "c" needs no fsync.
    for n, (line, sync) in enumerate(((b"b\n", True), (b"c\n", False), (b"d\n", True)), 2):
        commits.append(line, sync=sync).addCallback(lambda _, n=n: fired.append(n))
    everything = commits.done()
    assert len(writer.jobs) == 1 and fired == []
    writer.run_one()
    assert fired == [1] and file.writes == [(b"a\n", True)]
    writer.run_one()
    assert file.writes[1] == (b"b\nc\nd\n", True)  # one write, one fsync
    assert fired == [1, 2, 3, 4] and everything.called

    # Refused after the append returned: kept, in order, retried with backoff.
    file.refusing = True
    late = commits.append(b"e\n", sync=True)
    writer.run_one()
    commits.append(b"f\n", sync=True)
    assert not late.called and writer.jobs == [] and commits.waiting == 2
    [error] = [t for level, t in logged if level == "error"]
    assert "Cannot write the file" in error and "2 record(s)" not in error
    file.refusing = False
    assert writer.clock is not None
    writer.clock.advance(0.5)  # the backoff
    writer.run_one()
    assert late.called and file.data == b"a\nb\nc\nd\ne\nf\n"
    assert any("the file written again" in t for _, t in logged)


def test_a_refusal_before_append_returns_raises_and_appends_nothing() -> None:
    from twisted.logger import Logger

    file = File()
    commits = GroupCommit(SyncWriter(), file.write, what="the file", log=Logger())
    commits.append(b"a\n", sync=True)
    file.refusing = True
    with pytest.raises(OSError):
        commits.append(b"b\n", sync=True)
    file.refusing = False
    commits.append(b"c\n", sync=True)
    assert file.data == b"a\nc\n" and commits.accepted == 2 and commits.waiting == 0


# --- the outbox on a writer -------------------------------------------------------------


def drink(flow_id: int, ticks: int = 300, end: float = WALL0 + 5) -> RecordDrink:
    return RecordDrink(
        flow_id, METER, ticks, ticks * 0.5, "alice", "core.rfid", end - 5, end, 5.0, "idle"
    )


def journal_ops(box: Outbox) -> list[str]:
    if not box.path.exists():
        return []
    return [json.loads(line)["op"] for line in box.path.read_text().splitlines()]


def test_the_outbox_changes_at_once_and_its_records_follow_in_order(tmp_path: Path) -> None:
    writer = HandWriter(Clock())
    box = Outbox(tmp_path, writer=writer)
    box.open()
    item = box.add_drink(drink(1))
    sending = box.sending(item)
    durable = box.durable()
    assert [i.flow_id for i in box.drinks()] == [1] and box.knows_flow(1)
    assert box.drinks()[0].uncertain  # memory first
    assert journal_ops(box) == [] and not sending.called and not durable.called
    writer.run_all()
    assert journal_ops(box) == ["add", "sending"] and sending.called and durable.called
    closing = box.close()
    assert not closing.called  # the final fsync is queued like the rest
    writer.run_all()
    assert closing.called
    again = Outbox(tmp_path)
    again.open()  # the lock was released
    assert [(i.flow_id, i.uncertain) for i in again.drinks()] == [(1, True)]
    again.close()


def test_a_journal_refusal_after_the_fact_is_retried_and_never_half_written(
    tmp_path: Path, logged: list[tuple[str, str]]
) -> None:
    clock = Clock()
    writer = HandWriter(clock)
    refusing = [True]

    def write(fd: int, data: bytes) -> int:
        if refusing[0]:
            os.write(fd, data[:7])  # part of it, then a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    box = Outbox(tmp_path, writer=writer, os_write=write)
    box.open()
    box.add_drink(drink(1))
    durable = box.durable()
    writer.run_all()
    assert box.path.read_bytes() == b""  # cut back: never half a record
    assert not durable.called and [i.flow_id for i in box.drinks()] == [1]
    assert box.stats.journal_write_errors == 1
    assert box.write_error is not None and "No space left" in box.write_error
    box.add_drink(drink(2, end=WALL0 + 9))  # waits behind it
    clock.advance(0.4)
    assert writer.jobs == []
    clock.advance(0.1)
    writer.run_all()  # refused again: the backoff doubles
    clock.advance(0.9)
    assert writer.jobs == []
    refusing[0] = False
    clock.advance(0.1)
    writer.run_all()
    assert durable.called and journal_ops(box) == ["add", "add"]
    assert box.write_error is None
    errors = [t for level, t in logged if level == "error"]
    assert len(errors) == 1 and "retrying with backoff" in errors[0]
    box.close()
    writer.run_all()


def test_compaction_takes_its_place_among_the_writes(tmp_path: Path) -> None:
    writer = HandWriter(Clock())
    box = Outbox(tmp_path, writer=writer)
    box.open()
    items = [box.add_drink(drink(n, end=WALL0 + n)) for n in range(1, 4)]
    for item in items[:2]:
        box.sending(item)
        box.delivered(item, item.seq)
    box.compact()
    box.sending(items[2])  # after the rewrite
    writer.run_all()
    assert journal_ops(box) == ["flows", "add", "sending"]
    box.close()
    writer.run_all()
    again = Outbox(tmp_path)
    again.open()
    assert [(i.flow_id, i.uncertain) for i in again.drinks()] == [(3, True)]
    assert again.knows_flow(1)
    again.close()


# --- delivery: the POST waits for its durable ``sending`` -----------------------------


def test_no_post_leaves_before_its_sending_record_is_durable(tmp_path: Path) -> None:
    from fakeserver import API_KEY, FakeKegbotServer
    from test_delivery_rules import URL, Api, Network

    from kegtwist.delivery.client import KegbotServerClient
    from kegtwist.delivery.service import DeliveryService

    clock = Clock()
    writer = HandWriter(clock)
    synced: list[bytes] = []  # what an fsync made durable, each time

    def fsync(fd: int) -> None:
        synced.append((tmp_path / "outbox.jsonl").read_bytes())

    box = Outbox(tmp_path, writer=writer, os_fsync=fsync)
    box.open()
    fake = FakeKegbotServer()
    net = Network(Api(fake))
    at_post: list[list[str]] = []  # the durable journal's ops when each POST left

    def request(method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
        if method == "POST":
            durable = synced[-1].decode().splitlines() if synced else []
            at_post.append([json.loads(line)["op"] for line in durable])
        return net.request(method, url, **kwargs)

    client = KegbotServerClient(clock, URL, API_KEY, request=request)
    delivery = DeliveryService(box, client, clock)
    delivery.startService()
    box.add_drink(drink(1))
    delivery.wake()
    assert at_post == [] and fake.requests == []  # "add" and "sending" are queued, not on disk
    writer.run_one()  # "add"
    assert at_post == [] and fake.requests == []
    writer.run_one()  # "sending": durable, then the POST
    assert at_post == [["add", "sending"]] and len(fake.drinks) == 1
    writer.run_all()
    assert journal_ops(box) == ["add", "sending", "done"] and len(box) == 0
    assert len(synced) == 2  # "done" waits for the next fsync (or the close)
    stopping = delivery.stopService()
    assert stopping.called
    box.close()
    writer.run_all()


# --- the core's checkpoint --------------------------------------------------------------


class Rig:
    """A core service with a captive reader on a valved tap, its outbox,
    both on ``writer``; the checkpoint's fsync is ``fsync``."""

    def __init__(
        self,
        tmp_path: Path,
        writer: Writer,
        clock: Clock,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.clock = clock
        self.state = tmp_path
        self.outbox = Outbox(tmp_path, writer=writer)
        self.outbox.open()
        self.valves: list[tuple[str, bool]] = []
        self.at_handover: list[dict[str, Any]] = []
        wall = lambda: WALL0 + clock.seconds()  # noqa: E731
        core = Core(
            CoreConfig(taps=(TapConfig(METER, 0.5, RELAY),)), first_flow_id=int(wall() * 1000)
        )
        self.service = CoreService(
            core,
            clock,
            relay_driver=self.relay,
            token_resolver=lambda device, value: defer.succeed(
                TokenLookupResult(device, value, "alice", enabled=True)
            ),
            monotonic=clock.seconds,
            wall=wall,
            checkpoint_path=tmp_path / "pours.json",
            already_recorded=self.outbox.knows_flow,
            fsync=fsync,
            writer=writer,
            outbox_durable=self.outbox.durable,
            listeners=[self.to_outbox],
        )
        self.service.startService()

    def relay(self, name: str, on: bool) -> bool:
        self.valves.append((name, on))
        return True

    def to_outbox(self, effect: object) -> None:
        if isinstance(effect, RecordDrink):
            self.at_handover.append(self.checkpoint())
            self.outbox.add_drink(effect)

    def checkpoint(self) -> dict[str, Any]:
        path = self.state / "pours.json"
        state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return state

    reading = 0

    def pour(self, ticks: int) -> None:
        """alice's card on the reader, ``ticks`` poured, the card taken away."""
        feed = self.service.feed
        feed(TokenEvent("core.onewire", TOKEN, True, METER))
        feed(MeterReading(METER, self.reading))
        self.reading += ticks
        feed(MeterReading(METER, self.reading))
        feed(TokenEvent("core.onewire", TOKEN, False, METER))


def test_a_valve_closes_while_the_checkpoint_waits_and_drinks_wait_for_it(
    tmp_path: Path,
) -> None:
    """On a Clock, the writer run by hand: the close is sent at once; the
    drink is handed over only once the write holding it is done, and
    leaves the checkpoint only once the outbox's ``add`` is durable."""
    clock = Clock()
    writer = HandWriter(clock)
    rig = Rig(tmp_path, writer, clock)
    rig.pour(200)
    assert rig.valves == [(RELAY, True), (RELAY, False)]  # no write has run yet
    assert rig.outbox.drinks() == [] and len(writer.jobs) == 1
    rig.service.feed(MeterReading(METER, 230))  # a new pour meanwhile: the next write
    writer.run_one()  # the checkpoint holding the drink: now the outbox
    [at_handover] = rig.at_handover
    assert at_handover["meters"] == {METER: 200}
    assert [d["ticks"] for d in at_handover["drinks"]] == [200]
    assert [d.ticks for d in rig.outbox.drinks()] == [200]  # in memory; its add is queued
    assert len(writer.jobs) == 1
    clock.advance(0.5)  # the new pour's checkpoint, queued behind the add
    assert len(writer.jobs) == 2
    writer.run_one()  # the add
    writer.run_one()  # the newer state: still holding the drink (serialized before the add)
    assert rig.checkpoint()["meters"] == {METER: 230}
    assert rig.checkpoint()["drinks"] == at_handover["drinks"]
    clock.advance(0.5)
    writer.run_all()
    assert rig.checkpoint()["drinks"] == []  # it may leave the checkpoint now
    assert writer.jobs == []


def test_at_most_one_checkpoint_write_in_flight(tmp_path: Path) -> None:
    clock = Clock()
    writer = HandWriter(clock)
    rig = Rig(tmp_path, writer, clock)
    rig.service.feed(MeterReading(METER, 0))
    clock.advance(0.5)
    assert len(writer.jobs) == 1
    for reading in range(10, 100, 10):  # 4.5 s of readings while the disk is stuck
        rig.service.feed(MeterReading(METER, reading))
        clock.advance(0.5)
    assert len(writer.jobs) == 1  # still the first write, no pile-up
    writer.run_one()
    assert len(writer.jobs) == 1  # the newest state, once
    writer.run_one()
    assert rig.checkpoint()["pours"][0]["ticks"] == 90
    clock.advance(0.5)
    assert writer.jobs == []  # nothing changed since


def test_a_stop_waits_for_the_writes_then_says_what_is_unwritten(
    tmp_path: Path, logged: list[tuple[str, str]]
) -> None:
    clock = Clock()
    writer = HandWriter(clock)
    rig = Rig(tmp_path, writer, clock)
    rig.pour(120)
    writer.run_all()
    writer.run_all()
    assert [d.ticks for d in rig.outbox.drinks()] == [120]
    rig.service.feed(TokenEvent("core.onewire", TOKEN, True, METER))
    rig.service.feed(MeterReading(METER, 170))
    stopping = rig.service.stopService()
    assert stopping is not None and not stopping.called
    assert rig.valves[-1] == (RELAY, False)  # closed before any write
    writer.run_all()  # the checkpoint with the stop's drink
    writer.run_all()  # its add; then the last checkpoint
    writer.run_all()
    assert stopping.called and rig.service.unwritten == []
    assert [d.ticks for d in rig.outbox.drinks()] == [120, 50]
    assert rig.checkpoint()["drinks"] == []

    # A disk that never answers: the stop ends after its bound, and says so.
    stuck = Rig(tmp_path / "stuck", HandWriter(clock), clock)
    stuck.service.feed(MeterReading(METER, 0))
    stuck.service.feed(MeterReading(METER, 80))
    stopping = stuck.service.stopService()
    assert stopping is not None and not stopping.called
    clock.advance(STOP_WRITE_SECONDS)
    assert stopping.called
    assert [d.ticks for d in stuck.service.unwritten] == [80]
    [summary] = [t for level, t in logged if level == "error" and t.startswith("Stopping with")]
    assert "1 not written anywhere" in summary


@pytest_twisted.inlineCallbacks
def test_the_reactor_runs_while_a_checkpoint_fsync_blocks(tmp_path: Path) -> Any:
    """A real DiskWriter thread whose fsync blocks until the test lets it
    go: the valve closes, the reactor keeps turning, and no drink reaches
    the outbox until the checkpoint holding it is durable."""
    from twisted.internet import reactor

    blocked, release = threading.Event(), threading.Event()
    hold = [False]

    def fsync(fd: int) -> None:
        if hold[0]:
            blocked.set()
            assert release.wait(10), "never released"
        os.fsync(fd)

    writer = DiskWriter(reactor)
    writer.startService()
    clock = Clock()  # the core's timers; the writer answers on the reactor
    ticks: list[float] = []
    probe = task.LoopingCall(lambda: ticks.append(time.monotonic()))
    probe.start(0.005)
    try:
        rig = Rig(tmp_path, writer, clock, fsync=fsync)
        rig.service.feed(MeterReading(METER, 0))
        clock.advance(0.5)
        yield until(lambda: rig.checkpoint().get("meters") == {METER: 0})

        hold[0] = True
        rig.pour(250)
        assert rig.valves[-1] == (RELAY, False)  # at once
        yield until(blocked.is_set)  # the checkpoint holding the drink: stuck in fsync
        before = len(ticks)
        rig.pour(40)  # alice again, while the disk is stuck
        assert rig.valves[-2:] == [(RELAY, True), (RELAY, False)]
        yield task.deferLater(reactor, 0.2, lambda: None)
        assert len(ticks) - before >= 10  # the reactor turned all along
        assert not release.is_set() and rig.outbox.drinks() == [] and rig.at_handover == []
        assert journal_ops(rig.outbox) == []

        hold[0] = False
        release.set()
        yield until(lambda: len(rig.outbox.drinks()) == 2)
        first, second = rig.at_handover
        assert first["meters"] == {METER: 250}
        assert [d["ticks"] for d in first["drinks"]] == [250]
        assert second["meters"] == {METER: 290}  # the write after it (group commit)
        assert [d.ticks for d in rig.outbox.drinks()] == [250, 40]
        yield until(lambda: journal_ops(rig.outbox) == ["add", "add"])

        def dropped() -> bool:
            # The next checkpoint after the outbox is durable drops the
            # drinks; on a busy machine that may be a later 0.5 s tick.
            clock.advance(0.5)
            return rig.checkpoint().get("drinks") == []

        yield until(dropped)
        yield rig.service.stopService()
        yield rig.outbox.close()
    finally:
        release.set()
        probe.stop()
        yield writer.stopService()
