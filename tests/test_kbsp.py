"""KBSP v1 codec: the real capture, CRC vectors, round trips and corruption.

Plain tests, no reactor: the codec is pure.  The facts come from
``docs/kbsp.md``; the capture is ``tests/data/kegboard/one_flow_active.bin``.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Sequence

import pytest
from captures import kegboard_capture
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kegtwist.protocol import kbsp
from kegtwist.protocol.kbsp import (
    MAX_FRAME_LEN,
    MESSAGE_TYPES,
    PREFIX,
    AuthToken,
    BoardConfiguration,
    Decoder,
    FrameRejected,
    Hello,
    MeterStatus,
    OnewirePresence,
    OutputStatus,
    Ping,
    SetOutput,
    SetSerialNumber,
    TemperatureReading,
    UnknownMessage,
    crc16,
    encode,
    encode_frame,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- helpers ---------------------------------------------------------------


def capture() -> bytes:
    return kegboard_capture()


def feed_all(decoder: Decoder, chunks: Iterable[bytes]) -> list[kbsp.Event]:
    out: list[kbsp.Event] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (any order, duplicates allowed)."""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def messages(events: Sequence[kbsp.Event]) -> list[kbsp.Message]:
    return [e for e in events if not isinstance(e, FrameRejected)]


def rejects(events: Sequence[kbsp.Event]) -> list[FrameRejected]:
    return [e for e in events if isinstance(e, FrameRejected)]


def tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag, len(value))) + value


# --- the real capture ------------------------------------------------------

CAPTURED: list[kbsp.Message] = [
    Hello(firmware_version=3),
    OnewirePresence(device_id=0),
    *(MeterStatus("flow1", 4 * i) for i in range(1, 23)),
]


@pytest.mark.parametrize("chunk", [684, 1, 7, 29, 64], ids=lambda c: f"chunk{c}")
def test_real_capture_decodes_to_its_24_messages(chunk: int) -> None:
    data = capture()
    assert len(data) == 684
    d = Decoder()
    out = feed_all(d, (data[i : i + chunk] for i in range(0, len(data), chunk)))
    assert out == CAPTURED
    hello = out[0]
    assert isinstance(hello, Hello)
    assert hello.firmware_version == 3
    assert hello.protocol_version is None  # the classic firmware never sends it
    assert hello.serial_number is None
    onewire = out[1]
    assert isinstance(onewire, OnewirePresence)
    assert onewire.device_id == 0 and onewire.status is None
    for i, m in enumerate(out[2:], start=1):
        assert isinstance(m, MeterStatus)
        assert (m.meter_name, m.meter_reading) == ("flow1", 4 * i)
    assert d.stats == kbsp.DecoderStats(frames=24)
    assert d.buffered == 0


def test_real_capture_reencodes_byte_for_byte() -> None:
    """The encoder writes what a real board writes (no NUL after names)."""
    assert b"".join(encode(m) for m in CAPTURED) == capture()


# --- CRC -------------------------------------------------------------------

REF_HELLO = PREFIX + bytes.fromhex("01 00 04 00 01 02 03 00 2e 54 0d 0a")
REF_METER = PREFIX + bytes.fromhex(
    "10 00 0e 00 01 06 66 6c 6f 77 31 00 02 04 04 00 00 00 55 0a 0d 0a"
)


def test_crc16_known_vectors() -> None:
    assert crc16(b"123456789") == 0x2189  # CRC-16/KERMIT check value
    assert crc16(PREFIX) == 0xE3AF
    assert crc16(b"") == 0
    assert crc16(REF_HELLO[:-4]) == 0x542E
    assert crc16(REF_METER[:-4]) == 0x0A55
    # Over header + payload + CRC an intact frame gives 0; any input type.
    assert crc16(REF_HELLO[:-2]) == 0
    assert crc16(bytearray(REF_METER[:-2])) == 0
    assert crc16(memoryview(REF_METER)[:-2]) == 0


