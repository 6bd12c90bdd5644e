"""The outbox journal replays consistently, wherever a power cut tears it.

A Hypothesis state machine drives a real :class:`Outbox` in a temporary
directory through the operations delivery and the operator perform (drinks
and temperatures added, ``sending``, ``uncertain``, ``certain``, ``done``,
dead letters, guest re-posts, drops, retries, discards, compaction), and
cuts the journal at any byte offset: a copy is reopened to check it, or the
outbox itself "loses power" there and carries on from what it replays.

Each append is watched through the outbox's ``os_write`` seam, so the test
knows where every record starts and ends and what the outbox held just
before it.  After a cut at byte ``k`` the replayed outbox must be:

* made of what was added: every item present (pending or dead) is one that
  was added, field for field; no item is both pending and dead; a guest
  re-post's note names the drinker it was added with;
* exactly what the outbox held once the last complete record before ``k``
  was written (a record whose newline alone was cut is complete): nothing
  journaled before it is lost, nothing after it appears; compaction writes
  its file atomically, so a cut inside it is only held to the rules above;
* never a delivered drink again, unless the cut took its ``done`` record;
* with a torn tail set aside: the partial last line is quarantined whole
  and leaves the journal; opening never raises.

Between cuts the outbox itself keeps its items in pour order, and a drink
is uncertain exactly when the test sent it (``sending``/``uncertain``) and
nothing settled it since.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from kegtwist.core.model import RecordDrink, RecordTemperature
from kegtwist.delivery.outbox import QUARANTINE, DrinkItem, Item, Outbox, TemperatureItem

WALL0 = 1_800_000_000.0
MUTABLE = {"uncertain", "attempts", "username", "original_username"}


def identity(item: Item) -> tuple[tuple[str, Any], ...]:
    """What an item was added with and never changes."""
    return tuple((k, v) for k, v in asdict(item).items() if k not in MUTABLE)


@dataclass(frozen=True)
class State:
    """What an outbox holds, as replay must rebuild it (``attempts`` aside:
    compaction does not keep the count)."""

    pending: tuple[tuple[Any, ...], ...]
    dead: tuple[tuple[Any, ...], ...]
    flows: frozenset[int]


def snapshot(box: Outbox) -> State:
    pending = tuple(
        (
            seq,
            identity(item),
            item.uncertain if isinstance(item, DrinkItem) else None,
            item.username if isinstance(item, DrinkItem) else None,
            item.original_username if isinstance(item, DrinkItem) else None,
        )
        for seq, item in box.pending.items()
    )
    dead = tuple(
        sorted(
            (seq, identity(letter.item), letter.item.username, letter.reason, letter.status)
            for seq, letter in box.dead.items()
        )
    )
    return State(pending, dead, frozenset(box.recent_flows))


@dataclass(frozen=True)
class Span:
    """One appended record: its bytes in the journal, and the state before it."""

    start: int
    end: int  # after its newline
    before: State


def no_fsync(fd: int) -> None:
    pass


class JournalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="journal-stateful-"))
        self.live = self.root / "live"
        self.checks = 0
        self.box = self.open(self.live, watch=True)
        # What was done to the outbox, as the test saw it.
        self.added: dict[int, tuple[tuple[str, Any], ...]] = {}
        self.drinkers: dict[int, str | None] = {}
        self.guests: set[int] = set()
        self.uncertain: set[int] = set()  # pending drinks whose outcome is unknown
        self.delivered: dict[int, int | None] = {}  # seq -> end of its done (None: compacted)
        # The journal as spans: [0, base_end) is written whole (compaction,
        # or what a cut left of it), its state base_state; then appended records.
        self.base_end = 0
        self.base_state = snapshot(self.box)
        self.spans: list[Span] = []
        self.flow = 0
        self.end = WALL0
        self.thermo_wall = WALL0

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- plumbing ------------------------------------------------------------------

    def open(self, directory: Path, *, watch: bool = False) -> Outbox:
        box = Outbox(
            directory,
            fsync=False,
            max_temperatures=3,
            os_write=self.watched_write if watch else os.write,
            os_fsync=no_fsync,
        )
        box.open()
        return box

    def watched_write(self, fd: int, data: bytes) -> int:
        journal = self.live / "outbox.jsonl"
        if journal.exists() and os.fstat(fd).st_ino == journal.stat().st_ino:
            start = os.fstat(fd).st_size
            self.spans.append(Span(start, start + len(data), snapshot(self.box)))
        return os.write(fd, data)

    @property
    def journal(self) -> Path:
        return self.live / "outbox.jsonl"

    def size(self) -> int:
        return self.journal.stat().st_size if self.journal.exists() else 0

    def pick(self, items: list[Any], n: int) -> Any:
        return items[n % len(items)]

    def pending_drinks(self) -> list[DrinkItem]:
        return self.box.drinks()

    def pending_temperatures(self) -> list[TemperatureItem]:
        return [i for i in self.box.pending.values() if isinstance(i, TemperatureItem)]

    def remember(self, item: Item) -> None:
        # A sequence number is used again once nothing in the journal names
        # it (compaction dropped every record of a delivered item, and no
        # item pending or dead was newer): that item can never come back.
        assert self.delivered.pop(item.seq, None) is None
        self.guests.discard(item.seq)
        self.uncertain.discard(item.seq)
        self.added[item.seq] = identity(item)
        self.drinkers[item.seq] = item.username if isinstance(item, DrinkItem) else None

    # --- what delivery and the operator do ---------------------------------------

    @rule(
        user=st.sampled_from(["alice", "mallory", None]),
        ticks=st.integers(0, 5000),
        same_instant=st.booleans(),
    )
    def add_drink(self, user: str | None, ticks: int, same_instant: bool) -> None:
        self.flow += 1
        if not same_instant:
            self.end += 1.5
        drink = RecordDrink(
            self.flow, "k.flow0", ticks, ticks / 2, user, None, self.end - 5, self.end, 5.0, "idle"
        )
        self.remember(self.box.add_drink(drink))

    @rule(sensor=st.sampled_from(["k.t1", "k.t2"]), later=st.sampled_from([0, 20, 60]))
    def add_temperature(self, sensor: str, later: int) -> None:
        self.thermo_wall += later  # within the minute: the older reading is dropped
        item = self.box.add_temperature(RecordTemperature(sensor, 4.5, self.thermo_wall))
        self.remember(item)

    @precondition(lambda self: self.pending_drinks())
    @rule(n=st.integers(0, 99))
    def sending(self, n: int) -> None:
        item = self.pick(self.pending_drinks(), n)
        self.box.sending(item)
        self.uncertain.add(item.seq)

    @precondition(lambda self: self.pending_drinks())
    @rule(n=st.integers(0, 99))
    def mark_uncertain(self, n: int) -> None:
        item = self.pick(self.pending_drinks(), n)
        self.box.uncertain(item)
        self.uncertain.add(item.seq)

    @precondition(lambda self: self.pending_drinks())
    @rule(n=st.integers(0, 99))
    def certain(self, n: int) -> None:
        item = self.pick(self.pending_drinks(), n)
        self.box.certain_not_recorded(item)
        self.uncertain.discard(item.seq)

    @precondition(lambda self: self.box.pending)
    @rule(n=st.integers(0, 99))
    def done(self, n: int) -> None:
        item = self.pick(list(self.box.pending.values()), n)
        self.box.delivered(item, 1000 + item.seq)
        self.delivered[item.seq] = self.size()
        self.uncertain.discard(item.seq)

    @precondition(lambda self: self.pending_drinks())
    @rule(n=st.integers(0, 99))
    def dead(self, n: int) -> None:
        item = self.pick(self.pending_drinks(), n)
        self.box.dead_letter(item, "Meter is inactive", 404, WALL0)
        self.uncertain.discard(item.seq)

    @precondition(lambda self: any(d.username for d in self.pending_drinks()))
    @rule(n=st.integers(0, 99))
    def guest(self, n: int) -> None:
        item = self.pick([d for d in self.pending_drinks() if d.username], n)
        self.box.as_guest(item, "User matching query does not exist.", 500, WALL0)
        self.guests.add(item.seq)
        self.uncertain.discard(item.seq)  # re-posted as a guest: a new request

    @precondition(lambda self: self.pending_temperatures())
    @rule(n=st.integers(0, 99))
    def drop(self, n: int) -> None:
        self.box.drop(self.pick(self.pending_temperatures(), n), "refused")

    @precondition(lambda self: any(seq > 0 for seq in self.box.dead))
    @rule(n=st.integers(0, 99))
    def retry(self, n: int) -> None:
        assert self.box.retry_dead(self.pick(sorted(s for s in self.box.dead if s > 0), n))

    @precondition(lambda self: self.box.dead)
    @rule(n=st.integers(0, 99))
    def discard(self, n: int) -> None:
        assert self.box.discard_dead(self.pick(sorted(self.box.dead), n))

    @rule()
    def compact(self) -> None:
        self.box.compact()
        self.base_end, self.base_state, self.spans = self.size(), snapshot(self.box), []
        self.delivered = dict.fromkeys(self.delivered)  # their done records are gone

    # --- power cuts ------------------------------------------------------------------

    def offsets(self, data: st.DataObject) -> int:
        size = self.size()
        near = {o for s in self.spans for o in (s.start + 1, s.end - 2, s.end - 1, s.end)}
        near |= {self.base_end - 1, self.base_end}
        near = {o for o in near if 0 <= o <= size}
        return data.draw(st.one_of(st.integers(0, size), st.sampled_from(sorted(near))), "cut")

    @rule(data=st.data())
    def cut_a_copy(self, data: st.DataObject) -> None:
        """Power lost at byte k: what would the next start see?"""
        self.replay_a_copy(self.offsets(data))

    def replay_a_copy(self, cut: int | None = None) -> None:
        whole = self.journal.read_bytes() if self.journal.exists() else b""
        cut = len(whole) if cut is None else cut
        self.checks += 1
        directory = self.root / f"copy-{self.checks}"
        directory.mkdir()
        (directory / "outbox.jsonl").write_bytes(whole[:cut])
        box = self.open(directory)
        try:
            self.verify(box, directory, whole, cut, snapshot(self.box))
        finally:
            box.close()
            shutil.rmtree(directory)

    @rule(data=st.data())
    def power_cut(self, data: st.DataObject) -> None:
        """Power lost at byte k, and the outbox carries on from its replay."""
        cut = self.offsets(data)
        whole = self.journal.read_bytes() if self.journal.exists() else b""
        final = snapshot(self.box)
        self.box.close()
        if self.journal.exists():
            with open(self.journal, "r+b") as f:
                f.truncate(cut)
        self.box = self.open(self.live, watch=True)
        self.verify(self.box, self.live, whole, cut, final)
        # What the test knows now: the records that survived, and the rest undone.
        if cut >= self.complete_at(self.base_end, whole):
            self.spans = [s for s in self.spans if s.end - 1 <= cut]
        else:
            self.base_end, self.base_state, self.spans = self.size(), snapshot(self.box), []
        kept = {seq: end for seq, end in self.delivered.items() if end is None or end - 1 <= cut}
        self.delivered = kept
        self.uncertain = {d.seq for d in self.box.drinks() if d.uncertain}

    def complete_at(self, end: int, whole: bytes) -> int:
        """The smallest cut that keeps the record ending at ``end`` whole."""
        if end == 0:
            return 0
        return end - 1 if whole[end - 1 : end] == b"\n" else end

    def expected(self, cut: int, whole: bytes, final: State) -> State | None:
        """What the outbox held once the last record whole at ``cut`` was
        written; None inside a compacted (or cut) base: no such moment."""
        if cut < self.complete_at(self.base_end, whole):
            return None
        for span in self.spans:
            if span.end - 1 > cut:
                return span.before
        return final

    def verify(self, box: Outbox, directory: Path, whole: bytes, cut: int, final: State) -> None:
        """``box``: opened on the journal ``whole`` cut at byte ``cut``;
        ``final``: what the outbox held when it was cut."""
        state = snapshot(box)
        expected = self.expected(cut, whole, final)
        if expected is not None:
            assert state == expected, f"cut at byte {cut} of {len(whole)}"
        # Made of what was added, and nothing both pending and dead.
        for seq, item in box.pending.items():
            assert self.added[seq] == identity(item)
            if isinstance(item, DrinkItem):
                assert (item.username or item.original_username) == self.drinkers[seq]
        for seq, letter in box.dead.items():
            assert self.added[abs(seq)] == identity(letter.item)
            assert (letter.item.username or letter.item.original_username) == self.drinkers[
                abs(seq)
            ]
            if seq < 0:
                assert -seq in self.guests
        assert not set(box.pending) & {seq for seq in box.dead if seq > 0}
        # Delivered stays delivered, unless the cut took its ``done``.
        for seq in box.pending:
            if seq in self.delivered:
                end = self.delivered[seq]
                assert end is not None and end - 1 > cut, f"drink {seq} delivered, back"
        # A torn tail is set aside whole; nothing else is.
        tail = whole[:cut].rsplit(b"\n", 1)[-1]
        torn = bool(tail) and cut < len(whole) and whole[cut : cut + 1] != b"\n"
        if torn:
            [line] = box.unreadable
            assert line.text == tail.decode() and "without its newline" in line.reason
            entries = (directory / QUARANTINE).read_text().splitlines()
            assert tail.decode() in [json.loads(entry)["text"] for entry in entries]
            assert (directory / "outbox.jsonl").read_bytes() == whole[: cut - len(tail)]
        else:
            assert box.unreadable == []
            assert (directory / "outbox.jsonl").read_bytes() == whole[:cut]

    @invariant()
    def replays_whole(self) -> None:
        """A clean restart now would find exactly what the outbox holds."""
        self.replay_a_copy()

    @invariant()
    def consistent(self) -> None:
        assert not set(self.box.pending) & {seq for seq in self.box.dead if seq > 0}
        assert list(self.box.pending) == sorted(self.box.pending), "not in pour order"
        assert {d.seq for d in self.box.drinks() if d.uncertain} == self.uncertain
        dates = [d.record_date for d in self.box.drinks()]
        assert len(dates) == len(set(dates)), "two pending drinks share a record date"


JournalMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJournalReplay = JournalMachine.TestCase
