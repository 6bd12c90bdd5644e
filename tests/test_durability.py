"""Whatever the disk does, a drink that was logged is recorded exactly once.

Faults are injected through the write/fsync seams of the outbox and of the
core service (a disk that fills up, an fsync that fails with EIO), time is
a Clock; no root, no sleeps.  The process tests run the daemon as owners
do, one of them with its state dir on a real 64 KiB tmpfs that fills up.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from kegtwist.core import Core, CoreConfig, RecordDrink, TapConfig
from kegtwist.core.inputs import MeterReading
from kegtwist.daemon.core_service import CoreService
from kegtwist.delivery.outbox import QUARANTINE, Outbox

WALL0 = 1_800_000_000.0
METER = "k.flow0"


class Disk:
    """write/fsync for a file system that can fill up or fail.

    ``room``: bytes still accepted once ``full`` (a partial write, then
    ENOSPC); ``refuse``: fail only writes containing this text."""

    def __init__(self) -> None:
        self.full = False
        self.room = 0
        self.eio = False
        self.refuse: bytes | None = None
        self.failures = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.refuse is not None and self.refuse in data:
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.full:
            if self.room <= 0:
                self.failures += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            n = os.write(fd, data[: self.room])
            self.room -= n
            return n
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.eio:
            self.failures += 1
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


@pytest.fixture
def logged() -> Iterator[list[tuple[str, str]]]:
    """(level, text) of every log event while the test runs."""
    events: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        events.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def run_for(clock: Clock, seconds: float) -> None:
    """Time passes in small steps, as it does (one advance fires a timer once)."""
    for _ in range(int(seconds * 4)):
        clock.advance(0.25)


class Process:
    """A core service and its outbox, as one daemon process holds them."""

    def __init__(
        self, state: Path, checkpoint_disk: Disk, journal_disk: Disk, started: float = 1000
    ) -> None:
        self.clock = Clock()
        self.clock.advance(started)
        self.state = state
        self.outbox = Outbox(state, os_write=journal_disk.write, os_fsync=journal_disk.fsync)
        self.outbox.open()
        wall = lambda: WALL0 + self.clock.seconds()  # noqa: E731
        core = Core(
            CoreConfig(taps=(TapConfig(METER, 2.0, None),)),
            first_flow_id=int(wall() * 1000),
        )
        self.service = CoreService(
            core,
            self.clock,
            monotonic=self.clock.seconds,
            wall=wall,
            checkpoint_path=state / "pours.json",
            already_recorded=self.outbox.knows_flow,
            write=checkpoint_disk.write,
            fsync=checkpoint_disk.fsync,
        )
        self.on_disk_at_handover: list[dict[str, Any]] = []
        self.service.listeners.append(self.to_outbox)
        self.service.startService()

    def to_outbox(self, effect: object) -> None:
        if isinstance(effect, RecordDrink):
            self.on_disk_at_handover.append(self.checkpoint())
            self.outbox.add_drink(effect)

    def checkpoint(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.state / "pours.json").read_text())
        return state

    def pour_to(self, reading: int) -> None:
        """The board's counter reaches ``reading``; the pour ends (idle)."""
        self.service.feed(MeterReading(METER, reading))
        self.run_for(11)

    def run_for(self, seconds: float) -> None:
        run_for(self.clock, seconds)

    def crash(self) -> None:
        """kill -9: nothing more is written (its clock never moves again); the
        lock goes with the process."""
        self.outbox.close()

    def journaled_ticks(self) -> list[int]:
        again = Outbox(self.state)
        again.open(read_only=True)
        return [d.ticks for d in again.drinks()]


# --- (4) the checkpoint cannot be rewritten ---------------------------------


