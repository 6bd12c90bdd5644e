"""KBSP decoder throughput on a mixed stream, against a byte-at-a-time
reader in the manner of the classic host, in the same run.

The stream: 200,000 frames, 90 % meter_status, 5 % temperature, 3 %
auth_token, 2 % hello, fed in serial-port-sized chunks (64 to 4096 bytes).
The classic-style reader appends one byte at a time, looks for the prefix
and the trailer after each byte, then parses the frame (and, like the
classic host, checks no CRC).  Medians of several runs on one core.

Run: python bench/kbsp_decode.py [--frames N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import struct
import time
from collections.abc import Callable

from kegtwist.protocol import kbsp


def mixed_stream(count: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    readings = [0] * 4
    frames = []
    for _ in range(count):
        r = rng.random()
        if r < 0.90:
            meter = rng.randrange(4)
            readings[meter] += rng.randrange(1, 40)
            frames.append(kbsp.encode(kbsp.MeterStatus(f"flow{meter}", readings[meter])))
        elif r < 0.95:
            frames.append(
                kbsp.encode(
                    kbsp.TemperatureReading(
                        "thermo-f800080012345610", rng.randrange(-5_000_000, 30_000_000)
                    )
                )
            )
        elif r < 0.98:
            token = rng.randbytes(5)
            frames.append(kbsp.encode(kbsp.AuthToken("onewire", token, rng.randrange(2))))
        else:
            frames.append(
                kbsp.encode(kbsp.Hello(18, 1, "KB-0123-4567-89AB", rng.randrange(2**31), 0))
            )
    return b"".join(frames)


def chunked(data: bytes, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice((64, 128, 512, 1024, 4096))
        out.append(data[pos : pos + size])
        pos += size
    return out


def decode_all(chunks: list[bytes]) -> int:
    decoder = kbsp.Decoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    return count


class ClassicReader:
    """Byte at a time, as the classic kegbot host's reader did: append the
    byte, resynchronise on the prefix, end the frame at ``\\r\\n`` after the
    header, parse the TLV payload; no CRC check."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed_byte(self, byte: bytes) -> dict[int, bytes] | None:
        buf = self.buf
        buf += byte
        if len(buf) <= 8:
            if not kbsp.PREFIX.startswith(bytes(buf)):
                del buf[:]
            return None
        if len(buf) < 12 or not buf.endswith(b"\r\n"):
            if len(buf) > 128:
                del buf[:]
            return None
        message_id, length = struct.unpack_from("<HH", buf, 8)
        if len(buf) < 12 + length + 4:
            return None  # a "\r\n" inside the payload: keep reading
        payload = bytes(buf[12 : 12 + length])
        del buf[:]
        fields: dict[int, bytes] = {}
        pos = 0
        while pos + 2 <= len(payload):
            tag, size = payload[pos], payload[pos + 1]
            fields[tag] = payload[pos + 2 : pos + 2 + size]
            pos += 2 + size
        fields[-1] = message_id.to_bytes(2, "little")
        return fields


def classic_all(chunks: list[bytes]) -> int:
    reader = ClassicReader()
    count = 0
    for chunk in chunks:
        for i in range(len(chunk)):
            if reader.feed_byte(chunk[i : i + 1]) is not None:
                count += 1
    return count


def timed(fn: Callable[[list[bytes]], int], chunks: list[bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn(chunks)
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stream = mixed_stream(args.frames)
    chunks = chunked(stream)
    print(
        f"kbsp_decode: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{args.frames:,} frames, {len(stream):,} bytes in {len(chunks):,} chunks"
    )
    ours, theirs, ratios = [], [], []
    for _ in range(args.runs):
        seconds, count = timed(decode_all, chunks)
        assert count == args.frames, count
        ours.append(count / seconds)
        c_seconds, c_count = timed(classic_all, chunks)
        assert c_count == args.frames, c_count
        theirs.append(c_count / c_seconds)
        ratios.append(ours[-1] / theirs[-1])
    print(
        f"Decoder:             median {statistics.median(ours):>12,.0f} msg/s  (runs: {', '.join(f'{r:,.0f}' for r in ours)})"
    )
    print(
        f"classic byte reader: median {statistics.median(theirs):>12,.0f} msg/s  (runs: {', '.join(f'{r:,.0f}' for r in theirs)})"
    )
    print(f"ratio:               median {statistics.median(ratios):>12.1f} x")
    print(
        f"per message: {1e6 / statistics.median(ours):.2f} us; boards at 400 frames/s one core keeps up with: "
        f"{statistics.median(ours) / 400:,.0f}"
    )
    met = statistics.median(ours) >= 400_000 and statistics.median(ratios) >= 5
    print(f"targets (>= 400,000 msg/s and >= 5x the byte reader): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
