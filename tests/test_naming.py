"""Classic naming rules and the backoff policy (pure)."""

from __future__ import annotations

from kegtwist.backoff import Backoff
from kegtwist.boards.naming import auth_device_name, board_name, split_relay_name, token_value


def test_board_names_as_the_classic_daemon_made_them() -> None:
    assert board_name("") == "kegboard"
    assert board_name(None) == "kegboard"
    assert board_name("KB-0001-ABCD1234") == "kegboard-abcd1234"
    assert board_name("abc") == "kegboard-abc"


def test_token_bytes_reversed_to_lowercase_hex() -> None:
    # An ID-12 card printed 0415AB9C3E arrives as 3e 9c ab 15 04.
    assert token_value(bytes.fromhex("3e9cab1504")) == "0415ab9c3e"
    assert auth_device_name("onewire") == "core.onewire"
    assert auth_device_name("core.rfid") == "core.rfid"


def test_relay_names() -> None:
    assert split_relay_name("kegboard.relay0") == ("kegboard", 0)
    assert split_relay_name("kegboard-1a2b3c4d.relay15") == ("kegboard-1a2b3c4d", 15)
    for bad in ("kegboard.relay16", "kegboard.flow0", "relay0", "kegboard.relay", ".relay1"):
        assert split_relay_name(bad) is None


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(initial=0.5, factor=2.0, maximum=5.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next_delay() == 0.5
    b.attempts = 10_000  # no overflow after a very long outage
    assert b.next_delay() == 5.0


def test_backoff_jitter_spreads_below_the_delay() -> None:
    calls: list[tuple[float, float]] = []
    b = Backoff(
        initial=10,
        factor=2,
        maximum=300,
        jitter=0.5,
        uniform=lambda a, c: calls.append((a, c)) or a,
    )
    assert b.next_delay() == 5.0
    assert calls == [(5.0, 10)]
