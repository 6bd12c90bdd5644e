"""The Kegnet catalogue: classic wire form in and out, never an exception."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from captures import kegnet_capture
from hypothesis import given, settings
from hypothesis import strategies as st

from kegtwist.protocol import kegnet as events


def capture(name: str) -> list[str]:
    return kegnet_capture(name)


def test_classic_kegboard_daemon_capture_decodes() -> None:
    decoded = [events.decode(m) for m in capture("classic-kegboard-daemon.jsonl")]
    assert decoded[0] == events.ControllerConnectedEvent("kegboard")
    assert decoded[1:] == [events.MeterUpdate("kegboard.flow1", 4 * i) for i in range(1, 23)]


def test_classic_test_flow_capture_decodes() -> None:
    decoded = [events.decode(m) for m in capture("classic-test-flow-rfid.jsonl")]
    assert decoded[0] == events.TokenAuthEvent("kegboard.flow0", "core.rfid", "deadbeef", "added")
    readings = [e.reading for e in decoded if isinstance(e, events.MeterUpdate)]
    assert readings == list(range(0, 1001, 100))
    assert decoded[-1] == events.TokenAuthEvent(
        "kegboard.flow0", "core.rfid", "deadbeef", "removed"
    )


def test_flow_update_wire_form() -> None:
    event = events.FlowUpdate(
        7, "kegboard.flow0", "active", "alice", 1795000000.12, 1795000003.5, 120, 44.05, "me"
    )
    wire = json.loads(events.encode(event))
    assert wire == {
        "event": "FlowUpdate",
        "data": {
            "flow_id": 7,
            "meter_name": "kegboard.flow0",
            "state": "active",
            "username": "alice",
            "start_time": "2026-11-18T11:06:40.120+00:00",
            "last_activity_time": "2026-11-18T11:06:43.500+00:00",
            "ticks": 120,
            "volume_ml": 44.05,
            "origin": "me",
        },
    }


def test_drink_created_and_relay_wire_form() -> None:
    wire = json.loads(events.encode(events.DrinkCreatedEvent(7, 42, "k.flow0", 0.0, 1.5, None)))
    assert wire["event"] == "DrinkCreatedEvent"
    assert wire["data"] == {
        "flow_id": 7,
        "drink_id": 42,
        "meter_name": "k.flow0",
        "start_time": "1970-01-01T00:00:00.000+00:00",
        "end_time": "1970-01-01T00:00:01.500+00:00",
        "username": None,
    }
    relay = json.loads(events.encode(events.SetRelayOutputEvent("kegboard.relay0", "enabled")))
    assert relay == {
        "event": "SetRelayOutputEvent",
        "data": {"output_name": "kegboard.relay0", "output_mode": "enabled"},
    }


def test_times_accepted_as_iso_or_unix_seconds() -> None:
    base = {"flow_id": 1, "meter_name": "m", "state": "idle", "username": None, "ticks": 1}
    iso = dict(base, start_time="2026-11-24T18:30:05.120+00:00", last_activity_time=1.0)
    unix = dict(base, start_time=1795545005.12, last_activity_time="1970-01-01T00:00:01Z")
    a = events.decode(json.dumps({"event": "FlowUpdate", "data": dict(iso, volume_ml=1)}))
    b = events.decode(json.dumps({"event": "FlowUpdate", "data": dict(unix, volume_ml=1)}))
    assert isinstance(a, events.FlowUpdate) and isinstance(b, events.FlowUpdate)
    assert a.start_time == pytest.approx(b.start_time)
    assert a.last_activity_time == b.last_activity_time == 1.0


MALFORMED: list[tuple[Any, str]] = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_utf8"),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "\xe9", "reading": 1}}', "invalid_utf8"),
    # UTF-16 is what json.loads(bytes) would guess here; the wire is UTF-8.
    ('{"event": "ControllerConnectedEvent"}'.encode("utf-16-le"), "invalid_json"),
    (b"\xef\xbb\xbf{}", "invalid_json"),
    (b"", "invalid_json"),
    (b"[" * 100_000, "oversized"),
    (b"[" * 60_000, "invalid_json"),  # deep nesting: RecursionError, caught
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a", "reading": 1' + b"0" * 5000 + b"}}",
        "invalid_json",
    ),
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": 4294967296}}',
        "out_of_range",
    ),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": 1.5}}', "bad_field"),
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": Infinity}}',
        "invalid_json",
    ),
    (b'{"event": "MeterUpdate", "data": {"meter_name": null, "reading": 1}}', "bad_field"),
    (b'{"event": "MeterUpdate", "data": {"reading": 1}}', "bad_field"),
    (b'{"event": 7, "data": {}}', "no_event_name"),
    (b'{"event": "FlowRequest", "data": {"meter_name": "m", "request": "explode"}}', "bad_field"),
    (
        b'{"event": "TokenAuthEvent", "data": {"auth_device_name": "core.rfid", "token_value": "ab", "status": "gone"}}',
        "bad_field",
    ),
    (b"[1, 2]", "not_an_object"),
    (b'"MeterUpdate"', "not_an_object"),
    (b'{"event": "MeterUpdate"}', "bad_data"),
    (b'{"event": "MeterUpdate", "data": []}', "bad_data"),
    (b'{"data": {}}', "no_event_name"),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": "abc"}}', "bad_field"),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": "100"}}', "bad_field"),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": null}}', "bad_field"),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": 1e400}}', "bad_field"),
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": NaN}}',
        "invalid_json",
    ),
    (b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": true}}', "bad_field"),
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a.flow0", "reading": -400}}',
        "out_of_range",
    ),
    (b'{"event": "MeterUpdate", "data": {"meter_name": 5, "reading": 1}}', "bad_field"),
    (b'{"event": "ThermoEvent", "data": {"sensor_name": "t", "sensor_value": "4.5"}}', "bad_field"),
    (
        b'{"event": "SetRelayOutputEvent", "data": {"output_name": "k.relay0", "output_mode": 1}}',
        "bad_field",
    ),
    (
        b'{"event": "MeterUpdate", "data": {"meter_name": "a", "reading": 1, "x": "'
        + b"y" * 70000
        + b'"}}',
        "oversized",
    ),
]


def _flow_update_with(**changes: Any) -> bytes:
    data = {
        "flow_id": 1, "meter_name": "m", "state": "idle", "username": None, "ticks": 1,
        "volume_ml": 1.0, "start_time": 0, "last_activity_time": 0,
    }  # fmt: skip
    data.update(changes)
    return json.dumps({"event": "FlowUpdate", "data": data}).encode()


MALFORMED += [
    (_flow_update_with(start_time=1e300), "out_of_range"),
    (_flow_update_with(start_time=-1), "out_of_range"),
    (_flow_update_with(last_activity_time="9999-12-31T23:59:59-23:59"), "out_of_range"),
    (_flow_update_with(start_time="yesterday"), "bad_field"),
    (_flow_update_with(start_time=None), "bad_field"),
    (_flow_update_with(state="pouring"), "bad_field"),
    (_flow_update_with(ticks=True), "bad_field"),
    (_flow_update_with(volume_ml="1"), "bad_field"),
    (_flow_update_with(username=5), "bad_field"),
]


def test_size_limit_counts_utf8_bytes_of_a_str() -> None:
    """64 KiB of wire, not of characters: 30,000 euro signs are 90,000 bytes."""
    text = (
        '{"event":"MeterUpdate","data":{"meter_name":"a","reading":1,"x":"'
        + "\u20ac" * 30000
        + '"}}'
    )
    assert events.decode(text) == events.Rejected(
        "oversized", f"{len(text.encode())} bytes, limit 65536"
    )
    assert events.decode(text.encode()).reason == "oversized"  # type: ignore[union-attr]
    small = '{"event":"MeterUpdate","data":{"meter_name":"\u20ac","reading":1}}'
    assert events.decode(small) == events.decode(small.encode()) == events.MeterUpdate("\u20ac", 1)


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_malformed_messages_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    result = events.decode(raw)
    assert isinstance(result, events.Rejected)
    assert result.reason == reason


def test_internal_and_unknown_events_are_ignored() -> None:
    for name in ("QuitEvent", "Ping", "StartedEvent", "HeartbeatSecondEvent", "SyncEvent"):
        result = events.decode(json.dumps({"event": name, "data": {}}))
        assert result == events.Ignored("internal_event", name)
    assert events.decode('{"event": "NewFangledEvent", "data": {}}') == events.Ignored(
        "unknown_event", "NewFangledEvent"
    )


def test_unknown_fields_ignored_and_origin_kept() -> None:
    raw = (
        '{"event":"MeterUpdate","data":{"meter_name":"a.flow0","reading":5,"extra":1,"origin":"x"}}'
    )
    assert events.decode(raw) == events.MeterUpdate("a.flow0", 5, "x")


def test_token_for_all_taps_may_have_no_meter() -> None:
    raw = '{"event":"TokenAuthEvent","data":{"auth_device_name":"core.rfid","token_value":"ab","status":"added"}}'
    assert events.decode(raw) == events.TokenAuthEvent("", "core.rfid", "ab", "added")


names = st.text(min_size=1, max_size=20)
times = st.floats(min_value=0, max_value=4e9).map(lambda t: round(t, 3))
origins = st.none() | names
event_strategy = st.one_of(
    st.builds(events.MeterUpdate, names, st.integers(0, 2**32 - 1), origins),
    st.builds(
        events.TokenAuthEvent, names, names, names, st.sampled_from(["added", "removed"]), origins
    ),
    st.builds(events.ThermoEvent, names, st.floats(-50, 150), origins),
    st.builds(
        events.FlowRequest,
        names,
        st.sampled_from(["start_flow", "stop_flow", "report_status"]),
        origins,
    ),
    st.builds(events.ControllerConnectedEvent, names, origins),
    st.builds(
        events.FlowUpdate,
        st.integers(0, 2**53),
        names,
        st.sampled_from(["active", "idle", "completed"]),
        st.none() | names,
        times,
        times,
        st.integers(0, 2**32),
        st.floats(0, 1e6),
        origins,
    ),
    st.builds(
        events.DrinkCreatedEvent,
        st.integers(0, 2**53),
        st.integers(0, 2**31),
        names,
        times,
        times,
        st.none() | names,
        origins,
    ),
    st.builds(events.SetRelayOutputEvent, names, st.sampled_from(["enabled", "disabled"]), origins),
)


@settings(max_examples=300, deadline=None)
@given(event_strategy)
def test_every_event_round_trips(event: events.Event) -> None:
    decoded = events.decode(events.encode(event))
    if isinstance(event, events.FlowUpdate | events.DrinkCreatedEvent):
        # Times travel as ISO 8601 with milliseconds.
        assert isinstance(decoded, type(event))
        for name in (f.name for f in dataclasses.fields(event)):
            want, got = getattr(event, name), getattr(decoded, name)
            if name.endswith("_time"):
                assert got == pytest.approx(want, abs=0.0011)
            else:
                assert got == want
    else:
        assert decoded == event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
strict_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_input_never_raises(raw: bytes) -> None:
    result = events.decode(raw)
    assert isinstance(result, events.Rejected | events.Ignored) or hasattr(result, "NAME")
    if not isinstance(result, events.Rejected | events.Ignored):
        events.encode(result)  # whatever is accepted can be sent on again


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(events._DECODERS)),
    st.dictionaries(
        st.sampled_from(
            [
                "meter_name",
                "reading",
                "flow_id",
                "state",
                "ticks",
                "sensor_value",
                "output_mode",
                "start_time",
                "status",
            ]
        ),
        json_values,
    ),
)
def test_any_data_for_a_known_event_never_raises(name: str, data: dict[str, Any]) -> None:
    result = events.decode(json.dumps({"event": name, "data": data}))
    if not isinstance(result, events.Rejected | events.Ignored):
        events.encode(result)  # whatever is accepted can be sent on again


@settings(max_examples=300, deadline=None)
@given(event_strategy, st.dictionaries(st.text(max_size=10), strict_json_values, max_size=3))
def test_classic_indented_form_and_unknown_fields_decode_the_same(
    event: events.Event, extra: dict[str, Any]
) -> None:
    """What the classic encoder sends (2-space indent) with fields a newer
    daemon might add decodes to the same event."""
    wire = json.loads(events.encode(event))
    for key, value in extra.items():
        wire["data"].setdefault(key, value)
    assert events.decode(json.dumps(wire, indent=2)) == events.decode(events.encode(event))
