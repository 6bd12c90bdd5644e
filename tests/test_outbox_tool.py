"""kegbot-outbox: the operator's view of the outbox, and the state lock."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from test_outbox import drink

from kegtwist.outbox import Outbox, StateDirBusy
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
