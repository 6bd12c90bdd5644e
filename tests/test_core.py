"""The pure core: every pour, token, valve and temperature rule.

Time is an argument here: ``Harness.at(t)`` moves both clocks; the wall
clock runs 1.8e9 s ahead of the monotonic one, as on a real host.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kegtwist.core import (
    AuthDevice,
    AuthSettings,
    Core,
    CoreConfig,
    FlowRequest,
    LookupToken,
    Notice,
    PourSettings,
    PourUpdate,
    RecordDrink,
    RecordTemperature,
    RegisterController,
    SensorState,
    SetRelay,
    TapConfig,
    TapsChanged,
    TokenLookupResult,
)
from kegtwist.core.inputs import BoardConnected, MeterReading, ThermoReading, TokenEvent
from kegtwist.core.meters import MeterState

WALL0 = 1_800_000_000.0
TAP0 = TapConfig("kegboard.flow0", 0.5, "kegboard.relay0")
TAP1 = TapConfig("kegboard.flow1", 0.25, None)


class Harness:
    def __init__(self, config: CoreConfig | None = None) -> None:
        self.core = Core(config or CoreConfig(taps=(TAP0, TAP1)))
        self.now = 0.0
        self.effects: list[Any] = []

    def at(self, t: float) -> Harness:
        """Move time to ``t``, running due timers as the adapter would."""
        while (deadline := self.core.next_deadline()) is not None and deadline <= t:
            self.now = max(self.now, deadline)
            self.effects += self.core.advance(self.now, WALL0 + self.now)
        self.now = t
        self.effects += self.core.advance(t, WALL0 + t)
        return self

    def feed(self, item: Any) -> list[Any]:
        out = self.core.handle(item, self.now, WALL0 + self.now)
        self.effects += out
        return out

    def read(self, meter: str, ticks: int) -> list[Any]:
        return self.feed(MeterReading(meter, ticks))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]

    def drinks(self) -> list[RecordDrink]:
        return self.of(RecordDrink)

    def relays(self) -> list[tuple[str, bool, str]]:
        return [(e.relay_name, e.on, e.reason) for e in self.of(SetRelay)]

    def authorise(
        self, device: str, token: str, username: str | None, meter: str | None = None
    ) -> None:
        self.feed(TokenEvent(device, token, True, meter))
        self.feed(TokenLookupResult(device, token, username, enabled=username is not None))


# --- meters ----------------------------------------------------------------


def test_meter_baseline_wrap_reset_garbage() -> None:
    m = MeterState()
    assert m.update(1000, 4400) == (0, "baseline")
    assert m.update(1100, 4400) == (100, "ticks")
    m = MeterState(last=2**32 - 10)
    assert m.update(5, 4400) == (15, "wrap")
    m = MeterState(last=90_000)
    assert m.update(40, 4400) == (40, "reset")


def test_classic_negative_glitch_counts_500_not_1400() -> None:
    h = Harness()
    for reading in (0, 500, -400 % 2**32, 500):
        h.read("kegboard.flow1", reading)
    h.at(20)
    [drink] = h.drinks()
    assert drink.ticks == 500
    assert h.core.stats.garbage_readings == 1
    assert any(isinstance(e, Notice) and e.level == "warn" for e in h.effects)


def test_garbage_jump_discarded_and_never_a_baseline() -> None:
    h = Harness()
    h.read("kegboard.flow1", 100)
    h.read("kegboard.flow1", 200)
    h.read("kegboard.flow1", 200 + 50_000)  # one glitch
    h.read("kegboard.flow1", 300)
    h.at(20)
    assert [d.ticks for d in h.drinks()] == [200]


def test_large_real_jump_rebases_without_counting_the_jump() -> None:
    h = Harness()
    h.read("kegboard.flow1", 0)
    h.read("kegboard.flow1", 100)
    h.read("kegboard.flow1", 100_000)  # missed readings, or garbage: unknown yet
    h.read("kegboard.flow1", 100_080)  # agrees with it: the meter moved
    h.read("kegboard.flow1", 100_100)
    h.at(20)
    assert [d.ticks for d in h.drinks()] == [200]


def test_board_reset_counts_ticks_since_reset() -> None:
    h = Harness()
    h.read("kegboard.flow1", 0)
    h.read("kegboard.flow1", 10_000 % 4400)
    h.read("kegboard.flow1", 3000)
    h.read("kegboard.flow1", 120)  # reset; 120 poured since
    h.at(30)
    assert sum(d.ticks for d in h.drinks()) == 3000 + 120
    assert h.core.stats.resets == 1


def test_wrap_is_not_a_reset() -> None:
    h = Harness()
    h.read("kegboard.flow1", 2**32 - 100)
    h.read("kegboard.flow1", 60)
    h.at(20)
    assert [d.ticks for d in h.drinks()] == [160]
    assert h.core.stats.resets == 0 and h.core.stats.wraps == 1


# --- pours -----------------------------------------------------------------


def test_anonymous_pour_volume_and_times() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    h.at(1.0).read("kegboard.flow0", 40)
    h.at(3.5).read("kegboard.flow0", 100)
    h.at(100)
    [drink] = h.drinks()
    assert drink.ticks == 100
    assert drink.volume_ml == 50.0
    assert drink.username is None
    assert drink.start_wall == WALL0 + 1.0
    assert drink.end_wall == WALL0 + 3.5  # last tick, not the timeout
    assert drink.duration_seconds == 2.5
    assert drink.reason == "idle"
    assert h.relays() == []  # anonymous pours never open a valve


def test_idle_end_is_on_time_from_the_last_tick() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    h.at(1.0).read("kegboard.flow0", 40)
    h.at(7.0).read("kegboard.flow0", 80)
    assert h.core.next_deadline() is not None
    h.at(16.99)
    assert h.drinks() == []
    h.at(17.0)
    assert len(h.drinks()) == 1
    ended = [e for e in h.of(PourUpdate) if e.state == "completed"]
    assert ended[0].reason == "idle"
    # The adapter scheduled exactly the deadline the core asked for.
    assert h.now == 17.0


def test_ticks_on_an_unknown_meter_are_held_until_a_tap_is_known() -> None:
    h = Harness()
    h.read("kegboard.flow7", 0)
    h.read("kegboard.flow7", 50)
    assert h.core.pours["kegboard.flow7"].untapped
    assert h.core.stats.untapped_ticks == 50
    [warning] = [n for n in h.of(Notice) if "no tap" in n.message]
    assert warning.level == "warn" and warning.fields["meter"] == "kegboard.flow7"
    h.at(1.0)
    h.read("kegboard.flow7", 80)
    h.at(30.0)  # idle: the pour ends, nothing recorded yet, nothing lost
    assert h.drinks() == [] and h.core.pours == {}
    [ended] = [e for e in h.of(PourUpdate) if e.state == "completed"]
    assert ended.held and not ended.recorded
    assert list(h.core.held) == [ended.pour.flow_id]
    # A second pour on the same meter: no second warning.
    h.read("kegboard.flow7", 100)
    assert len([n for n in h.of(Notice) if "no tap" in n.message]) == 1
    h.feed(TapsChanged((TAP0, TapConfig("kegboard.flow7", 0.5, post_volume=True))))
    [drink] = h.drinks()
    assert (drink.meter_name, drink.ticks, drink.volume_ml) == ("kegboard.flow7", 80, 40.0)
    assert drink.post_volume and drink.dead_reason is None
    assert h.core.held == {}
    # The pour in progress got its tap and is recorded with every tick.
    assert not h.core.pours["kegboard.flow7"].untapped
    h.read("kegboard.flow7", 160)
    h.at(60.0)
    assert [d.ticks for d in h.drinks()] == [80, 80]  # 80 to 100 untapped, then 160


def test_a_held_drink_becomes_a_dead_letter_after_the_hold() -> None:
    h = Harness(CoreConfig(pours=PourSettings(untapped_hold_hours=0.5), taps=(TAP0,)))
    h.read("kegboard.flow7", 0)
    h.read("kegboard.flow7", 50)
    h.at(11.0)
    assert h.drinks() == []
    h.at(1799.0)  # the hold counts from the drink's end, its last tick at 0
    assert h.drinks() == []
    h.at(1800.0)
    [dead] = h.drinks()
    assert dead.ticks == 50 and dead.dead_reason == "no tap for kegboard.flow7"
    assert any(n.level == "error" for n in h.of(Notice))
    # Never recorded a second time when a tap shows up later.
    h.feed(TapsChanged((TapConfig("kegboard.flow7", 0.5),)))
    assert len(h.drinks()) == 1


def test_held_drinks_and_untapped_pours_survive_a_restart() -> None:
    h = Harness(CoreConfig(taps=(TAP0,)))
    h.read("kegboard.flow7", 0)
    h.read("kegboard.flow7", 40)
    h.at(20.0)  # ended and held
    h.read("kegboard.flow7", 70)  # a second, untapped pour in progress
    state = h.core.checkpoint()
    again = Harness(CoreConfig(taps=(TAP0,)))
    again.now = 21.0
    again.effects += again.core.restore(state, 21.0, WALL0 + 21.0)
    assert list(again.core.held) == list(h.core.held)
    assert again.core.pours["kegboard.flow7"].untapped
    again.feed(TapsChanged((TAP0, TapConfig("kegboard.flow7", 1.0))))
    again.at(60.0)
    assert sorted(d.ticks for d in again.drinks()) == [30, 40]


def test_a_freshly_booted_board_counts_its_first_report() -> None:
    """The firmware counts from 0 at boot: a board up for 2 s that reports
    545 ticks has poured 545, whatever the checkpoint held before."""
    h = Harness()
    h.feed(BoardConnected("kegboard", "/dev/ttyACM0", 18, "", uptime_seconds=2.0))
    h.read("kegboard.flow0", 545)
    h.at(30.0)
    assert [d.ticks for d in h.drinks()] == [545]
    # A restored baseline of 9,000 means nothing after a fresh boot.
    h2 = Harness()
    h2.core.restore({"meters": {"kegboard.flow0": 9000}}, 0.0, WALL0)
    h2.feed(BoardConnected("kegboard", "/dev/ttyACM0", 18, "", uptime_seconds=0.5))
    h2.read("kegboard.flow0", 120)
    h2.at(30.0)
    assert [d.ticks for d in h2.drinks()] == [120]
    # A board that has been up a while: its first report is a baseline.
    h3 = Harness()
    h3.feed(BoardConnected("kegboard", "/dev/ttyACM0", 18, "", uptime_seconds=3600.0))
    h3.read("kegboard.flow0", 545)
    h3.at(30.0)
    assert h3.drinks() == []
    # The jump guard still applies to a fresh board's first report.
    h4 = Harness()
    h4.feed(BoardConnected("kegboard", "/dev/ttyACM0", 18, "", uptime_seconds=1.0))
    h4.read("kegboard.flow0", 100_000)
    assert h4.core.stats.garbage_readings == 1


def test_drinks_carry_the_file_calibration_flag() -> None:
    h = Harness(CoreConfig(taps=(TapConfig("kegboard.flow0", 0.5, post_volume=True), TAP1)))
    for meter in ("kegboard.flow0", "kegboard.flow1"):
        h.read(meter, 0)
        h.read(meter, 100)
    h.at(30.0)
    assert {(d.meter_name, d.post_volume) for d in h.drinks()} == {
        ("kegboard.flow0", True),
        ("kegboard.flow1", False),
    }


def test_small_pour_counted_not_recorded() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    h.read("kegboard.flow0", 19)  # 9.5 mL < 10 mL
    h.at(30)
    assert h.drinks() == []
    assert h.core.stats.pours_not_recorded == 1
    [end] = [e for e in h.of(PourUpdate) if e.state == "completed"]
    assert end.recorded is False


def test_pour_with_no_ticks_not_recorded() -> None:
    h = Harness()
    h.feed(FlowRequest("kegboard.flow0", "start_flow"))
    h.at(30)
    assert h.drinks() == []
    assert h.core.stats.pours_not_recorded == 1


def test_stop_request_ends_pour() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    h.at(2).feed(FlowRequest("kegboard.flow0", "stop_flow"))
    assert [d.reason for d in h.drinks()] == ["stopped"]


def test_ghost_pour_guard_closes_valve_and_says_why() -> None:
    config = CoreConfig(taps=(TAP0,), pours=PourSettings(max_pour_seconds=600))
    h = Harness(config)
    h.read("kegboard.flow0", 0)
    h.authorise("core.rfid", "deadbeef", "alice")
    t, reading = 0.0, 0
    while t < 700:  # a free-running meter: a tick burst every 5 s
        t += 5
        reading += 10
        h.at(t).read("kegboard.flow0", reading)
    [first, *_] = h.drinks()
    assert first.reason == "max_duration"
    assert first.duration_seconds <= 600
    assert ("kegboard.relay0", False, "pour_end") in h.relays()
    assert h.core.stats.ghost_pours >= 1


# --- tokens and valves ---------------------------------------------------------


def test_authenticated_pour_opens_refreshes_and_closes_valve() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    assert h.of(LookupToken) == [LookupToken("core.rfid", "deadbeef")]
    assert h.relays() == [("kegboard.relay0", True, "pour")]
    h.read("kegboard.flow0", 0)
    for i in range(1, 16):  # 30 s of pouring
        h.at(2.0 * i).read("kegboard.flow0", 100 * i)
    refreshes = [r for r in h.relays() if r[2] == "refresh"]
    assert len(refreshes) == 15
    assert h.drinks() == []
    h.at(30 + 20)  # core.rfid idle limit is 20 s
    assert h.relays()[-1] == ("kegboard.relay0", False, "pour_end")
    [drink] = h.drinks()
    assert (drink.username, drink.ticks, drink.auth_device) == ("alice", 1500, "core.rfid")


def test_token_for_all_taps_by_default() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice")
    assert set(h.core.pours) == {"kegboard.flow0", "kegboard.flow1"}
    assert h.relays() == [("kegboard.relay0", True, "pour")]  # flow1 has no valve


def test_reader_bound_to_taps_by_config() -> None:
    auth = AuthSettings(
        devices={"core.rfid": AuthDevice(captive=False, idle_seconds=20, taps=("kegboard.flow1",))}
    )
    h = Harness(CoreConfig(taps=(TAP0, TAP1), auth=auth))
    h.authorise("core.rfid", "deadbeef", "alice")
    assert set(h.core.pours) == {"kegboard.flow1"}


def test_adoption_of_anonymous_pour_counts_whole_glass_not_limit() -> None:
    auth = AuthSettings(
        devices={"core.rfid": AuthDevice(captive=False, idle_seconds=20, max_volume_ml=100)}
    )
    h = Harness(CoreConfig(taps=(TAP0,), auth=auth))
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 150)  # 75 mL anonymous
    h.at(2).authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.at(3).read("kegboard.flow0", 300)  # +75 mL after the token: under the 100 mL limit
    assert h.drinks() == []
    h.at(4).read("kegboard.flow0", 360)  # +105 mL since the token: limit reached
    [drink] = h.drinks()
    assert (drink.username, drink.ticks, drink.reason) == ("alice", 360, "max_volume")
    assert h.relays()[-1] == ("kegboard.relay0", False, "pour_end")


def test_different_user_mid_pour_splits() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    h.at(2).authorise("core.rfid", "0badc0de", "bob", "kegboard.flow0")
    h.at(3).read("kegboard.flow0", 160)
    h.at(60)
    assert [(d.username, d.ticks, d.reason) for d in h.drinks()] == [
        ("alice", 100, "replaced"),
        ("bob", 60, "idle"),
    ]


def test_captive_removal_ends_pour_at_once_noncaptive_does_not() -> None:
    h = Harness()
    h.authorise("core.onewire", "0000111122223333", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    h.at(2).feed(TokenEvent("core.onewire", "0000111122223333", False, "kegboard.flow0"))
    assert [(d.reason, d.end_wall) for d in h.drinks()] == [("token_removed", WALL0 + 1)]

    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    h.at(2).feed(TokenEvent("core.rfid", "deadbeef", False, "kegboard.flow0"))
    assert h.drinks() == []
    h.at(21.0)
    assert [d.reason for d in h.drinks()] == ["idle"]


def test_onewire_idle_limit_is_120_s() -> None:
    h = Harness()
    h.authorise("core.onewire", "0000111122223333", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    h.at(120.9)
    assert h.drinks() == []
    h.at(121)
    assert len(h.drinks()) == 1


def test_captive_removal_before_lookup_answer_opens_nothing() -> None:
    h = Harness()
    h.feed(TokenEvent("core.onewire", "0000111122223333", True, "kegboard.flow0"))
    h.feed(TokenEvent("core.onewire", "0000111122223333", False, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.onewire", "0000111122223333", "alice", True))
    assert h.relays() == []
    assert h.core.pours == {}


@pytest.mark.parametrize(
    ("username", "enabled"),
    [(None, True), ("alice", False), (None, False)],
    ids=["unassigned-or-unknown", "disabled", "unknown"],
)
def test_tokens_that_open_nothing(username: str | None, enabled: bool) -> None:
    h = Harness()
    h.feed(TokenEvent("core.rfid", "cafef00d", True, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.rfid", "cafef00d", username, enabled))
    assert h.relays() == []
    assert h.core.pours == {}
    assert h.core.stats.tokens_denied == 1
    assert any(isinstance(e, Notice) and "opening nothing" in e.message for e in h.effects)


def test_offline_denies_by_default() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.at(5).feed(FlowRequest("kegboard.flow0", "stop_flow"))
    h.relays().clear()
    before = len(h.of(SetRelay))
    h.at(10).feed(TokenEvent("core.rfid", "deadbeef", True, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.rfid", "deadbeef", error="timeout"))
    assert len(h.of(SetRelay)) == before
    assert "kegboard.flow0" not in h.core.pours
    notice = [e for e in h.effects if isinstance(e, Notice) and "unavailable" in e.message][-1]
    assert notice.fields["policy"] == "deny"


def test_offline_cached_policy_opens_for_recently_confirmed_user_only() -> None:
    auth = AuthSettings(offline_policy="cached", offline_cache_seconds=3600)
    h = Harness(CoreConfig(taps=(TAP0,), auth=auth))
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.at(5).feed(FlowRequest("kegboard.flow0", "stop_flow"))
    h.at(100).feed(TokenEvent("core.rfid", "deadbeef", True, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.rfid", "deadbeef", error="unreachable"))
    assert h.core.pours["kegboard.flow0"].username == "alice"
    h.at(200).feed(FlowRequest("kegboard.flow0", "stop_flow"))
    # Never confirmed: denied even with the cached policy.
    h.feed(TokenEvent("core.rfid", "0badc0de", True, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.rfid", "0badc0de", error="unreachable"))
    assert "kegboard.flow0" not in h.core.pours
    # Confirmed too long ago: denied.
    h.at(5000).feed(TokenEvent("core.rfid", "deadbeef", True, "kegboard.flow0"))
    h.feed(TokenLookupResult("core.rfid", "deadbeef", error="unreachable"))
    assert "kegboard.flow0" not in h.core.pours


def test_board_connected_registers_and_closes_its_tap_relays() -> None:
    h = Harness()
    out = h.feed(BoardConnected("kegboard", "/dev/ttyUSB0"))
    assert RegisterController("kegboard") in out
    assert ("kegboard.relay0", False, "board_connected") in h.relays()
    out = h.feed(BoardConnected("kegboard-other", "/dev/ttyUSB1"))
    assert [e for e in out if isinstance(e, SetRelay)] == []


def test_board_reconnect_mid_authorised_pour_reopens_valve() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    out = h.feed(BoardConnected("kegboard", "/dev/ttyUSB0"))
    assert SetRelay("kegboard.relay0", True, "board_connected") in out


def test_shutdown_records_pours_and_closes_opened_valves() -> None:
    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    out = h.core.shutdown(2, WALL0 + 2)
    assert [e.relay_name for e in out if isinstance(e, SetRelay) and not e.on] == [
        "kegboard.relay0"
    ]
    assert [(d.ticks, d.reason) for d in out if isinstance(d, RecordDrink)] == [(100, "shutdown")]
    assert h.core.open_relays == set()


def test_taps_changed_takes_effect_for_new_pours() -> None:
    h = Harness()
    h.feed(TapsChanged((TapConfig("kegboard.flow0", 2.0, None),)))
    h.read("kegboard.flow0", 0)
    h.read("kegboard.flow0", 10)
    h.at(30)
    assert [d.volume_ml for d in h.drinks()] == [20.0]


def test_progress_updates_at_most_every_250_ms() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    for i in range(1, 21):  # a reading every 100 ms for 2 s
        h.at(i * 0.1).read("kegboard.flow0", i * 10)
    active = [e.pour for e in h.of(PourUpdate) if e.state == "active"]
    times = [p.last_activity_wall for p in active]
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(times))
    assert len(active) == 7  # 0.1 (start), then 0.4, 0.7, ... 1.9: a reading each 0.3 s


# --- temperatures ---------------------------------------------------------------


def test_temperatures_rate_limited_range_checked_and_lost() -> None:
    h = Harness()
    h.feed(ThermoReading("kegboard.thermo-1", 4.5))
    h.at(30).feed(ThermoReading("kegboard.thermo-1", 4.6))
    h.at(61).feed(ThermoReading("kegboard.thermo-1", 4.7))
    h.at(62).feed(ThermoReading("kegboard.thermo-1", 85.0))
    h.at(63).feed(ThermoReading("kegboard.thermo-1", -25.0))
    assert [(e.celsius, e.wall) for e in h.of(RecordTemperature)] == [
        (4.5, WALL0),
        (4.7, WALL0 + 61),
    ]
    assert h.core.stats.temperatures_dropped == 2
    h.at(61 + 119)
    assert h.of(SensorState) == []
    h.at(61 + 120)
    assert h.of(SensorState) == [SensorState("kegboard.thermo-1", True)]
    h.at(300).feed(ThermoReading("kegboard.thermo-1", 4.0))
    assert h.of(SensorState)[-1] == SensorState("kegboard.thermo-1", False)


def test_replay_gives_the_same_effects() -> None:
    def run() -> list[Any]:
        h = Harness()
        h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
        h.read("kegboard.flow0", 0)
        for i in range(1, 10):
            h.at(i * 0.7).read("kegboard.flow0", i * 33)
        h.at(100)
        return h.effects

    assert run() == run()


# --- crash safety ---------------------------------------------------------------


def test_checkpoint_restore_continues_a_pour_with_every_tick() -> None:
    import json

    h = Harness()
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")
    h.read("kegboard.flow0", 1000)
    h.at(1).read("kegboard.flow0", 1300)
    saved = json.loads(json.dumps(h.core.checkpoint()))  # it must be JSON
    # The process dies; the board keeps counting to 1500 meanwhile.
    fresh = Core(CoreConfig(taps=(TAP0, TAP1)), first_flow_id=1)
    mono2 = 50.0  # a new process: another monotonic clock
    out = fresh.restore(saved, mono2, WALL0 + 4)
    assert not [e for e in out if isinstance(e, RecordDrink)]
    out += fresh.handle(MeterReading("kegboard.flow0", 1500), mono2 + 1, WALL0 + 5)
    out += fresh.advance(mono2 + 30, WALL0 + 34)
    [drink] = [e for e in out if isinstance(e, RecordDrink)]
    assert (drink.ticks, drink.username, drink.flow_id) == (500, "alice", 1)
    assert drink.start_wall == WALL0 + 0
    assert drink.end_wall == WALL0 + 5
    assert drink.duration_seconds == 5.0


def test_restore_of_a_pour_idle_meanwhile_records_it_at_once() -> None:
    h = Harness()
    h.read("kegboard.flow0", 0)
    h.at(1).read("kegboard.flow0", 100)
    saved = h.core.checkpoint()
    fresh = Core(CoreConfig(taps=(TAP0,)))
    out = fresh.restore(saved, 5.0, WALL0 + 300)
    assert [(d.ticks, d.reason) for d in out if isinstance(d, RecordDrink)] == [(100, "idle")]
    assert fresh.handle(MeterReading("kegboard.flow0", 100), 6.0, WALL0 + 301) == []


# --- cleaning ---------------------------------------------------------------------


def test_manual_valve_for_cleaning_is_not_a_drink() -> None:
    from kegtwist.core import ManualValve

    h = Harness()
    h.feed(ManualValve("kegboard.relay0", True))
    assert h.relays() == [("kegboard.relay0", True, "cleaning")]
    h.read("kegboard.flow0", 0)
    for i in range(1, 6):
        h.at(i * 2.0).read("kegboard.flow0", 500 * i)
    assert [r for r in h.relays() if r[2] == "refresh"]  # kept open past the board watchdog
    h.authorise("core.rfid", "deadbeef", "alice", "kegboard.flow0")  # ignored while cleaning
    h.at(11).feed(ManualValve("kegboard.relay0", False))
    assert h.relays()[-1] == ("kegboard.relay0", False, "cleaning")
    assert h.drinks() == []
    assert h.core.stats.cleaning_ticks == 2500
    assert h.core.open_relays == set()


def test_manual_valve_left_open_is_closed_by_the_guard() -> None:
    from kegtwist.core import ManualValve

    h = Harness()
    h.feed(ManualValve("kegboard.relay0", True))
    h.at(601)
    assert h.relays()[-1] == ("kegboard.relay0", False, "cleaning")
    assert h.core.cleaning == {}