@pytest.mark.parametrize("disk_back_before_restart", [False, True])
def test_no_drink_reaches_the_outbox_before_its_checkpoint_and_no_tick_counts_twice(
    tmp_path: Path, logged: list[tuple[str, str]], disk_back_before_restart: bool
) -> None:
    """Owner's bug (4): ENOSPC on the checkpoint, yet the 300-tick drink was
    journaled; after a restart the next 10-tick pour was recorded as 310."""
    checkpoint_disk = Disk()
    one = Process(tmp_path, checkpoint_disk, Disk())
    one.service.feed(MeterReading(METER, 0))  # the baseline
    one.run_for(1)
    assert one.checkpoint()["meters"] == {METER: 0}

    checkpoint_disk.full = True
    one.pour_to(300)
    assert any("Drink: flow" in text and "300 ticks" in text for _, text in logged)
    assert one.outbox.drinks() == []  # logged, but its checkpoint is not durable
    one.run_for(120)  # retried with backoff, failing all along
    assert checkpoint_disk.failures >= 5
    assert one.outbox.drinks() == []
    assert one.checkpoint()["meters"] == {METER: 0}  # the old one, whole
    assert not (tmp_path / "pours.tmp").exists()
    [error] = [t for lvl, t in logged if lvl == "error" and "Cannot write checkpoint" in t]
    assert "retrying with backoff" in error  # said once, not at every retry

    if disk_back_before_restart:
        checkpoint_disk.full = False
        one.run_for(60)  # the next retry
        [at_handover] = one.on_disk_at_handover
        # Durable before the outbox saw it: the baseline with its ticks, and the drink.
        assert at_handover["meters"] == {METER: 300}
        assert [d["ticks"] for d in at_handover["drinks"]] == [300]
        assert [d.ticks for d in one.outbox.drinks()] == [300]
    one.crash()

    two = Process(tmp_path, Disk(), Disk(), started=5000)
    two.pour_to(310)  # 10 more ticks after the restart
    two.crash()
    ticks = two.journaled_ticks()
    assert sum(ticks) == 310  # every tick once: not 300 + 310
    assert ticks == ([300, 10] if disk_back_before_restart else [310])


def test_an_fsync_error_on_the_checkpoint_is_a_failed_write(tmp_path: Path) -> None:
    checkpoint_disk = Disk()
    one = Process(tmp_path, checkpoint_disk, Disk())
    one.service.feed(MeterReading(METER, 0))
    one.run_for(1)
    checkpoint_disk.eio = True
    one.pour_to(200)
    assert one.outbox.drinks() == []
    checkpoint_disk.eio = False
    one.run_for(30)  # the next retry
    assert [d.ticks for d in one.outbox.drinks()] == [200]
    assert one.on_disk_at_handover[0]["meters"] == {METER: 200}


# --- a journal append that fails ---------------------------------------------


@pytest.mark.parametrize("then", ["disk back", "kill -9", "stop"])
def test_a_drink_the_journal_refused_stays_pending_and_in_the_checkpoint(
    tmp_path: Path, logged: list[tuple[str, str]], then: str
) -> None:
    journal_disk = Disk()
    one = Process(tmp_path, Disk(), journal_disk)
    one.service.feed(MeterReading(METER, 0))
    one.run_for(1)
    journal = tmp_path / "outbox.jsonl"
    before = journal.read_bytes()

    journal_disk.full = True
    journal_disk.room = 25  # part of the record gets written, then ENOSPC
    one.pour_to(200)
    assert one.outbox.drinks() == [] and one.outbox.pending == {}  # nothing half-applied
    assert journal.read_bytes() == before  # the partial record was cut back off
    assert [d["ticks"] for d in one.checkpoint()["drinks"]] == [200]
    one.pour_to(300)  # pours go on
    assert one.outbox.drinks() == []
    assert [d["ticks"] for d in one.checkpoint()["drinks"]] == [200, 100]
    assert one.checkpoint()["meters"] == {METER: 300}
    errors = [t for lvl, t in logged if lvl == "error" and "to the outbox" in t]
    assert len(errors) == 1 and "retrying with backoff" in errors[0]

    if then == "disk back":
        journal_disk.full = False
        one.run_for(60)
        assert [d.ticks for d in one.outbox.drinks()] == [200, 100]  # in order, once
        one.run_for(1)
        assert one.checkpoint()["drinks"] == []
        one.crash()
    elif then == "kill -9":
        one.crash()
    else:
        one.service.stopService()
        assert [d.ticks for d in one.service.unwritten] == [200, 100]
        [line] = [t for lvl, t in logged if lvl == "error" and t.startswith("Stopping with")]
        assert "2 drink(s) not written to the outbox" in line
        assert "2 kept in the checkpoint" in line and "0 not written anywhere" in line
        one.outbox.close()

    two = Process(tmp_path, Disk(), Disk(), started=5000)  # recovers them from the checkpoint
    two.pour_to(340)
    two.crash()
    assert two.journaled_ticks() == [200, 100, 40]


