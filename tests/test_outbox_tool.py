"""kegbot-outbox: the operator's view of the outbox, and the state lock."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from test_outbox import drink

from kegtwist.delivery.outbox import Outbox, StateDirBusy
from kegtwist.tools.outbox import main

WALL = 1_800_000_000.0


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out)
    return code, out.getvalue()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    box = Outbox(tmp_path)
    box.open()
    box.add_drink(drink(1, ticks=300))
    dead = box.add_drink(drink(2, ticks=120))
    box.dead_letter(dead, "No active keg at this tap", 400, WALL)
    box.close()
    return tmp_path


def test_list_and_dead(state: Path) -> None:
    code, text = run("--state-dir", str(state), "list")
    assert code == 0 and "1 item(s) waiting" in text and "300 ticks" in text
    assert "1 dead letter(s)" in text
    code, text = run("--state-dir", str(state), "dead")
    assert code == 0 and "120 ticks" in text and "refused (400): No active keg at this tap" in text


def test_retry_and_discard_are_journaled(state: Path) -> None:
    [(number, _)] = _dead(state)
    assert run("--state-dir", str(state), "retry", str(number))[0] == 0
    box = Outbox(state)
    box.open()
    assert len(box.pending) == 2 and not box.dead
    box.close()
    assert run("--state-dir", str(state), "discard", str(number))[0] == 1  # not dead any more


def test_discard(state: Path) -> None:
    [(number, _)] = _dead(state)
    assert run("--state-dir", str(state), "discard", str(number)) == (
        0,
        f"Dead letter {number} discarded (recorded in the journal)\n",
    )
    assert _dead(state) == []


def _dead(state: Path) -> list[tuple[int, object]]:
    box = Outbox(state)
    box.open()
    try:
        return sorted(box.dead.items())
    finally:
        box.close()


def test_refuses_while_a_daemon_holds_the_state_dir(state: Path) -> None:
    running = Outbox(state)
    running.open()  # as the daemon does
    try:
        with pytest.raises(StateDirBusy):
            Outbox(state).open()
        code, text = run("--state-dir", str(state), "retry", "2")
        assert code == 2 and "another kegbot is using" in text and "retry(n)" in text
    finally:
        running.close()


@pytest.mark.integration
def test_installed_as_a_console_script(state: Path) -> None:
    tool = Path(sys.executable).parent / "kegbot-outbox"
    result = subprocess.run(
        [str(tool), "--state-dir", str(state), "dead"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "No active keg" in result.stdout


def test_list_shows_temperatures_and_uncertain_drinks(state: Path) -> None:
    from kegtwist.core.model import RecordTemperature

    box = Outbox(state)
    box.open()
    box.sending(box.drinks()[0])  # a crash mid-request leaves it like this
    box.add_temperature(RecordTemperature("kegboard.thermo-1", 3.5, WALL))
    box.close()
    code, text = run("--state-dir", str(state), "list")
    assert code == 0 and "2 item(s) waiting" in text
    assert "(sent once, outcome unknown)" in text
    assert "temperature kegboard.thermo-1 3.5 C" in text


def test_state_dir_defaults_to_the_daemons(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEGBOT_STATE_DIR", str(state))
    code, text = run("dead")
    assert code == 0 and "No active keg at this tap" in text
    monkeypatch.setenv("KEGBOT_STATE_DIR", str(state / "nowhere"))
    code, text = run("list")
    assert code == 1 and f"no state directory {state / 'nowhere'}" in text
    assert not (state / "nowhere").exists()  # looking never creates one


def test_guest_note_cannot_be_retried_only_discarded(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    item = box.add_drink(drink(1, ticks=300, user="mallory"))
    box.as_guest(item, "User matching query does not exist.", 500, WALL)
    box.close()
    [(number, _)] = _dead(tmp_path)
    assert number < 0
    code, text = run("--state-dir", str(tmp_path), "retry", str(number))
    assert code == 1 and "already re-posted as a guest pour" in text
    assert run("--state-dir", str(tmp_path), "discard", str(number))[0] == 0
    assert _dead(tmp_path) == []


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in the directory: its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_list_and_dead_write_nothing_on_a_torn_journal(tmp_path: Path) -> None:
    """A torn last line, a record with an unknown field and a line that is
    not JSON: ``list`` and ``dead`` report what the daemon would set aside,
    and leave every file (the journal above all) byte-identical; no lock
    file, no quarantine file is created."""
    from test_durability import add_line

    journal = tmp_path / "outbox.jsonl"
    journal.write_text(
        add_line(1, 1, 300) + "\n" + add_line(2, 2, tickz=9) + "\nnot json\n" + add_line(3, 3)[:50]
    )
    before = _files(tmp_path)
    assert list(before) == ["outbox.jsonl"]
    for command in ("list", "dead"):
        out, err = io.StringIO(), io.StringIO()
        assert main(["--state-dir", str(tmp_path), command], out, err) == 0
        assert _files(tmp_path) == before
        complaints = err.getvalue()
        assert "Journal line 2 is unreadable (unknown field 'tickz'" in complaints
        assert "Journal line 3 is unreadable (not JSON" in complaints
        assert "Journal line 4 is unreadable" in complaints and "without its newline" in complaints
        assert "not json" in complaints
    code, text = run("--state-dir", str(tmp_path), "list")
    assert code == 0 and "1 item(s) waiting" in text and "300 ticks" in text
    assert _files(tmp_path) == before


def test_list_keeps_a_last_record_missing_only_its_newline(state: Path) -> None:
    journal = state / "outbox.jsonl"
    journal.write_bytes(journal.read_bytes().rstrip(b"\n"))
    before = journal.read_bytes()
    code, text = run("--state-dir", str(state), "list")
    # The last record (the dead letter) is whole: it counts, and nothing is reported.
    assert code == 0 and "1 dead letter(s)" in text and "unreadable" not in text
    assert journal.read_bytes() == before


def test_quarantine_lists_what_the_daemon_set_aside(tmp_path: Path) -> None:
    from test_durability import add_line

    (tmp_path / "outbox.jsonl").write_text(
        add_line(1, 1) + "\n" + add_line(2, 2, tickz=9) + "\n\x01garbage\n"
    )
    code, text = run("--state-dir", str(tmp_path), "quarantine")
    assert code == 0 and text.startswith("0 journal line(s) set aside")
    box = Outbox(tmp_path)
    box.open()  # as the daemon does at start
    box.close()
    code, text = run("--state-dir", str(tmp_path), "quarantine")
    assert code == 0 and text.startswith("2 journal line(s) set aside in ")
    assert "outbox.jsonl line 2" in text and "unknown field 'tickz'" in text and '"tickz":9' in text
    assert "outbox.jsonl line 3" in text and "not JSON" in text and "garbage" in text
