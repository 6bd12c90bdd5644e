"""kegboard-sim: a simulated Kegboard on a pseudo-terminal, driven by hand.

Prints the device path to open (``twistd -n kegbot --kegboard PATH``), then
reads commands, one per line, from standard input:

  pour TAP ML [SECONDS]   pour ML millilitres on meter flowTAP (default 3 s)
  token DEVICE HEX        put a token on a reader (onewire, core.rfid, ...)
  remove DEVICE HEX       take it off
  temp SENSOR CELSIUS     report a temperature
  valves                  show the relays (the board drops one 10 s after
                          its last command, as the classic firmware does)
  reset                   power-cycle the board (counters restart at 0)
  help, quit

HEX is the token as the Kegbot Server stores it (``deadbeef``); the board
sends its bytes reversed, as real readers do.

Unlike ``--simulate``, this board is another process's: the daemon cannot
tell it from a real one, names it as a real one (``kegboard``, or from
``--serial``) and records its drinks where real ones go.  Try it with its
own ``--state-dir`` and ``--api-url none`` (or a test server).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver

from kegtwist.boards.simulator import DEFAULT_ML_PER_TICK, Pourer, PtyKegboard, SimulatedKegboard


class SimulatorShell(LineReceiver):
    delimiter = b"\n"

    def __init__(self, pty: PtyKegboard, pourer: Pourer) -> None:
        self.pty = pty
        self.pourer = pourer

    def connectionMade(self) -> None:
        self.say(f"{self.pty.path}")
        self.say("Kegboard simulator ready; 'help' lists commands")

    def say(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text.encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        try:
            words = shlex.split(line.decode("utf-8", "replace"))
        except ValueError as e:
            self.say(f"error: {e}")
            return
        if not words:
            return
        command, args = words[0].lower(), words[1:]
        try:
            self.say(self.run(command, args))
        except (ValueError, IndexError) as e:
            self.say(f"error: {e or 'bad arguments'}; 'help' lists commands")

    def run(self, command: str, args: list[str]) -> str:
        board = self.pty.board
        if command == "pour":
            meter = f"flow{int(args[0])}" if args[0].isdigit() else args[0]
            ml = float(args[1])
            seconds = float(args[2]) if len(args) > 2 else 3.0
            ticks = self.pourer.pour(meter, ml, seconds)
            return f"pouring {ml:g} mL ({ticks} ticks) on {meter} over {seconds:g} s"
        if command in ("token", "remove"):
            device, value = args[0], args[1].lower()
            attached = command == "token"
            self.pty.write(board.token(device, bytes.fromhex(value)[::-1], attached))
            return f"token {device}/{value} {'on' if attached else 'off'}"
        if command == "temp":
            self.pty.write(board.temperature(args[0], float(args[1])))
            return f"{args[0]} = {float(args[1]):g} °C"
        if command == "valves":
            return self.valves()
        if command == "reset":
            self.pty.write(board.reset(self.pty.clock.seconds()))
            return "board reset: meters at 0, relays off"
        if command == "help":
            return (__doc__ or "").split("\n\n")[2]
        if command in ("quit", "exit"):
            from twisted.internet import reactor

            reactor.stop()  # type: ignore[attr-defined]
            return "bye"
        raise ValueError(f"unknown command {command!r}")

    def valves(self) -> str:
        return " ".join(
            f"relay{i}={'on' if on else 'off'}" for i, on in enumerate(self.pty.board.relays)
        )

    def connectionLost(self, reason: Any = None) -> None:
        """Standard input closed: keep simulating (run it in the background
        with ``< /dev/null``); stop it with a signal."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kegboard-sim",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Commands: pour TAP ML [SECONDS], token DEVICE HEX, remove DEVICE HEX, temp SENSOR C, valves, reset, quit",
    )
    parser.add_argument(
        "--serial", default="", help="the board's serial number (default none: 'kegboard')"
    )
    parser.add_argument("--ml-per-tick", type=float, default=DEFAULT_ML_PER_TICK)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    now = reactor.seconds()  # type: ignore[attr-defined]
    board = SimulatedKegboard(serial_number=args.serial, booted_at=now)  # boots now
    pty = PtyKegboard(reactor, board)
    shell = SimulatorShell(pty, Pourer(pty, args.ml_per_tick))
    pty.on_relays = lambda relays: shell.say(f"valves: {shell.valves()}")
    stdio.StandardIO(shell)
    reactor.run()  # type: ignore[attr-defined]
    pty.close()
    sys.exit(0)