def test_a_failed_append_or_fsync_applies_nothing_and_leaves_the_journal_whole(
    tmp_path: Path,
) -> None:
    from test_outbox import drink

    disk = Disk()
    box = Outbox(tmp_path, os_write=disk.write, os_fsync=disk.fsync)
    box.open()
    box.add_drink(drink(1))
    whole = box.path.read_bytes()
    disk.full, disk.room = True, 30
    with pytest.raises(OSError):
        box.add_drink(drink(2, end=WALL0 + 9))
    disk.full, disk.eio = False, True
    with pytest.raises(OSError):
        box.add_drink(drink(2, end=WALL0 + 9))
    assert box.path.read_bytes() == whole
    assert [i.flow_id for i in box.drinks()] == [1] and not box.knows_flow(2)
    assert box.stats.journal_write_errors == 2
    disk.eio = False
    item = box.add_drink(drink(2, end=WALL0 + 9))
    assert item.seq == 2  # no sequence number burnt
    box.close()
    again = Outbox(tmp_path)
    again.open()
    assert [i.flow_id for i in again.drinks()] == [1, 2]
    again.close()


# --- (3) the state dir fills up, then a clean stop --------------------------


BUILD_CONFIG = """
[[taps]]
meter = "kegboard.flow0"
ml_per_tick = 0.5
"""


def build_daemon(state: Path, clock: Clock) -> Any:
    from twisted.internet import reactor

    from kegtwist.daemon.compose import build
    from kegtwist.daemon.options import Options

    config = state.parent / "kegbot.toml"
    config.write_text(BUILD_CONFIG)
    options = Options()
    options.parseOptions(
        ["--config", str(config), "--kegboard", "none", "--state-dir", str(state),
         "--api-url", "none", "--redis-url", "none"]
    )  # fmt: skip
    daemon = build(
        options, reactor, clock=clock, monotonic=clock.seconds, wall=lambda: WALL0 + clock.seconds()
    )
    daemon.startService()
    return daemon


@pytest_twisted.inlineCallbacks
def test_a_full_state_dir_then_a_stop_loses_no_drink_and_exits_non_zero(
    tmp_path: Path, logged: list[tuple[str, str]]
) -> Any:
    """Owner's bug (3): 13 drinks logged, 9 in the outbox, "Stopping outbox
    failed", "Stopped cleanly"; 4 drinks gone, and the stale checkpoint
    then discarded the next reading as a jump."""
    state = tmp_path / "state"
    clock = Clock()
    clock.advance(1000)
    daemon = build_daemon(state, clock)
    journal_disk, checkpoint_disk = Disk(), Disk()
    daemon.outbox.os_write = journal_disk.write
    daemon.core.os_write = checkpoint_disk.write
    meter = "kegboard.flow0"
    daemon.core.feed(MeterReading(meter, 0))
    reading = 0
    for n in range(13):
        if n == 9:
            journal_disk.full = True  # the journal first...
        if n == 12:
            checkpoint_disk.full = True  # ...then the checkpoint too
        reading += 100
        daemon.core.feed(MeterReading(meter, reading))
        run_for(clock, 11)
    assert len([t for _, t in logged if t.startswith("Drink: flow")]) == 13
    assert len(daemon.outbox.drinks()) == 9
    yield daemon.stopService()

    assert daemon.exit_status == 1
    texts = [t for _, t in logged]
    assert "Stopped cleanly" not in texts
    errors = [t for lvl, t in logged if lvl == "error"]
    [summary] = [t for t in errors if t.startswith("Stopping with")]
    assert "4 drink(s) not written to the outbox" in summary
    assert "3 kept in the checkpoint" in summary and "1 not written anywhere" in summary
    [lost] = [t for t in errors if t.startswith("Not written anywhere")]
    assert "100 ticks" in lost and meter in lost
    assert any(t.startswith("Stopped with errors") for t in errors)
    assert not any("Stopping outbox failed" in t for t in texts)

    # The disk has room again; the board counted 50 more meanwhile.
    clock.advance(100)
    again = build_daemon(state, clock)
    assert [d.ticks for d in again.outbox.drinks()] == [100] * 12  # 9 + 3 from the checkpoint
    again.core.feed(MeterReading(meter, reading + 50))
    run_for(clock, 11)
    ticks = [d.ticks for d in again.outbox.drinks()]
    assert ticks == [100] * 12 + [150]  # the drink written nowhere came back from the board
    assert sum(ticks) == reading + 50  # every tick once
    assert not any("discarded" in t for _, t in logged)  # no jump
    yield again.stopService()
    assert again.exit_status == 0


