"""The board session state machine on its own: no reactor, no port; the
time is an argument, so every test runs in milliseconds."""

from __future__ import annotations

from typing import Any

import pytest

from kegtwist.boards.session import (
    HELLO_TIMEOUT,
    PENDING_LIMIT,
    PING_INTERVAL,
    BoardSession,
    ClosePort,
    Notice,
    OpenPort,
    Output,
    Send,
    State,
)
from kegtwist.core.inputs import (
    BoardConnected,
    BoardGone,
    MeterReading,
    RelayStatus,
    ThermoReading,
    TokenEvent,
)
from kegtwist.protocol import kbsp

DEV = "/dev/ttyUSB0"
HELLO = kbsp.Hello(firmware_version=18, serial_number="KB-0001-ABCD1234", uptime_millis=1500)
NAME = "kegboard-abcd1234"


class Names:
    """The service's registry, as a dict: one holder per name."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}

    def session(self, device: str = DEV) -> BoardSession:
        def claim(name: str) -> str | None:
            holder = self.holders.setdefault(name, device)
            return None if holder == device else holder

        def release(name: str) -> None:
            if self.holders.get(name) == device:
                del self.holders[name]

        return BoardSession(device, claim, release)


def notices(outputs: list[Output], level: str | None = None) -> list[str]:
    return [o.text for o in outputs if isinstance(o, Notice) and level in (None, o.level)]


def inputs(outputs: list[Output]) -> list[Any]:
    return [o for o in outputs if not isinstance(o, (Notice, Send, OpenPort, ClosePort))]


def sent(outputs: list[Output]) -> list[kbsp.Message]:
    return [o.message for o in outputs if isinstance(o, Send)]


def opened(names: Names | None = None, device: str = DEV, now: float = 0.0) -> BoardSession:
    session = (names or Names()).session(device)
    assert session.start(now) == [OpenPort()]
    assert session.state is State.OPENING
    session.opened(now)
    return session


def named(names: Names | None = None, device: str = DEV, now: float = 0.0) -> BoardSession:
    session = opened(names, device, now)
    session.receive(HELLO, now)
    assert session.state is State.NAMED
    return session


def test_open_pings_at_once_and_every_two_seconds_until_a_hello() -> None:
    session = Names().session()
    assert session.state is State.IDLE and session.deadline is None
    assert session.start(0.0) == [OpenPort()]
    assert session.start(0.0) == []  # only once
    out = session.opened(100.0)
    assert session.state is State.PINGING
    assert notices(out) == [f"Opened {DEV}; pinging for the board's hello"]
    assert sent(out) == [kbsp.Ping()]
    assert session.deadline == 100.0 + PING_INTERVAL
    assert session.tick(101.9) == []  # not yet
    assert sent(session.tick(102.0)) == [kbsp.Ping()]
    assert session.deadline == 104.0


def test_a_silent_port_is_warned_about_once_after_30_s_and_pinged_forever() -> None:
    session = opened()
    warnings: list[str] = []
    pings = 1
    for now in range(2, 121, 2):
        out = session.tick(float(now))
        warnings += notices(out, "warn")
        pings += len(sent(out))
    assert pings == 61
    assert warnings == [f"No Kegboard answered on {DEV} for 30 s; still pinging"]
    assert session.state is State.PINGING and session.name is None


def test_hello_names_the_board_and_hands_on_held_messages_in_order() -> None:
    session = opened(now=10.0)
    held = [kbsp.MeterStatus("flow0", 3), kbsp.OutputStatus("relay1", False)]
    for message in held:
        assert session.receive(message, 10.1) == []
    out = session.receive(HELLO, 10.5)
    assert session.state is State.NAMED and session.name == NAME and session.hello is HELLO
    assert notices(out, "info") == [f"Kegboard {NAME} connected on {DEV} (firmware 18)"]
    assert inputs(out) == [
        BoardConnected(NAME, DEV, 18, "KB-0001-ABCD1234", 1.5),
        MeterReading(f"{NAME}.flow0", 3),
        RelayStatus(f"{NAME}.relay1", False),
    ]
    assert session.deadline == 10.5 + HELLO_TIMEOUT  # pings stop; the watchdog runs
    assert session.tick(12.5) == []


def test_at_most_64_messages_are_held_before_the_hello() -> None:
    session = opened()
    for i in range(PENDING_LIMIT + 10):
        session.receive(kbsp.MeterStatus("flow0", i), 0.0)
    readings = [
        i for i in inputs(session.receive(kbsp.Hello(), 1.0)) if isinstance(i, MeterReading)
    ]
    assert [r.ticks for r in readings] == list(range(PENDING_LIMIT))
    assert inputs(session.receive(kbsp.Hello(), 2.0)) == []  # same name: nothing new


def test_messages_become_inputs_with_full_names() -> None:
    session = named()
    out: list[Output] = []
    for message in [
        kbsp.MeterStatus("flow1", 7),
        kbsp.TemperatureReading("thermo-28abcdef01234567", 4_500_000),
        kbsp.AuthToken("onewire", bytes.fromhex("3e9cab1504"), 1),
        kbsp.AuthToken("core.rfid", b"\x01\x02\x03\x04", 0),
        kbsp.OutputStatus("relay0", True),
        kbsp.BoardConfiguration(board_name="x"),
        kbsp.OnewirePresence(0),
    ]:
        out += session.receive(message, 1.0)
    assert inputs(out) == [
        MeterReading(f"{NAME}.flow1", 7),
        ThermoReading(f"{NAME}.thermo-28abcdef01234567", 4.5),
        TokenEvent("core.onewire", "0415ab9c3e", True),
        TokenEvent("core.rfid", "04030201", False),
        RelayStatus(f"{NAME}.relay0", True),
    ]
    assert notices(out, "debug")[-2:] == [
        f"{NAME}: BoardConfiguration(board_name='x', baud_rate=None, update_interval=None, "
        "watchdog_timeout=None)",
        f"{NAME}: OnewirePresence(device_id=0, status=None)",
    ]


def test_heartbeat_keeps_the_board_and_30_s_of_silence_closes_the_port() -> None:
    session = named()
    assert session.receive(HELLO, 20.0) == []  # heartbeat: nothing to say
    assert session.deadline == 50.0
    assert session.tick(49.9) == []
    out = session.tick(50.0)
    assert inputs(out) == [BoardGone(NAME, DEV, "no hello for 30 s")]
    assert notices(out, "warn") == [f"Kegboard {NAME} on {DEV} gone: no hello for 30 s"]
    assert out[-1] == ClosePort()
    assert session.state is State.CLOSING and session.name is None
    assert not session.can_send and session.port_open
    # Closing: whatever still arrives is ignored.
    assert session.receive(kbsp.MeterStatus("flow0", 1), 50.1) == []
    assert session.receive(HELLO, 50.1) == []
    out = session.closed(50.2, "Connection was closed cleanly.")
    assert inputs(out) == []  # already reported gone
    assert notices(out) == [f"Port {DEV} closed: Connection was closed cleanly."]
    assert session.state is State.BACKOFF
    assert session.deadline == pytest.approx(50.7)  # the hello reset the backoff
    assert session.tick(50.7) == [OpenPort()]
    assert session.state is State.OPENING and session.deadline is None


def test_port_lost_reports_the_board_gone_and_reopens_with_backoff() -> None:
    session = named()
    out = session.closed(5.0, "")
    assert inputs(out) == [BoardGone(NAME, DEV, "port closed")]
    assert session.state is State.BACKOFF and session.deadline == 5.5
    delays = []
    now = 5.5
    for _ in range(6):
        assert session.tick(now) == [OpenPort()]
        session.open_failed(now, f"{DEV} is not there (unplugged?)")
        assert session.deadline is not None
        delays.append(session.deadline - now)
        now = session.deadline
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_an_open_error_is_warned_once_until_it_changes_or_the_port_opens() -> None:
    session = Names().session()
    session.start(0.0)
    levels = []
    for problem in ["busy", "busy", "gone", "gone", "busy"]:
        [notice] = session.open_failed(session.deadline or 0.0, problem)
        assert isinstance(notice, Notice)
        levels.append(notice.level)
        assert session.tick(session.deadline or 0.0) == [OpenPort()]
    assert levels == ["warn", "debug", "warn", "debug", "warn"]
    assert notice.text == f"Kegboard {DEV}: busy; retrying"
    session.opened(100.0)
    session.closed(101.0, "gone")
    session.tick(session.deadline or 0.0)
    [again] = session.open_failed(102.0, "busy")
    assert isinstance(again, Notice) and again.level == "warn"


def test_second_board_with_the_same_name_is_refused_until_the_first_goes() -> None:
    names = Names()
    first = named(names, "/dev/ttyUSB0")
    second = opened(names, "/dev/ttyUSB1")
    out = second.receive(kbsp.MeterStatus("flow0", 1), 0.0) + second.receive(HELLO, 0.1)
    assert second.state is State.REFUSED and second.name is None
    assert inputs(out) == []  # held messages are dropped too
    assert notices(out, "error") == [
        f"Refusing the Kegboard on /dev/ttyUSB1: its name {NAME} is already used by the "
        "board on /dev/ttyUSB0; give one of them a serial number (kegboard-set-serial)"
    ]
    assert second.can_send  # its port stays open
    assert second.receive(kbsp.MeterStatus("flow0", 2), 1.0) == []
    assert second.receive(HELLO, 10.1) == []  # refused once, not at every hello
    first.closed(11.0, "unplugged")
    assert names.holders == {}
    out = second.receive(HELLO, 20.1)
    assert second.state is State.NAMED and second.name == NAME
    assert notices(out, "info")[0] == f"Board on /dev/ttyUSB1 now accepted as {NAME}"
    assert inputs(out) == [BoardConnected(NAME, "/dev/ttyUSB1", 18, "KB-0001-ABCD1234", 1.5)]
    assert names.holders == {NAME: "/dev/ttyUSB1"}


def test_a_refused_board_that_falls_silent_is_closed_without_a_gone() -> None:
    names = Names()
    named(names, "/dev/ttyUSB0")
    second = opened(names, "/dev/ttyUSB1")
    second.receive(HELLO, 0.0)
    out = second.tick(30.0)
    assert out == [ClosePort()] and second.state is State.CLOSING


def test_a_new_serial_number_renames_the_board() -> None:
    names = Names()
    session = named(names)
    out = session.receive(kbsp.Hello(firmware_version=18, serial_number="00c0ffee"), 3.0)
    assert inputs(out) == [
        BoardGone(NAME, DEV, "renamed to kegboard-00c0ffee"),
        BoardConnected("kegboard-00c0ffee", DEV, 18, "00c0ffee", None),
    ]
    assert names.holders == {"kegboard-00c0ffee": DEV}


def test_a_rename_onto_a_name_in_use_is_refused() -> None:
    names = Names()
    named(names, "/dev/ttyUSB0")
    other = opened(names, "/dev/ttyUSB1")
    other.receive(kbsp.Hello(serial_number="00c0ffee"), 0.0)
    out = other.receive(HELLO, 1.0)
    assert inputs(out) == [BoardGone("kegboard-00c0ffee", "/dev/ttyUSB1", "renamed to " + NAME)]
    assert len(notices(out, "error")) == 1 and other.state is State.REFUSED


def test_stop_closes_an_open_port_and_nothing_reopens() -> None:
    names = Names()
    session = named(names)
    assert session.stop() == [ClosePort()]
    assert session.state is State.STOPPED and session.deadline is None
    assert session.receive(kbsp.MeterStatus("flow0", 1), 1.0) == []
    out = session.closed(1.0, "Connection was closed cleanly.")
    assert inputs(out) == [BoardGone(NAME, DEV, "Connection was closed cleanly.")]
    assert notices(out, "info") == [] and session.deadline is None
    assert names.holders == {}


def test_stop_while_opening_closes_the_port_when_it_opens_late() -> None:
    session = Names().session()
    session.start(0.0)
    assert session.stop() == []
    assert session.opened(1.0) == [ClosePort()]
    assert session.open_failed(1.0, "late") == []
    assert session.state is State.STOPPED and session.deadline is None


def test_stop_during_backoff_cancels_the_reopen() -> None:
    session = Names().session()
    session.start(0.0)
    session.open_failed(0.0, "gone")
    assert session.deadline == 0.5
    assert session.stop() == []
    assert session.tick(1.0) == [] and session.state is State.STOPPED


def test_rejected_frames_are_logged_once_a_minute_with_a_count() -> None:
    session = named()
    bad = kbsp.FrameRejected("crc", "CRC mismatch", b"")
    assert notices(session.receive(bad, 1.0)) == [
        f"Kegboard {DEV}: rejected 1 frame(s), latest: CRC mismatch"
    ]
    for i in range(5):
        assert session.receive(bad, 2.0 + i) == []
    later = kbsp.FrameRejected("framing", "bad trailer", b"")
    assert notices(session.receive(later, 61.0)) == [
        f"Kegboard {DEV}: rejected 6 frame(s), latest: bad trailer"
    ]


def test_unknown_messages_are_logged_once_a_minute() -> None:
    session = opened()  # also before the hello
    first = session.receive(kbsp.UnknownMessage(0x42, b""), 0.0)
    assert notices(first) == [f"Kegboard {DEV}: unknown message 0x42 ignored"]
    assert session.receive(kbsp.UnknownMessage(0x43, b""), 1.0) == []
    assert notices(session.receive(kbsp.UnknownMessage(0x44, b""), 60.0)) == [
        f"Kegboard {DEV}: unknown message 0x44 ignored (and 1 more like it since the last line)"
    ]


def test_commands_go_out_only_while_the_port_is_open() -> None:
    session = Names().session()
    assert not session.can_send
    session.start(0.0)
    assert not session.can_send
    session.opened(0.0)
    assert session.can_send
    session.receive(HELLO, 0.0)
    assert session.can_send
    session.closed(1.0, "")
    assert not session.can_send and not session.port_open