def test_crc16_matches_bitwise_reference() -> None:
    """The table trick equals avr-libc's ``_crc_ccitt_update`` loop."""

    def slow(data: bytes) -> int:
        crc = 0
        for byte in data:
            byte ^= crc & 0xFF
            byte = (byte ^ (byte << 4)) & 0xFF
            crc = ((byte << 8) | (crc >> 8)) ^ (byte >> 4) ^ (byte << 3)
        return crc & 0xFFFF

    rng = random.Random(7)
    for n in (1, 2, 3, 12, 127, 300):
        data = rng.randbytes(n)
        assert crc16(data) == slow(data)
    assert slow(b"123456789") == 0x2189


def test_reference_frames() -> None:
    assert Decoder().feed(REF_HELLO) == [Hello(firmware_version=3)]
    assert encode(Hello(firmware_version=3)) == REF_HELLO
    # The reference's name has a NUL; real boards send none: same message.
    assert Decoder().feed(REF_METER) == [MeterStatus("flow1", 4)]
    assert encode_frame(0x10, REF_METER[12:-4]) == REF_METER


# --- round trips -----------------------------------------------------------

KNOWN_IDS = frozenset(t.MESSAGE_ID for t in MESSAGE_TYPES)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)


def text(max_size: int = 20) -> st.SearchStrategy[str]:
    """Strings the codec can carry: no NUL (it ends a string), <= 80 bytes."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=max_size)


def opt(s: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | s


# Every message type, over its valid field ranges; payloads stay <= 112 bytes.
STRATEGIES: dict[type, st.SearchStrategy[kbsp.Message]] = {
    Hello: st.builds(
        Hello,
        firmware_version=opt(u16),
        protocol_version=opt(u16),
        serial_number=opt(text()),
        uptime_millis=opt(u32),
        uptime_days=opt(u32),
    ),
    BoardConfiguration: st.builds(
        BoardConfiguration,
        board_name=opt(text()),
        baud_rate=opt(u16),
        update_interval=opt(u16),
        watchdog_timeout=opt(u16),
    ),
    MeterStatus: st.builds(MeterStatus, meter_name=text(), meter_reading=u32),
    TemperatureReading: st.builds(TemperatureReading, sensor_name=text(), sensor_reading=i32),
    OutputStatus: st.builds(OutputStatus, output_name=text(), output_reading=st.booleans()),
    OnewirePresence: st.builds(OnewirePresence, device_id=u64, status=opt(u8)),
    AuthToken: st.builds(AuthToken, device_name=text(), token=st.binary(max_size=20), status=u8),
    Ping: st.just(Ping()),
    SetOutput: st.builds(SetOutput, output_id=u8, output_mode=st.booleans()),
    SetSerialNumber: st.builds(SetSerialNumber, serial_number=text()),
    UnknownMessage: st.builds(
        UnknownMessage,
        message_id=u16.filter(lambda i: i not in KNOWN_IDS),
        payload=st.binary(max_size=112),
    ),
}
ANY_MESSAGE = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_message_type() -> None:
    assert set(STRATEGIES) == {*MESSAGE_TYPES, UnknownMessage}


@FAST
@given(data=st.data())
def test_every_type_round_trips(data: st.DataObject) -> None:
    """One message of every type per example (parametrize and @given do not
    mix under pytest-twisted)."""
    for kind, strategy in STRATEGIES.items():
        message = data.draw(strategy, label=kind.__name__)
        frame = encode(message)
        assert len(frame) <= MAX_FRAME_LEN
        d = Decoder()
        assert d.feed(frame) == [message]
        assert d.stats.frames == 1 and d.stats.bytes_skipped == 0 and d.buffered == 0
        assert d.stats.unknown_messages == (kind is UnknownMessage)


@settings(max_examples=100, deadline=None)
@given(
    sent=st.lists(ANY_MESSAGE, max_size=40),
    cuts=st.lists(st.integers(0, 40 * MAX_FRAME_LEN), max_size=30),
)
def test_stream_round_trips_under_any_chunking(sent: list[kbsp.Message], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in sent)
    d = Decoder()
    assert feed_all(d, split(stream, cuts)) == sent
    assert d.stats.frames == len(sent)
    assert d.stats.unknown_messages == sum(isinstance(m, UnknownMessage) for m in sent)
    assert d.stats.bytes_skipped == d.stats.crc_errors == d.stats.framing_errors == 0
    assert d.buffered == 0


# --- corruption ------------------------------------------------------------

# Messages for the corruption tests: distinct (so a decoded message names its
# position), with names and tokens that cannot hide a prefix-like run of bytes.
NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", max_size=23)
PLAIN_MESSAGE = st.one_of(
    st.builds(MeterStatus, meter_name=NAME, meter_reading=u32),
    st.builds(TemperatureReading, sensor_name=NAME, sensor_reading=i32),
    st.builds(AuthToken, device_name=NAME, token=st.binary(max_size=10), status=u8),
    st.builds(Hello, firmware_version=opt(u16), serial_number=opt(NAME), uptime_millis=opt(u32)),
    st.builds(OutputStatus, output_name=NAME, output_reading=st.booleans()),
    st.builds(
        UnknownMessage,
        message_id=u16.filter(lambda i: i not in KNOWN_IDS),
        payload=st.binary(max_size=40),
    ),
)
# An 8-byte run one byte away from the prefix: corruption could complete it.
NEAR_PREFIX = re.compile(
    b"(?="
    + b"|".join(re.escape(PREFIX[:j]) + b"." + re.escape(PREFIX[j + 1 :]) for j in range(8))
    + b")",
    re.DOTALL,
)


def check_corrupted_stream(
    sent: Sequence[kbsp.Message],
    frames: Sequence[bytes],
    stream: bytes,
    touched: set[int],
    cuts: Iterable[int] = (),
) -> None:
    """What the decoder guarantees for a stream with some bytes corrupted.

    * Every message out is one that was sent, in order (a subsequence).
    * Every frame none of whose bytes was touched comes out: after a bad
      frame the decoder resumes one byte in, so it finds the next good prefix
      even inside bytes a corrupt length field claimed.  The stream ends with
      a maximal frame's worth of padding, which is what delivers frames held
      back by a corrupt length claiming bytes past the end (on a real line
      the 10 s hello does that).
    * The counters add up: every byte is in a good frame, skipped or buffered.
    """
    d = Decoder()
    out = feed_all(d, split(stream, cuts))
    got = messages(out)
    index = {m: i for i, m in enumerate(sent)}
    unsent = [m for m in got if m not in index]
    assert not unsent, f"decoded messages that were never sent: {unsent}"
    positions = [index[m] for m in got]
    assert positions == sorted(set(positions)), "out of order or repeated"
    recovered = set(positions)
    untouched = set(range(len(sent))) - touched
    assert untouched <= recovered, f"lost intact frames {sorted(untouched - recovered)}"
    st_ = d.stats
    assert st_.frames == len(got)
    assert st_.payload_errors == 0
    assert st_.unknown_messages == sum(isinstance(m, UnknownMessage) for m in got)
    bad = rejects(out)
    assert st_.crc_errors == sum(r.kind == "crc" for r in bad)
    assert st_.framing_errors == sum(r.kind == "framing" for r in bad)
    good_bytes = sum(len(frames[i]) for i in recovered)
    assert good_bytes + st_.bytes_skipped + d.buffered == len(stream)
    assert d.buffered < len(PREFIX)


@settings(max_examples=200, deadline=None)
@given(
    sent=st.lists(PLAIN_MESSAGE, min_size=1, max_size=60, unique=True),
    data=st.data(),
)
def test_corruption_never_invents_and_never_loses_intact_frames(
    sent: list[kbsp.Message], data: st.DataObject
) -> None:
    frames = [encode(m) for m in sent]
    clean = b"".join(frames)
    assume(len(NEAR_PREFIX.findall(clean)) == len(frames))
    starts = [0]
    for f in frames:
        starts.append(starts[-1] + len(f))
    # At most one corrupted byte per frame (anywhere in it: prefix, header,
    # payload, CRC or trailer): CRC-16 detects every error burst of up to 16
    # bits, so such a frame can never pass.  Any number of frames, adjacent
    # ones included.  (Several bytes per frame: see the seeded test below.)
    hits = data.draw(
        st.dictionaries(
            st.integers(0, len(frames) - 1),
            st.tuples(st.integers(0, MAX_FRAME_LEN - 1), st.integers(1, 255)),
            max_size=len(frames),
        ),
        label="corruptions",
    )
    buf = bytearray(clean)
    for i, (offset, xor) in hits.items():
        buf[starts[i] + offset % len(frames[i])] ^= xor
    # Garbage between frames, without a "K" so that it cannot hold a prefix.
    garbage = data.draw(
        st.dictionaries(
            st.integers(0, len(frames)),
            st.binary(min_size=1, max_size=20).filter(lambda b: b"K" not in b),
            max_size=5,
        ),
        label="garbage",
    )
    stream = (
        b"".join(
            garbage.get(i, b"") + bytes(buf[starts[i] : starts[i + 1]]) for i in range(len(frames))
        )
        + garbage.get(len(frames), b"")
        + bytes(MAX_FRAME_LEN)
    )
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    check_corrupted_stream(sent, frames, stream, set(hits), cuts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_stream_with_random_corruption(seed: int) -> None:
    """Thousands of frames, bytes corrupted anywhere, several per frame too.

    A frame with two or more corrupted bytes escapes CRC-16 with odds of
    about 2^-16; fixed seeds make this test deterministic.
    """
    rng = random.Random(seed)
    sent: list[kbsp.Message] = []
    for i in range(3000):
        r = rng.random()
        if r < 0.9:
            sent.append(MeterStatus(f"flow{i % 4}", i))
        elif r < 0.95:
            sent.append(TemperatureReading("thermo-" + rng.randbytes(8).hex(), i))
        elif r < 0.98:
            sent.append(AuthToken("core.rfid", rng.randbytes(5) + i.to_bytes(4, "big"), i % 2))
        else:
            sent.append(Hello(firmware_version=18, serial_number="", uptime_millis=i))
    frames = [encode(m) for m in sent]
    clean = b"".join(frames)
    owner: list[int] = []
    for i, f in enumerate(frames):
        owner += [i] * len(f)
    buf = bytearray(clean)
    corrupted = rng.sample(range(len(buf)), 400)
    for p in corrupted:
        buf[p] ^= rng.randrange(1, 256)
    stream = bytes(buf) + bytes(MAX_FRAME_LEN)
    cuts = [rng.randrange(len(stream)) for _ in range(len(stream) // 200)]
    check_corrupted_stream(sent, frames, stream, {owner[p] for p in corrupted}, cuts)


def test_corrupt_length_never_costs_the_frames_it_claims() -> None:
    """A length field bumped by corruption claims the next frames' bytes; the
    decoder finds them again inside what it skipped."""
    broken = bytearray(encode(MeterStatus("flow1", 1)))
    broken[10] = 100  # payload length 13 -> 100: runs over the next frames
    after = [MeterStatus("flow0", i) for i in range(5)]
    d = Decoder()
    out = d.feed(bytes(broken) + b"".join(encode(m) for m in after))
    assert messages(out) == after
    assert d.stats.frames == 5 and d.stats.bytes_skipped == len(broken)
    assert d.stats.crc_errors + d.stats.framing_errors == 1


def test_corrupt_length_at_the_end_waits_for_more_bytes() -> None:
    """Claimed bytes that have not arrived yet hold the frames inside them
    back, not lose them: the next bytes (a hello within 10 s) settle it."""
    broken = bytearray(encode(MeterStatus("flow1", 1)))
    broken[10] = 100
    good = encode(MeterStatus("flow0", 2))
    d = Decoder()
    assert d.feed(bytes(broken) + good) == []
    assert d.buffered == len(broken) + len(good)
    out = d.feed(encode(Hello(firmware_version=18)) * 4)
    assert messages(out) == [MeterStatus("flow0", 2)] + [Hello(firmware_version=18)] * 4


def test_bad_frame_hiding_a_good_one_gives_the_good_one() -> None:
    """The decoder resumes at the next prefix inside a rejected frame."""
    inner = encode(MeterStatus("flow0", 42))
    outer = bytearray(encode(UnknownMessage(0x7777, inner)))
    outer[-3] ^= 0xFF  # bad CRC on the outer frame
    after = encode(MeterStatus("flow0", 43))
    d = Decoder()
    out = d.feed(bytes(outer) + after)
    assert messages(out) == [MeterStatus("flow0", 42), MeterStatus("flow0", 43)]
    assert [r.kind for r in rejects(out)] == ["crc"]
    assert d.stats.crc_errors == 1 and d.stats.frames == 2
    assert d.stats.bytes_skipped == len(outer) - len(inner)


# --- framing errors and their counters ---------------------------------------

GOOD = encode(MeterStatus("flow0", 1))


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "bytewise"])
def test_garbage_before_the_first_frame(chunk: int | None) -> None:
    garbage = b"\x00\xffKBSP v\r\nKBS" + b"line noise" * 10 + b"KBSP v1"
    data = garbage + GOOD
    d = Decoder()
    parts = [data] if chunk is None else [data[i : i + 1] for i in range(len(data))]
    out = feed_all(d, parts)
    assert out == [MeterStatus("flow0", 1)]
    assert d.stats == kbsp.DecoderStats(frames=1, bytes_skipped=len(garbage))
    assert d.buffered == 0


def test_garbage_alone_keeps_at_most_a_partial_prefix() -> None:
    d = Decoder()
    for _ in range(100):
        assert d.feed(b"noise" * 50 + b"KBSP v1") == []
        assert d.buffered <= len(PREFIX) - 1
    assert d.stats.bytes_skipped + d.buffered == 100 * (250 + 7)
    assert d.feed(b":" + GOOD[8:]) == [MeterStatus("flow0", 1)]


def test_payload_length_over_the_bound_is_a_framing_error() -> None:
    bogus = PREFIX + bytes.fromhex("10 00 71 00") + b"\x01\x05flow0"  # length 113
    d = Decoder()
    out = d.feed(bogus + GOOD)
    assert messages(out) == [MeterStatus("flow0", 1)]
    [r] = rejects(out)
    assert r.kind == "framing" and "113" in r.reason
    assert d.stats == kbsp.DecoderStats(frames=1, framing_errors=1, bytes_skipped=len(bogus))


def test_largest_payload_is_accepted() -> None:
    m = UnknownMessage(0x7F, bytes(range(112)))
    assert len(encode(m)) == MAX_FRAME_LEN
    assert Decoder().feed(encode(m)) == [m]
    with pytest.raises(ValueError):
        encode_frame(0x7F, bytes(113))


@pytest.mark.parametrize("trailer", [b"\r\x00", b"\n\r", b"\x00\n"])
def test_bad_trailer_is_a_framing_error(trailer: bytes) -> None:
    bad = GOOD[:-2] + trailer
    d = Decoder()
    out = d.feed(bad + GOOD)
    assert messages(out) == [MeterStatus("flow0", 1)]
    assert [r.kind for r in rejects(out)] == ["framing"]
    assert rejects(out)[0].data == bad
    assert d.stats == kbsp.DecoderStats(frames=1, framing_errors=1, bytes_skipped=len(bad))


def test_crc_error_is_counted_and_the_next_frame_survives() -> None:
    bad = bytearray(GOOD)
    bad[14] ^= 0x20  # "flow0" -> "Flow0"
    d = Decoder()
    out = d.feed(bytes(bad) + GOOD)
    assert messages(out) == [MeterStatus("flow0", 1)]
    assert [r.kind for r in rejects(out)] == ["crc"]
    assert d.stats == kbsp.DecoderStats(frames=1, crc_errors=1, bytes_skipped=len(bad))


def test_trailer_bytes_inside_payload_do_not_end_a_frame() -> None:
    m = AuthToken("core.rfid", b"\r\n\r\nKBSP", 1)
    assert Decoder().feed(encode(m) + GOOD) == [m, MeterStatus("flow0", 1)]


def test_length_running_past_the_chunk_waits_for_more() -> None:
    d = Decoder()
    assert d.feed(GOOD[:-1]) == []
    assert d.buffered == len(GOOD) - 1
    assert d.feed(GOOD[-1:]) == [MeterStatus("flow0", 1)]
    assert d.stats.bytes_skipped == 0


def test_unknown_message_id_is_counted_not_raised() -> None:
    frame = encode_frame(0x42, b"\x01\x02hi")
    d = Decoder()
    assert d.feed(frame + GOOD + frame) == [
        UnknownMessage(0x42, b"\x01\x02hi"),
        MeterStatus("flow0", 1),
        UnknownMessage(0x42, b"\x01\x02hi"),
    ]
    assert d.stats == kbsp.DecoderStats(frames=3, unknown_messages=2)


def test_unknown_tags_are_skipped() -> None:
    payload = tlv(0x7F, b"future") + tlv(0x01, b"flow3") + tlv(0x00, b"") + tlv(0x02, b"\x10\0\0\0")
    payload += tlv(0xFF, bytes(30))
    hello = tlv(0x09, b"x") + tlv(0x01, b"\x12\x00") + tlv(0x06, bytes(8))
    d = Decoder()
    assert d.feed(encode_frame(0x10, payload) + encode_frame(0x01, hello)) == [
        MeterStatus("flow3", 16),
        Hello(firmware_version=18),
    ]
    assert d.stats == kbsp.DecoderStats(frames=2)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"flow0", "flow0"),  # real boards: no NUL
        (b"flow0\0", "flow0"),  # the reference: one NUL
        (b"flow0" + bytes(25), "flow0"),  # a padded field
        (bytes(30), ""),  # an unset, all-NUL serial number
        (b"thermo-28aabbccddeeff00", "thermo-28aabbccddeeff00"),  # 23 bytes, no NUL
        (b"", ""),
    ],
)
def test_strings_with_and_without_trailing_nuls(raw: bytes, name: str) -> None:
    frames = (
        encode_frame(0x10, tlv(0x01, raw) + tlv(0x02, b"\x07\0\0\0")),
        encode_frame(
            0x11, tlv(0x01, raw) + tlv(0x02, (-1_500_000).to_bytes(4, "little", signed=True))
        ),
        encode_frame(0x01, tlv(0x03, raw)),
    )
    assert Decoder().feed(b"".join(frames)) == [
        MeterStatus(name, 7),
        TemperatureReading(name, -1_500_000),
        Hello(serial_number=name),
    ]


def test_output_t_of_one_or_two_bytes() -> None:
    """The firmware sends a 2-byte output_t in output_status."""
    frames = [
        encode_frame(0x12, tlv(0x01, b"relay0") + tlv(0x02, value))
        for value in (b"\x01\x00", b"\x00\x00", b"\x01", b"\x00", b"\x00\x01")
    ]
    assert [m.output_reading for m in Decoder().feed(b"".join(frames))] == [  # type: ignore[union-attr]
        True,
        False,
        True,
        False,
        True,
    ]
    assert encode(SetOutput(3, True))[12:-4] == b"\x01\x01\x03\x02\x01\x01"


def test_repeated_tag_keeps_the_last_value() -> None:
    payload = tlv(0x01, b"flow0") + tlv(0x02, b"\1\0\0\0") + tlv(0x02, b"\2\0\0\0")
    assert Decoder().feed(encode_frame(0x10, payload)) == [MeterStatus("flow0", 2)]


@pytest.mark.parametrize(
    "payload",
    [
        tlv(0x01, b"flow0") + b"\x02\x04\x01\x00",  # field runs past the end
        tlv(0x01, b"flow0") + b"\x02",  # truncated field header
        tlv(0x01, b"flow0"),  # required reading missing
        tlv(0x01, b"flow0") + tlv(0x02, bytes(9)),  # 9-byte integer
        tlv(0x01, b"flow0") + tlv(0x02, b""),  # 0-byte integer
    ],
)
def test_payload_errors_are_counted_and_the_stream_goes_on(payload: bytes) -> None:
    d = Decoder()
    out = d.feed(encode_frame(0x10, payload) + GOOD)
    assert messages(out) == [MeterStatus("flow0", 1)]
    assert [r.kind for r in rejects(out)] == ["payload"]
    # A payload error is a well-delimited frame with a good CRC: its bytes
    # are consumed, not skipped, and it counts as a frame.
    assert d.stats == kbsp.DecoderStats(frames=2, payload_errors=1)
    assert d.buffered == 0


def test_encoder_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ValueError):
        encode(MeterStatus("flow0", 2**32))
    with pytest.raises(ValueError):
        encode(SetOutput(256, True))
    with pytest.raises(ValueError):
        encode(MeterStatus(None, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(SetSerialNumber("x" * 113))
