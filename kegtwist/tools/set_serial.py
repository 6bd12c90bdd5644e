"""kegboard-set-serial SPEC SERIAL: give a board its serial number.

The classic firmware accepts a serial number only while it has none, so a
board keeps the name (``kegboard-`` + last 8 characters) it was given.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from twisted.internet import defer

from kegtwist.boards import naming
from kegtwist.boards.link import BoardLink
from kegtwist.boards.serial_lock import PortInUseError
from kegtwist.protocol import kbsp
from kegtwist.tools.common import DEFAULT_TIMEOUT, FirstBoard, fail, in_use, run


async def main(reactor: Any, argv: list[str], out: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="kegboard-set-serial", description=__doc__)
    parser.add_argument("spec", help="device, glob or tcp:HOST:PORT")
    parser.add_argument("serial", help="the serial number to store on the board")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    if not args.serial.strip() or len(args.serial.encode()) > 30 or "\0" in args.serial:
        return fail(out, "SERIAL must be 1 to 30 bytes with no NUL")
    hellos: list[kbsp.Hello] = []
    answered: defer.Deferred[None] = defer.Deferred()

    def observe(link: BoardLink, event: kbsp.Event) -> None:
        if isinstance(event, kbsp.Hello) and sent:
            hellos.append(event)
            if not answered.called:
                answered.callback(None)

    sent = False
    board = FirstBoard(reactor, args.spec, frame_observer=observe)
    try:
        link = await board.start(reactor, args.timeout)
        assert link.hello is not None
        if link.hello.serial_number:
            return fail(
                out,
                f"The board on {link.device} already has serial number "
                f"{link.hello.serial_number!r} ({link.name}); the firmware accepts one only "
                "while it has none.",
            )
        sent = True
        link.send(kbsp.SetSerialNumber(args.serial))
        link.send(kbsp.Ping())
        await answered.addTimeout(args.timeout, reactor)
        serial = hellos[-1].serial_number
        if serial != args.serial:
            return fail(out, f"The board did not take the serial number (it reports {serial!r})")
        print(f"Serial number {serial} set; the board is now {naming.board_name(serial)}", file=out)
        return 0
    except PortInUseError as e:
        return in_use(out, e)
    except defer.TimeoutError:
        return fail(out, f"No answer from a Kegboard on {args.spec} within {args.timeout:g} s")
    finally:
        await board.stop()


def cli() -> None:
    run(main)
