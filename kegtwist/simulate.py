"""``--simulate N``: virtual Kegboards inside the daemon, for demos and tests.

Each is a :class:`~kegtwist.sim.PtyKegboard` on a real pseudo-terminal, so
the daemon opens it with the same serial, codec and board code as a USB
board.  The first is named ``kegboard`` (the name a fresh Kegbot Server's
first controller has), the others ``kegboard-sim0000N``.  Their meters get
taps (``ml_per_tick`` of the server's default meter, ``relayN`` valves) unless
the config file or the server says otherwise, and ``--simulate-pours``
pours a demo glass on each board's ``flow0`` every so often, so a newcomer
sees a pour go all the way through.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import naming
from .core import TapConfig
from .sim import DEFAULT_ML_PER_TICK, Pourer, PtyKegboard, SimulatedKegboard

DEMO_POUR_ML = 330.0
DEMO_POUR_SECONDS = 4.0
FIRST_POUR_DELAY = 3.0


def serial_number(index: int) -> str:
    return "" if index == 0 else f"SIM{index:05d}"


def simulated_taps(count: int) -> list[TapConfig]:
    taps = []
    for i in range(count):
        board = naming.board_name(serial_number(i))
        for port in (0, 1):
            meter = naming.full_name(board, f"flow{port}")
            taps.append(
                TapConfig(
                    meter,
                    DEFAULT_ML_PER_TICK,
                    naming.full_name(board, f"relay{port}"),
                    f"Simulated {meter}",
                )
            )
    return taps


class SimulatedBoards(Service):
    """Owns the virtual boards; closes them when the daemon stops."""

    log: ClassVar[Logger] = Logger()
    name = "simulated-kegboards"

    def __init__(
        self, reactor: Any, count: int, pour_every: float, clock: IReactorTime | None = None
    ) -> None:
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.boards = [
            PtyKegboard(reactor, SimulatedKegboard(serial_number=serial_number(i)), self.clock)
            for i in range(count)
        ]
        self.pourers = [Pourer(board, DEFAULT_ML_PER_TICK) for board in self.boards]
        self.pour_every = pour_every
        self._demo: LoopingCall | None = None
        self._first: Any = None

    @property
    def paths(self) -> list[str]:
        return [board.path for board in self.boards]

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "Simulating {count} Kegboard(s) on {paths}",
            count=len(self.boards),
            paths=", ".join(self.paths),
        )
        if self.pour_every > 0:
            self._first = self.clock.callLater(FIRST_POUR_DELAY, self._start_demo)

    def _start_demo(self) -> None:
        self._first = None
        self._demo = LoopingCall(self.pour_demo_glasses)
        self._demo.clock = self.clock
        self._demo.start(self.pour_every, now=True)

    def pour_demo_glasses(self) -> None:
        for board, pourer in zip(self.boards, self.pourers, strict=True):
            if not board.closed:
                self.log.info(
                    "Simulator: pouring {ml:.0f} mL on {device} flow0",
                    ml=DEMO_POUR_ML,
                    device=board.path,
                )
                pourer.pour("flow0", DEMO_POUR_ML, DEMO_POUR_SECONDS)

    def stopService(self) -> None:
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._demo is not None and self._demo.running:
            self._demo.stop()
        for pourer in self.pourers:
            for call in pourer.active.values():
                if call.running:
                    call.stop()
        for board in self.boards:
            board.close()
