"""``--simulate N``: virtual Kegboards inside the daemon, for demos and tests.

Each is a :class:`~kegtwist.boards.simulator.PtyKegboard` on a real pseudo-terminal, so
the daemon opens it with the same serial, codec and board code as a USB
board.  A simulated run is kept apart from the owner's real ones:

* Names: ``simulated-kegboard``, ``simulated-kegboard-2``, ... (meters
  ``simulated-kegboard.flow0`` ...; see :func:`kegtwist.boards.naming.simulated_board_name`).
  Real boards are ``kegboard`` or ``kegboard-`` + a serial's last 8
  characters, so nothing simulated ever lands on a real controller's taps.
  The boards report a serial number with a prefix drawn at random by this
  process (:func:`kegtwist.boards.naming.simulated_serial_number`), which only this
  process names so.
* State: ``<state_dir>/simulate/`` (outbox, checkpoint, lock), never the
  real state dir's files (:mod:`kegtwist.daemon.options` moves it).
* Server: nothing is posted or registered unless ``--api-url`` is given
  explicitly (on the command line, in the config file or as
  ``$KEGBOT_API_URL``); the default is ``none``.
* Taps: :func:`simulated_taps` (``ml_per_tick`` of the server's default
  meter, ``relayN`` valves) join the config file's ``[[taps]]`` for meters
  the file does not name, so they are file taps to the core and tap sync.

Each board boots when the daemon starts (its hello reports an uptime of
seconds), and ``--simulate-pours`` pours a demo glass on each board's
``flow0`` every so often, so a newcomer sees a pour go all the way through.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kegtwist.boards import naming
from kegtwist.boards.simulator import DEFAULT_ML_PER_TICK, Pourer, PtyKegboard, SimulatedKegboard
from kegtwist.core import TapConfig

DEMO_POUR_ML = 330.0
DEMO_POUR_SECONDS = 4.0
FIRST_POUR_DELAY = 3.0
SIMULATE_STATE_SUBDIR = "simulate"
"""A simulated run's state dir, inside the configured one."""


def serial_number(index: int) -> str:
    """What simulated board ``index`` reports; named :func:`board_name` here."""
    return naming.simulated_serial_number(index)


def board_name(index: int) -> str:
    return naming.simulated_board_name(index)


def simulated_taps(count: int) -> list[TapConfig]:
    """The taps of ``count`` simulated boards: ``flow0``/``flow1`` with
    ``relay0``/``relay1``, at the server's default calibration."""
    taps = []
    for i in range(count):
        board = board_name(i)
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
        # Each board boots now: its hello reports seconds of uptime, so the
        # core knows its counters started at 0.
        self.boards = [
            PtyKegboard(
                reactor,
                SimulatedKegboard(serial_number=serial_number(i), booted_at=self.clock.seconds()),
                self.clock,
            )
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
