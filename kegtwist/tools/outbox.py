"""kegbot-outbox: see what waits for the Kegbot Server, and decide about
dead letters (drinks the server refused for good).

    kegbot-outbox [--state-dir DIR] list        pending drinks and temperatures
    kegbot-outbox [--state-dir DIR] dead        dead letters with the server's reason
    kegbot-outbox [--state-dir DIR] retry N     queue dead letter N again
    kegbot-outbox [--state-dir DIR] discard N   give dead letter N up for good
    kegbot-outbox [--state-dir DIR] quarantine  journal lines set aside as unreadable

It works on the outbox journal of a stopped daemon: a running one holds the
state directory's lock, and two writers would corrupt the journal, so the
tool refuses (use the daemon's manhole: dead_letters(), retry(n),
discard(n), see kegtwist/inspect.py; or stop the daemon).  Every decision
is written to the journal, so the daemon replays it when it starts.
``list``, ``dead`` and ``quarantine`` only read: they write nothing, and
report the unreadable journal lines the daemon would set aside.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

from kegtwist.daemon.option_table import default_state_dir
from kegtwist.delivery.outbox import (
    QUARANTINE,
    DrinkItem,
    Outbox,
    StateDirBusy,
    printable,
    read_quarantine,
)


def _when(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _drink(item: DrinkItem) -> str:
    return (
        f"{item.meter_name} {item.ticks} ticks {item.volume_ml:.0f} mL "
        f"{item.username or 'guest'} at {_when(item.end_wall)} (flow {item.flow_id})"
    )


def main(argv: list[str], out: TextIO, err: TextIO | None = None) -> int:
    """The tool; ``out`` gets the listings, ``err`` (default ``out``) the
    complaints.  Returns the exit status: 0, 1 (nothing to act on), 2
    (a running daemon holds the state directory)."""
    err = err if err is not None else out
    parser = argparse.ArgumentParser(
        prog="kegbot-outbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("KEGBOT_STATE_DIR") or default_state_dir(),
        help="the daemon's --state-dir [default: $KEGBOT_STATE_DIR or %(default)s]",
    )
    parser.add_argument("command", choices=("list", "dead", "retry", "discard", "quarantine"))
    parser.add_argument("number", nargs="?", type=int, help="dead letter number (retry, discard)")
    args = parser.parse_args(argv)
    if args.command in ("retry", "discard") and args.number is None:
        parser.error(f"{args.command} needs the dead letter's number (see: kegbot-outbox dead)")
    if not os.path.isdir(args.state_dir):
        print(f"kegbot-outbox: no state directory {args.state_dir}", file=err)
        return 1
    if args.command == "quarantine":
        return _quarantine(args.state_dir, out)
    outbox = Outbox(args.state_dir)
    try:
        outbox.open(read_only=args.command in ("list", "dead"))
    except StateDirBusy:
        print(
            f"kegbot-outbox: another kegbot is using {args.state_dir} (it holds the lock). "
            "While it runs, use its manhole: dead_letters(), retry(n), discard(n); "
            "or stop the daemon and run this again.",
            file=err,
        )
        return 2
    try:
        for line in outbox.unreadable if outbox.read_only else []:
            print(
                f"Journal line {line.number} is unreadable ({line.reason}); the daemon sets it "
                f"aside in {QUARANTINE} when it starts: {printable(line.text)}",
                file=err,
            )
        if args.command == "list":
            print(f"{len(outbox.pending)} item(s) waiting for the Kegbot Server:", file=out)
            for seq, item in outbox.pending.items():
                if isinstance(item, DrinkItem):
                    flag = " (sent once, outcome unknown)" if item.uncertain else ""
                    print(f"  {seq}: drink {_drink(item)}{flag}", file=out)
                else:
                    print(
                        f"  {seq}: temperature {item.sensor_name} {item.celsius:.1f} C at {_when(item.wall)}",
                        file=out,
                    )
            print(f"{len(outbox.dead)} dead letter(s): kegbot-outbox dead", file=out)
        elif args.command == "dead":
            print(f"{len(outbox.dead)} dead letter(s):", file=out)
            for seq, letter in sorted(outbox.dead.items()):
                what = "note" if seq < 0 else "drink"
                print(f"  {seq}: {what} {_drink(letter.item)}", file=out)
                print(f"      refused ({letter.status}): {letter.reason}", file=out)
        elif args.command == "retry":
            if not outbox.retry_dead(args.number):
                why = (
                    "it is a note about a drink already re-posted as a guest pour; "
                    "discard it when seen"
                    if args.number in outbox.dead
                    else "see: kegbot-outbox dead"
                )
                print(f"kegbot-outbox: no dead drink {args.number} to retry ({why})", file=err)
                return 1
            print(
                f"Dead letter {args.number} queued again; the daemon sends it when it runs",
                file=out,
            )
        else:
            if not outbox.discard_dead(args.number):
                print(
                    f"kegbot-outbox: no dead letter {args.number} (see: kegbot-outbox dead)",
                    file=err,
                )
                return 1
            print(f"Dead letter {args.number} discarded (recorded in the journal)", file=out)
    finally:
        outbox.close()
    return 0


def _quarantine(state_dir: str, out: TextIO) -> int:
    entries = read_quarantine(state_dir)
    print(
        f"{len(entries)} journal line(s) set aside in {os.path.join(state_dir, QUARANTINE)}:",
        file=out,
    )
    for n, entry in enumerate(entries, 1):
        wall = entry.get("wall")
        when = f" on {_when(wall)}" if isinstance(wall, int | float) else ""
        print(
            f"  {n}: {entry.get('journal', 'journal')} line {entry.get('line')}{when}: "
            f"{entry.get('reason')}",
            file=out,
        )
        print(f"      {printable(str(entry.get('text')))}", file=out)
    return 0


def cli() -> None:
    sys.exit(main(sys.argv[1:], sys.stdout, sys.stderr))