# --- the journal: torn tails and unreadable records --------------------------


def journal_with(path: Path, *lines: str, newline_at_end: bool = True) -> None:
    path.write_bytes(("\n".join(lines) + ("\n" if newline_at_end else "")).encode())


def add_line(flow_id: int, seq: int, ticks: Any = 300, **extra: Any) -> str:
    """An ``add`` record as the outbox writes it (``extra``: fields it never writes)."""
    box_item = {
        "seq": seq,
        "flow_id": flow_id,
        "meter_name": "kegboard.flow0",
        "ticks": ticks,
        "volume_ml": 150.0,
        "username": None,
        "auth_device": None,
        "start_wall": WALL0 + flow_id - 5,
        "end_wall": WALL0 + flow_id,
        "duration_seconds": 5.0,
        "reason": "idle",
        "record_date": f"2027-01-15T08:00:{flow_id:02d}.000000+00:00",
        "kind": "drink",
        **extra,
    }
    return json.dumps({"op": "add", "seq": seq, "item": box_item}, separators=(",", ":"))


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    from test_outbox import drink

    journal = tmp_path / "outbox.jsonl"
    journal_with(journal, add_line(1, 1), add_line(2, 2, 120), newline_at_end=False)
    torn = journal.read_bytes()
    box = Outbox(tmp_path)
    box.open()
    assert [(i.flow_id, i.ticks) for i in box.drinks()] == [(1, 300), (2, 120)]
    assert journal.read_bytes() == torn and box.unreadable == []
    assert not (tmp_path / QUARANTINE).exists()
    box.add_drink(drink(3, end=WALL0 + 30))  # the newline comes first
    box.close()
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["op"] == "add" for line in lines)
    again = Outbox(tmp_path)
    again.open()
    assert [i.flow_id for i in again.drinks()] == [1, 2, 3]
    again.close()


BAD_LINES = {
    2: add_line(7, 2, tickz=300),
    3: "garbage: \x00 not json",
    5: '{"op":"dead","reason":"x"}',
    6: '{"op":"frobnicate","seq":1}',
    7: add_line(9, 7, ticks="300"),
}


def bad_journal(path: Path) -> None:
    lines = {1: add_line(1, 1), 4: add_line(4, 4, 120), 8: add_line(8, 8, 45), **BAD_LINES}
    journal_with(path, *(lines[n] for n in sorted(lines)))


def test_unreadable_records_are_set_aside_logged_and_start_up_goes_on(
    tmp_path: Path, logged: list[tuple[str, str]]
) -> None:
    journal = tmp_path / "outbox.jsonl"
    bad_journal(journal)
    box = Outbox(tmp_path)
    box.open()
    assert [(i.flow_id, i.ticks) for i in box.drinks()] == [(1, 300), (4, 120), (8, 45)]
    entries = [json.loads(x) for x in (tmp_path / QUARANTINE).read_text().splitlines()]
    assert {e["line"]: e["text"] for e in entries} == BAD_LINES  # moved whole
    reasons = {e["line"]: e["reason"] for e in entries}
    assert "unknown field 'tickz'" in reasons[2]
    assert reasons[3].startswith("not JSON")
    assert "missing field 'seq' for dead" in reasons[5]
    assert "unknown op 'frobnicate'" in reasons[6]
    assert "field 'ticks' of the drink is '300'" in reasons[7]
    errors = [t for lvl, t in logged if lvl == "error" and "unreadable" in t]
    assert len(errors) == 5
    assert any("tickz" in t and "line 2" in t for t in errors)
    assert any("garbage:" in t and "line 3" in t for t in errors)
    # Out of the journal now, only the good records are left (in order).
    assert [json.loads(x)["item"]["flow_id"] for x in journal.read_text().splitlines()] == [1, 4, 8]
    box.add_drink(RecordDrink(10, "k.flow0", 60, 30.0, None, None, WALL0, WALL0 + 40, 40.0, "idle"))
    box.compact()
    box = reopen(box)
    assert [i.flow_id for i in box.drinks()] == [1, 4, 8, 10]
    assert len((tmp_path / QUARANTINE).read_text().splitlines()) == 5  # not twice
    box.close()


def reopen(box: Outbox) -> Outbox:
    box.close()
    again = Outbox(box.directory)
    again.open()
    return again


