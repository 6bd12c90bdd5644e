"""kegboard-monitor [SPEC] [--count N]: print every message a board sends."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from twisted.internet import defer

from kegtwist.boards.link import BoardLink
from kegtwist.boards.serial_lock import PortInUseError
from kegtwist.protocol import kbsp
from kegtwist.tools.common import FirstBoard, in_use, run, timestamp


def format_event(now: float, device: str, event: kbsp.Event) -> str:
    if isinstance(event, kbsp.FrameRejected):
        return (
            f"{timestamp(now)} {device} REJECTED ({event.kind}): {event.reason}: {event.data.hex()}"
        )
    return f"{timestamp(now)} {device} {event}"


async def main(reactor: Any, argv: list[str], out: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="kegboard-monitor", description=__doc__)
    parser.add_argument(
        "spec", nargs="?", default="auto", help="device, glob, tcp:HOST:PORT (default auto)"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after N frames (0: run until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    done: defer.Deferred[None] = defer.Deferred()
    seen = 0

    def observe(link: BoardLink, event: kbsp.Event) -> None:
        nonlocal seen
        print(format_event(reactor.seconds(), link.device, event), file=out, flush=True)
        seen += 1
        if args.count and seen >= args.count and not done.called:
            done.callback(None)

    board = FirstBoard(reactor, args.spec, frame_observer=observe)
    try:
        board.open()
    except PortInUseError as e:
        return in_use(out, e)
    print(f"Monitoring {args.spec}; Ctrl-C to stop", file=out, flush=True)
    try:
        await done
    finally:
        await board.stop()
    return 0


def cli() -> None:
    run(main)


__all__ = ["main"]
