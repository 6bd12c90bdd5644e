"""kegboard-info [SPEC]: ping a board and print its hello."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from twisted.internet import defer

from kegtwist.boards import naming
from kegtwist.boards.serial_lock import PortInUseError
from kegtwist.protocol import kbsp
from kegtwist.tools.common import DEFAULT_TIMEOUT, FirstBoard, fail, in_use, run


def describe(device: str, hello: kbsp.Hello) -> str:
    uptime_s = (hello.uptime_days or 0) * 86400 + (hello.uptime_millis or 0) / 1000
    lines = [
        f"device:           {device}",
        f"name:             {naming.board_name(hello.serial_number)}",
        f"serial number:    {hello.serial_number or '(none)'}",
        f"firmware version: {hello.firmware_version}",
    ]
    if hello.protocol_version is not None:
        lines.append(f"protocol version: {hello.protocol_version}")
    if hello.uptime_millis is not None or hello.uptime_days is not None:
        lines.append(f"uptime:           {uptime_s:.1f} s")
    return "\n".join(lines)


async def main(reactor: Any, argv: list[str], out: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="kegboard-info", description=__doc__)
    parser.add_argument(
        "spec", nargs="?", default="auto", help="device, glob, tcp:HOST:PORT (default auto)"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    board = FirstBoard(reactor, args.spec)
    try:
        link = await board.start(reactor, args.timeout)
    except PortInUseError as e:
        return in_use(out, e)
    except defer.TimeoutError:
        await board.stop()
        return fail(out, f"No Kegboard answered on {args.spec} within {args.timeout:g} s")
    assert link.hello is not None
    print(describe(link.device, link.hello), file=out)
    await board.stop()
    return 0


def cli() -> None:
    run(main)