def test_compaction_never_erases_a_line_before_it_is_in_the_quarantine(
    tmp_path: Path, logged: list[tuple[str, str]]
) -> None:
    journal = tmp_path / "outbox.jsonl"
    bad_journal(journal)
    original = journal.read_bytes()
    disk = Disk()
    disk.full = True  # not even the quarantine file can be written
    box = Outbox(tmp_path, os_write=disk.write)
    box.open()  # start-up goes on
    assert [i.flow_id for i in box.drinks()] == [1, 4, 8]
    assert journal.read_bytes() == original
    assert any(lvl == "error" and "Cannot write" in t and QUARANTINE in t for lvl, t in logged)
    box.compact()  # would erase them: it waits
    assert journal.read_bytes() == original
    disk.full = False
    box.compact()  # set aside first, then compacted
    entries = [json.loads(x) for x in (tmp_path / QUARANTINE).read_text().splitlines()]
    assert {e["line"]: e["text"] for e in entries} == BAD_LINES
    assert "tickz" not in journal.read_text()
    box = reopen(box)
    assert [i.flow_id for i in box.drinks()] == [1, 4, 8]
    box.close()


def test_a_torn_last_line_is_set_aside_not_silently_cut(tmp_path: Path) -> None:
    journal = tmp_path / "outbox.jsonl"
    journal_with(journal, add_line(1, 1), add_line(2, 2)[:40], newline_at_end=False)
    box = Outbox(tmp_path)
    box.open()
    assert [i.flow_id for i in box.drinks()] == [1]
    [entry] = [json.loads(x) for x in (tmp_path / QUARANTINE).read_text().splitlines()]
    assert entry["line"] == 2 and entry["text"] == add_line(2, 2)[:40]
    assert "without its newline" in entry["reason"]
    assert journal.read_text() == add_line(1, 1) + "\n"
    box.close()


# --- delivery when the journal refuses a step --------------------------------


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_delivery_retries_a_refused_done_without_sending_twice(tmp_path: Path) -> Any:
    from fakeserver import API_KEY, FakeKegbotServer
    from test_delivery import until
    from test_outbox import drink
    from twisted.internet import reactor

    from kegtwist.delivery.client import KegbotServerClient
    from kegtwist.delivery.service import DeliveryService

    fake = FakeKegbotServer()
    fake.listen(reactor)
    client = KegbotServerClient(reactor, fake.url, API_KEY)
    disk = Disk()
    box = Outbox(tmp_path, os_write=disk.write)
    box.open()
    clock = Clock()
    delivery = DeliveryService(box, client, clock)
    try:
        box.add_drink(drink(1))
        disk.refuse = b'"op":"done"'  # the server records it; the journal refuses "done"
        delivery.startService()
        yield until(lambda: disk.failures >= 1)
        assert len(fake.drinks) == 1 and len(box) == 1
        disk.refuse = None
        clock.advance(200)  # the backoff
        yield until(lambda: len(box) == 0)
        assert len(fake.drinks) == 1 and len([r for r in fake.requests if r[0] == "POST"]) == 1
        assert box.stats.found_on_server == 1
    finally:
        yield delivery.stopService()
        box.close()
        yield client.close()
        yield fake.close()


# --- as owners run it -------------------------------------------------------


FAST = """
[pours]
idle_seconds = 1
"""


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_daemon_starts_on_a_journal_with_unreadable_records_and_delivers_the_good_drinks(
    tmp_path: Path, daemons: Callable[..., Any], fake_server: Any
) -> Any:
    from daemonkit import eventually, stop
    from fakeserver import API_KEY

    state = tmp_path / "state"
    state.mkdir()
    journal_with(
        state / "outbox.jsonl",
        add_line(1, 1, 300),
        add_line(2, 2, 200, tickz=200),
        "not json at all, from a bad SD card",
        add_line(3, 3, 120),
    )
    daemon = daemons("--kegboard", "none", "--api-url", fake_server.url, "--api-key", API_KEY)
    yield eventually(lambda: len(fake_server.drinks) == 2, "the good drinks", daemon)
    assert sorted(d["ticks"] for d in fake_server.drinks) == [120, 300]
    log = daemon.log
    assert "Traceback" not in log
    assert "line 2 unreadable" in log and "tickz" in log
    assert "line 3 unreadable" in log and "not json at all, from a bad SD card" in log
    quarantined = [json.loads(x) for x in (state / QUARANTINE).read_text().splitlines()]
    assert [e["line"] for e in quarantined] == [2, 3]
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log


