"""The durable outbox: what is journaled survives a restart, exactly."""

from __future__ import annotations

from pathlib import Path

from kegtwist.core.model import RecordDrink, RecordTemperature
from kegtwist.delivery.outbox import DrinkItem, Outbox, TemperatureItem, record_date

WALL0 = 1_800_000_000.0


def drink(
    flow_id: int, ticks: int = 500, user: str | None = "alice", end: float = WALL0 + 5
) -> RecordDrink:
    return RecordDrink(
        flow_id, "kegboard.flow0", ticks, ticks * 0.5, user, "core.rfid", end - 5, end, 5.0, "idle"
    )


def reopen(box: Outbox) -> Outbox:
    box.close()
    again = Outbox(box.directory)
    again.open()
    return again


def test_record_date_has_microseconds_and_offset() -> None:
    assert record_date(WALL0 + 0.25) == "2027-01-15T08:00:00.250000+00:00"


def test_added_drinks_survive_restart_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    box.add_drink(drink(1, 100))
    box.add_drink(drink(2, 200, end=WALL0 + 9))
    box = reopen(box)
    assert [(i.flow_id, i.ticks) for i in box.drinks()] == [(1, 100), (2, 200)]
    assert not any(i.uncertain for i in box.drinks())


def test_sending_without_outcome_is_uncertain_after_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    item = box.add_drink(drink(1))
    box.sending(item)
    box = reopen(box)
    [again] = box.drinks()
    assert again.uncertain and again.attempts == 1
    box.certain_not_recorded(again)
    box = reopen(box)
    assert box.drinks()[0].uncertain is False


def test_delivered_is_gone_for_good(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    item = box.add_drink(drink(1))
    box.sending(item)
    box.delivered(item, 42)
    box = reopen(box)
    assert len(box) == 0
    assert box.delivered_ids[item.seq] == 42


def test_same_end_time_gets_distinct_record_dates(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    a = box.add_drink(drink(1, end=WALL0))
    b = box.add_drink(drink(2, end=WALL0))
    assert a.record_date != b.record_date


def test_a_new_drink_never_takes_the_record_date_of_a_dead_letter(tmp_path: Path) -> None:
    """The dead letter may be retried: two drinks in the queue with one
    record date could be mistaken for each other on the server."""
    box = Outbox(tmp_path)
    box.open()
    first = box.add_drink(drink(1, end=WALL0))
    box.dead_letter(first, "Meter is inactive", 404, WALL0)
    second = box.add_drink(drink(2, end=WALL0))
    assert second.record_date != first.record_date
    assert box.retry_dead(first.seq)
    assert len({d.record_date for d in box.drinks()}) == 2


def test_dead_letters_persist_and_can_be_retried_or_discarded(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    one = box.add_drink(drink(1))
    two = box.add_drink(drink(2, end=WALL0 + 7))
    box.dead_letter(one, "Meter is inactive", 404, WALL0)
    box.dead_letter(two, "No active keg at this tap", 400, WALL0)
    box = reopen(box)
    assert len(box) == 0
    assert sorted((d.reason, d.status) for d in box.dead.values()) == [
        ("Meter is inactive", 404),
        ("No active keg at this tap", 400),
    ]
    assert box.retry_dead(two.seq)
    assert box.discard_dead(one.seq)
    box = reopen(box)
    assert [i.flow_id for i in box.drinks()] == [2]
    assert box.dead == {}


def test_unknown_user_reposted_as_guest_with_note(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    item = box.add_drink(drink(1, user="mallory"))
    box.as_guest(item, "User matching query does not exist.", 500, WALL0)
    box = reopen(box)
    [pending] = box.drinks()
    assert (pending.username, pending.original_username) == (None, "mallory")
    [note] = box.dead.values()
    assert note.item.username == "mallory"
    assert "re-posted as a guest pour" in note.reason


def test_temperatures_coalesce_per_minute_and_are_bounded(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_temperatures=3)
    box.open()
    box.add_temperature(RecordTemperature("s1", 4.0, WALL0))
    box.add_temperature(RecordTemperature("s1", 4.5, WALL0 + 30))  # same minute: replaces
    assert [(t.celsius) for t in box.pending.values() if isinstance(t, TemperatureItem)] == [4.5]
    for i in range(1, 5):
        box.add_temperature(RecordTemperature("s1", 5.0 + i, WALL0 + 60 * i))
    temps = [t for t in box.pending.values() if isinstance(t, TemperatureItem)]
    assert [t.celsius for t in temps] == [7.0, 8.0, 9.0]
    assert box.stats.temperatures_dropped == 3
    box = reopen(box)
    assert [t.celsius for t in box.pending.values() if isinstance(t, TemperatureItem)] == [
        7.0,
        8.0,
        9.0,
    ]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    box.add_drink(drink(1))
    box.close()
    with open(box.path, "a") as f:
        f.write('{"op":"add","seq":2,"item":{"seq":2,"flow')  # power cut mid-write
    again = Outbox(tmp_path)
    again.open()
    assert [i.flow_id for i in again.drinks()] == [1]
    assert again.stats.journal_lines_skipped == 1
    again.add_drink(drink(3, end=WALL0 + 20))
    again = reopen(again)
    assert [i.flow_id for i in again.drinks()] == [1, 3]


def test_compaction_keeps_pending_uncertain_and_dead(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    for i in range(50):
        item = box.add_drink(drink(i, end=WALL0 + i))
        box.sending(item)
        box.delivered(item, i)
    keep = box.add_drink(drink(100, end=WALL0 + 100))
    box.sending(keep)
    dead = box.add_drink(drink(101, end=WALL0 + 101))
    box.dead_letter(dead, "Meter is inactive", 404, WALL0)
    guest = box.add_drink(drink(102, user="mallory", end=WALL0 + 102))
    box.as_guest(guest, "unknown user", 500, WALL0)
    before = box.path.stat().st_size
    box.compact()
    assert box.path.stat().st_size < before
    box = reopen(box)
    items = {i.flow_id: i for i in box.drinks()}
    assert set(items) == {100, 102}
    assert items[100].uncertain
    assert items[102].username is None and items[102].original_username == "mallory"
    assert sorted(d.item.flow_id for d in box.dead.values()) == [101, 102]
    # New sequence numbers never collide with old ones after compaction.
    assert box.add_drink(drink(103, end=WALL0 + 200)).seq > guest.seq


def test_items_are_drink_items(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    assert isinstance(box.add_drink(drink(1)), DrinkItem)


def test_recent_flows_survive_restart_and_compaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    item = box.add_drink(drink(77))
    box.sending(item)
    box.delivered(item, 5)
    box.compact()
    box = reopen(box)
    assert box.knows_flow(77)
    assert not box.knows_flow(78)


def test_constructing_an_outbox_touches_no_disk(tmp_path: Path) -> None:
    """Only open() locks, replays and opens the journal (the daemon calls it
    when it starts its services)."""
    state = tmp_path / "state"
    Outbox(state)
    assert not state.exists()
    state.mkdir()
    (state / "outbox.jsonl").write_text("not json\n")
    box = Outbox(state)
    assert sorted(p.name for p in state.iterdir()) == ["outbox.jsonl"]  # no lock, no quarantine
    assert len(box) == 0 and box.unreadable == []
    box.open()
    assert sorted(p.name for p in state.iterdir()) == [
        "lock",
        "outbox.jsonl",
        "outbox.quarantine.jsonl",
    ]
    box.close()
