"""The KBSP v1 codec: a real capture, the reference vectors, round trips
under any chunking, and corruption that never invents a message."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kegtwist import kbsp

CAPTURE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "testdata"
    / "kegboard"
    / "one_flow_active.bin"
)


def capture() -> bytes:
    if not CAPTURE.exists():
        pytest.skip(f"{CAPTURE} is absent (the ../shared test data lives beside the project)")
    return CAPTURE.read_bytes()


def messages(events: list[kbsp.Event]) -> list[kbsp.Message]:
    return [e for e in events if not isinstance(e, kbsp.FrameRejected)]


EXPECTED_CAPTURE = [
    kbsp.Hello,
    kbsp.OnewirePresence,
    *[kbsp.MeterStatus] * 22,
]


def check_capture(decoded: list[kbsp.Event]) -> None:
    assert [type(m) for m in decoded] == EXPECTED_CAPTURE
    hello = decoded[0]
    assert isinstance(hello, kbsp.Hello) and hello.firmware_version == 3
    presence = decoded[1]
    assert isinstance(presence, kbsp.OnewirePresence) and presence.device_id == 0
    assert decoded[2:] == [kbsp.MeterStatus("flow1", 4 * i) for i in range(1, 23)]


def test_real_capture_fed_whole() -> None:
    decoder = kbsp.Decoder()
    check_capture(decoder.feed(capture()))
    s = decoder.stats
    assert (s.frames, s.crc_errors, s.framing_errors, s.bytes_skipped) == (24, 0, 0, 0)
    assert decoder.buffered == 0


def test_real_capture_fed_one_byte_at_a_time() -> None:
    decoder = kbsp.Decoder()
    data = capture()
    out: list[kbsp.Event] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    check_capture(out)
    assert decoder.stats.frames == 24


def test_crc_check_values() -> None:
    assert kbsp.crc16(b"123456789") == 0x2189
    assert kbsp.crc16(b"KBSP v1:") == 0xE3AF
    frame = kbsp.encode(kbsp.MeterStatus("flow1", 4))
    assert kbsp.crc16(frame[:-2]) == 0  # the CRC over data + CRC is zero


def test_reference_vectors() -> None:
    hello = b"KBSP v1:" + bytes.fromhex("01 00 04 00 01 02 03 00 2e 54 0d 0a")
    assert kbsp.Decoder().feed(hello) == [kbsp.Hello(firmware_version=3)]
    assert kbsp.encode(kbsp.Hello(firmware_version=3)) == hello
    meter = b"KBSP v1:" + bytes.fromhex(
        "10 00 0e 00 01 06 66 6c 6f 77 31 00 02 04 04 00 00 00 55 0a 0d 0a"
    )
    assert kbsp.Decoder().feed(meter) == [kbsp.MeterStatus("flow1", 4)]  # NUL stripped


def test_unknown_message_id_is_counted_not_raised() -> None:
    decoder = kbsp.Decoder()
    frame = kbsp.encode_frame(0x7E, b"\x01\x01\x05")
    [message] = decoder.feed(frame + kbsp.encode(kbsp.Ping()))[:1]
    assert message == kbsp.UnknownMessage(0x7E, b"\x01\x01\x05")
    assert decoder.stats.unknown_messages == 1 and decoder.stats.frames == 2


def test_unknown_tags_are_skipped_and_strings_lose_trailing_nuls() -> None:
    payload = b"\x09\x03abc" + b"\x01\x07flow0\x00\x00" + b"\x02\x04" + (77).to_bytes(4, "little")
    [message] = kbsp.Decoder().feed(kbsp.encode_frame(0x10, payload))
    assert message == kbsp.MeterStatus("flow0", 77)


def test_bad_crc_bad_trailer_and_oversized_length_are_rejected_and_counted() -> None:
    good = kbsp.encode(kbsp.MeterStatus("flow0", 1))
    bad_crc = bytearray(good)
    bad_crc[-3] ^= 0xFF
    bad_trailer = good[:-2] + b"\n\r"
    oversized = b"KBSP v1:" + bytes.fromhex("10 00 ff 00")
    garbage = b"\x00junk\r\n"
    stream = garbage + bytes(bad_crc) + good + bad_trailer + good + oversized + good
    decoder = kbsp.Decoder()
    out = decoder.feed(stream)
    assert messages(out) == [kbsp.MeterStatus("flow0", 1)] * 3
    kinds = [e.kind for e in out if isinstance(e, kbsp.FrameRejected)]
    assert kinds.count("crc") == 1 and kinds.count("framing") >= 2
    s = decoder.stats
    assert s.frames == 3 and s.crc_errors == 1 and s.framing_errors >= 2
    assert s.bytes_skipped == len(stream) - 3 * len(good) - decoder.buffered


def test_a_corrupt_frame_never_costs_the_good_frame_inside_its_bytes() -> None:
    """A length field bumped by corruption swallows the next frame's bytes;
    the decoder finds that frame again inside what it skipped."""
    good = kbsp.encode(kbsp.MeterStatus("flow0", 9))
    broken = bytearray(kbsp.encode(kbsp.MeterStatus("flow1", 1)))
    broken[10] = 100  # payload length: now runs over the next frame
    out = kbsp.Decoder().feed(bytes(broken) + good + kbsp.encode(kbsp.Hello()) * 5)
    assert messages(out)[0] == kbsp.MeterStatus("flow0", 9)


# --- properties ---------------------------------------------------------------

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=23)
u8, u16, u32 = st.integers(0, 255), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)

message_strategy = st.one_of(
    st.builds(
        kbsp.Hello,
        st.none() | u16,
        st.none() | u16,
        st.none() | names,
        st.none() | u32,
        st.none() | u32,
    ),
    st.builds(
        kbsp.BoardConfiguration,
        st.none() | names,
        st.none() | u16,
        st.none() | u16,
        st.none() | u16,
    ),
    st.builds(kbsp.MeterStatus, names, u32),
    st.builds(kbsp.TemperatureReading, names, st.integers(-(2**31), 2**31 - 1)),
    st.builds(kbsp.OutputStatus, names, st.booleans()),
    st.builds(kbsp.OnewirePresence, st.integers(0, 2**64 - 1), st.none() | u8),
    st.builds(kbsp.AuthToken, names, st.binary(min_size=1, max_size=16), u8),
    st.builds(kbsp.Ping),
    st.builds(kbsp.SetOutput, st.integers(0, 15), st.booleans()),
    st.builds(kbsp.SetSerialNumber, names),
)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@settings(max_examples=150, deadline=None)
@given(st.lists(message_strategy, min_size=1, max_size=20), st.lists(st.integers(0, 10_000)))
def test_every_message_round_trips_under_any_chunking(
    sent: list[kbsp.KnownMessage], cuts: list[int]
) -> None:
    stream = b"".join(kbsp.encode(m) for m in sent)
    decoder = kbsp.Decoder()
    out: list[kbsp.Event] = []
    for piece in chunks(stream, cuts):
        out += decoder.feed(piece)
    assert out == sent
    assert decoder.stats.frames == len(sent) and decoder.buffered == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(message_strategy, min_size=30, max_size=60),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_corruption_never_invents_a_message_and_spares_untouched_frames(
    sent: list[kbsp.KnownMessage], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    frames = [kbsp.encode(m) for m in sent]
    stream = bytearray(b"".join(frames))
    touched: set[int] = set()
    for position, value in flips:
        position %= len(stream)
        if stream[position] != value:
            stream[position] = value
            touched.add(position)
    decoder = kbsp.Decoder()
    out: list[kbsp.Event] = []
    for piece in chunks(bytes(stream), cuts):
        out += decoder.feed(piece)
    out += decoder.feed(kbsp.encode(kbsp.Ping()) * 10)  # flush anything a bad length holds
    got = messages(out)[:-10]  # the pings after the stream
    assert messages(out)[-10:] == [kbsp.Ping()] * 10
    # Never a message that was not sent, and in order: a subsequence.
    it = iter(sent)
    assert all(any(m == s for s in it) for m in got), "decoded a message that was not sent"
    # Every frame whose own bytes were not touched comes out.
    start = 0
    intact = []
    for message, frame in zip(sent, frames, strict=True):
        if not any(start <= t < start + len(frame) for t in touched):
            intact.append(message)
        start += len(frame)
    remaining = list(got)
    for message in intact:
        assert message in remaining, f"lost untouched frame {message}"
        remaining.remove(message)


def test_long_random_corrupted_stream_statistics() -> None:
    """Seeded, bigger than the property test: counters add up."""
    rng = random.Random(7)
    sent = [kbsp.MeterStatus(f"flow{i % 2}", i) for i in range(2000)]
    stream = bytearray(b"".join(kbsp.encode(m) for m in sent))
    for _ in range(200):
        stream[rng.randrange(len(stream))] = rng.randrange(256)
    decoder = kbsp.Decoder()
    out: list[kbsp.Event] = []
    for i in range(0, len(stream), 61):
        out += decoder.feed(bytes(stream[i : i + 61]))
    got = messages(out)
    assert set(got) <= set(sent)
    assert len(got) >= 2000 - 200  # a flip costs at most the frame it hit
    s = decoder.stats
    good_bytes = sum(len(kbsp.encode(m)) for m in got)
    assert good_bytes + s.bytes_skipped + decoder.buffered == len(stream)