class Tmpfs:
    """A tiny real file system: 64 KiB of tmpfs, mounted for one test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fillers: list[Path] = []

    def fill(self) -> None:
        """Take every free byte, as a runaway log would."""
        filler = self.path / f"filler-{len(self.fillers)}"
        self.fillers.append(filler)
        with open(filler, "wb", buffering=0) as f:
            for size in (4096, 1):
                while True:
                    try:
                        f.write(b"x" * size)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC
                        break

    def free(self) -> None:
        for filler in self.fillers:
            filler.unlink()
        self.fillers = []

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "state"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.integration
def test_a_state_dir_remounted_read_only_refuses_appends_and_then_takes_them(
    tmpfs: Tmpfs,
) -> None:
    """EROFS, as after a file system error: start-up goes on, a refused
    append applies nothing, and the same drink is taken once it is writable."""
    from test_outbox import drink

    box = Outbox(tmpfs.path)
    box.open()
    box.add_drink(drink(1))
    box.close()
    tmpfs.remount("ro")
    box = Outbox(tmpfs.path)
    box.open()  # the lock file and the journal cannot be opened for writing
    assert [i.flow_id for i in box.drinks()] == [1]
    with pytest.raises(OSError) as refused:
        box.add_drink(drink(2, end=WALL0 + 9))
    assert refused.value.errno == errno.EROFS
    assert [i.flow_id for i in box.drinks()] == [1]
    tmpfs.remount("rw")
    box.add_drink(drink(2, end=WALL0 + 9))
    box = reopen(box)
    assert [i.flow_id for i in box.drinks()] == [1, 2]
    box.close()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_real_full_disk_loses_no_tick_and_counts_none_twice(
    tmp_path: Path, tmpfs: Tmpfs, daemons: Callable[..., Any], fake_server: Any, pty_board: Any
) -> Any:
    from daemonkit import eventually, stop
    from fakeserver import API_KEY

    config = tmp_path / "kegbot.toml"
    config.write_text(FAST)
    args = ("--config", str(config), "--kegboard", pty_board.path,
            "--api-url", fake_server.url, "--api-key", API_KEY)  # fmt: skip
    checkpoint = tmpfs.path / "pours.json"

    def on_disk() -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(checkpoint.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def ticks() -> list[int]:
        return [d["ticks"] for d in fake_server.drinks]

    daemon = daemons(*args, state_dir=tmpfs.path)
    yield eventually(lambda: f"connected on {pty_board.path}" in daemon.log, "the hello", daemon)
    yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "taps", daemon)
    pty_board.pour("flow0", 0)
    yield eventually(lambda: "kegboard.flow0" in on_disk().get("meters", {}), "baseline", daemon)

    # The disk fills while the daemon runs; a pour ends; then room comes back.
    tmpfs.fill()
    pty_board.pour("flow0", 300)
    yield eventually(lambda: "Drink: flow" in daemon.log, "the drink's end", daemon)
    assert "Cannot write checkpoint" in daemon.log and "300 ticks" in daemon.log
    assert ticks() == []
    assert [r for r in daemon.journal() if r["op"] == "add"] == []  # never before its checkpoint
    tmpfs.free()
    yield eventually(lambda: ticks() == [300], "the drink, after a retry", daemon, seconds=20)
    yield eventually(lambda: on_disk().get("drinks") == [], "the checkpoint", daemon)

    # Full again; a pour ends; the daemon is stopped before room comes back.
    tmpfs.fill()
    pty_board.pour("flow0", 120)
    yield eventually(lambda: daemon.log.count("Drink: flow") == 2, "the drink's end", daemon)
    assert daemon.log.count("Cannot write checkpoint") == 2
    yield stop(daemon)
    assert daemon.proc.returncode != 0, daemon.log
    assert "Stopping with 1 drink(s) not written to the outbox" in daemon.log
    assert "Not written anywhere: the drink for flow" in daemon.log
    assert "Stopped cleanly" not in daemon.log

    tmpfs.free()
    again = daemons(*args, state_dir=tmpfs.path)
    yield eventually(lambda: f"connected on {pty_board.path}" in again.log, "the hello", again)
    yield eventually(lambda: "Taps: kegboard.flow0" in again.log, "taps", again)
    pty_board.pour("flow0", 30)
    yield eventually(lambda: sum(ticks()) == 450, "every tick", again, seconds=20)
    assert ticks() == [300, 150]  # 120 + 30: the board's count carried them, once
    yield stop(again)
    assert again.proc.returncode == 0, again.log
