"""A simulated Kegboard: the board's side of KBSP, for tests and demos.

:class:`SimulatedKegboard` is pure (time is an argument): it answers pings,
applies set_output with the classic 10 s relay watchdog, accepts a serial
number once, and makes meter, token and temperature frames.
:class:`PtyKegboard` puts it behind a real pseudo-terminal, so the host side
opens it exactly as it opens a USB board.
"""

from __future__ import annotations

import errno
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from kegtwist.protocol import kbsp

RELAY_WATCHDOG_SECONDS = 10.0
RELAY_COUNT = 6
DEFAULT_ML_PER_TICK = 1 / 2.724  # the Kegbot Server's default meter
STEP_SECONDS = 0.1  # boards report meters at most every 100 ms
HELLO_HEARTBEAT_SECONDS = 10.0


@dataclass
class SimulatedKegboard:
    """The state of one classic Kegboard; bytes in, bytes out."""

    serial_number: str = ""
    firmware_version: int = 18
    meters: dict[str, int] = field(default_factory=lambda: {"flow0": 0, "flow1": 0})
    relays: list[bool] = field(default_factory=lambda: [False] * RELAY_COUNT)
    relay_deadlines: list[float | None] = field(default_factory=lambda: [None] * RELAY_COUNT)
    booted_at: float = 0.0
    """When it powered up, on the clock ``now`` comes from: hellos report
    ``now - booted_at`` as uptime.  A board plugged in now (``--simulate``,
    ``kegboard-sim``) passes the clock's ``seconds()``; the default, 0, on a
    wall clock is a board that has been up for decades."""
    decoder: kbsp.Decoder = field(default_factory=kbsp.Decoder)
    received: list[kbsp.Message] = field(default_factory=list)

    def hello(self, now: float) -> bytes:
        uptime = max(0, int((now - self.booted_at) * 1000))
        return kbsp.encode(
            kbsp.Hello(
                firmware_version=self.firmware_version,
                serial_number=self.serial_number,
                uptime_millis=uptime % 86_400_000,
                uptime_days=uptime // 86_400_000,
            )
        )

    def receive(self, data: bytes, now: float) -> bytes:
        """Host bytes in; the board's answers out."""
        out = [self.expire_relays(now)]
        for event in self.decoder.feed(data):
            if isinstance(event, kbsp.FrameRejected):
                continue
            self.received.append(event)
            if isinstance(event, kbsp.Ping):
                out.append(self.hello(now))
            elif isinstance(event, kbsp.SetOutput):
                out.append(self.set_output(event.output_id, event.output_mode, now))
            elif isinstance(event, kbsp.SetSerialNumber) and not self.serial_number:
                self.serial_number = event.serial_number
        return b"".join(out)

    def set_output(self, output_id: int, on: bool, now: float) -> bytes:
        if not 0 <= output_id < len(self.relays):
            return b""
        self.relay_deadlines[output_id] = now + RELAY_WATCHDOG_SECONDS if on else None
        return self._relay_state(output_id, on)

    def expire_relays(self, now: float) -> bytes:
        """The firmware's watchdog: a relay not refreshed for 10 s drops."""
        out = []
        for i, deadline in enumerate(self.relay_deadlines):
            if deadline is not None and now >= deadline:
                self.relay_deadlines[i] = None
                out.append(self._relay_state(i, False))
        return b"".join(out)

    def next_deadline(self) -> float | None:
        pending = [d for d in self.relay_deadlines if d is not None]
        return min(pending) if pending else None

    def _relay_state(self, output_id: int, on: bool) -> bytes:
        changed = self.relays[output_id] != on
        self.relays[output_id] = on
        if not changed:
            return b""
        return kbsp.encode(kbsp.OutputStatus(f"relay{output_id}", on))

    def pour(self, meter: str, ticks: int) -> bytes:
        """Add ticks to a meter; the meter_status frame the board sends."""
        reading = (self.meters.get(meter, 0) + ticks) % 2**32
        self.meters[meter] = reading
        return kbsp.encode(kbsp.MeterStatus(meter, reading))

    def reset(self, now: float) -> bytes:
        """Power-cycle: counters restart at 0, relays drop, a hello is sent."""
        self.meters = {name: 0 for name in self.meters}
        self.relays = [False] * len(self.relays)
        self.relay_deadlines = [None] * len(self.relays)
        self.booted_at = now
        return self.hello(now)

    def token(self, device: str, token: bytes, attached: bool) -> bytes:
        return kbsp.encode(kbsp.AuthToken(device, token, 1 if attached else 0))

    def temperature(self, sensor: str, celsius: float) -> bytes:
        return kbsp.encode(kbsp.TemperatureReading(sensor, round(celsius * 1_000_000)))


class PtyKegboard:
    """A :class:`SimulatedKegboard` on the master side of a pseudo-terminal.

    ``path`` is the slave device a host opens.  The slave stays open here
    too, so the master never sees EIO while the host reconnects.
    """

    def __init__(
        self,
        reactor: Any,
        board: SimulatedKegboard | None = None,
        clock: IReactorTime | None = None,
        *,
        heartbeat_seconds: float | None = HELLO_HEARTBEAT_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.board = board if board is not None else SimulatedKegboard()
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.dropped_bytes = 0
        self.closed = False
        self._waiters: list[
            tuple[Callable[[kbsp.Message], bool], defer.Deferred[kbsp.Message]]
        ] = []
        self._expiry: IDelayedCall | None = None
        self.on_receive: Callable[[kbsp.Message], None] | None = None
        self.on_relays: Callable[[list[bool]], None] | None = None
        self._relays_seen = list(self.board.relays)
        reactor.addReader(self)
        self._heartbeat: LoopingCall | None = None
        if heartbeat_seconds:
            # The firmware says hello every 10 s whether asked or not.
            self._heartbeat = LoopingCall(self.send_hello)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(heartbeat_seconds, now=False)

    # IReadDescriptor

    def fileno(self) -> int:
        return self.master

    def logPrefix(self) -> str:
        return "PtyKegboard"

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def doRead(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        before = len(self.board.received)
        self.write(self.board.receive(data, self.clock.seconds()))
        self._schedule_expiry()
        self._relays_changed()
        for message in self.board.received[before:]:
            if self.on_receive is not None:
                self.on_receive(message)
            for waiter in list(self._waiters):
                predicate, d = waiter
                if predicate(message):
                    self._waiters.remove(waiter)
                    d.callback(message)

    # board side

    def write(self, data: bytes) -> None:
        if not data or self.closed:
            return
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        self.dropped_bytes += len(data) - written

    def send_hello(self) -> None:
        self.write(self.board.hello(self.clock.seconds()))

    def pour(self, meter: str, ticks: int) -> None:
        self.write(self.board.pour(meter, ticks))

    def wait_for(self, predicate: Callable[[kbsp.Message], bool]) -> defer.Deferred[kbsp.Message]:
        """Fires with the first command received from now on that matches."""
        d: defer.Deferred[kbsp.Message] = defer.Deferred()
        self._waiters.append((predicate, d))
        return d

    def _schedule_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        deadline = self.board.next_deadline()
        if deadline is not None and not self.closed:
            delay = max(0.0, deadline - self.clock.seconds())
            self._expiry = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self.write(self.board.expire_relays(self.clock.seconds()))
        self._schedule_expiry()
        self._relays_changed()

    def _relays_changed(self) -> None:
        if self.board.relays != self._relays_seen:
            self._relays_seen = list(self.board.relays)
            if self.on_relays is not None:
                self.on_relays(self._relays_seen)

    def close(self) -> None:
        """Unplug: the host's next read fails and it sees the board gone."""
        if self.closed:
            return
        self.closed = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self.reactor.removeReader(self)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class Pourer:
    """Spreads a pour's ticks over time, like a real meter."""

    def __init__(self, pty: PtyKegboard, ml_per_tick: float) -> None:
        self.pty = pty
        self.ml_per_tick = ml_per_tick
        self.active: dict[str, LoopingCall] = {}

    def pour(self, meter: str, ml: float, seconds: float) -> int:
        ticks = max(1, round(ml / self.ml_per_tick))
        steps = max(1, round(seconds / STEP_SECONDS))
        per_step = [ticks // steps + (1 if i < ticks % steps else 0) for i in range(steps)]
        if meter in self.active and self.active[meter].running:
            self.active[meter].stop()

        def step() -> None:
            if not per_step:
                call.stop()
                return
            n = per_step.pop(0)
            if n:
                self.pty.pour(meter, n)

        call = LoopingCall(step)
        call.clock = self.pty.clock
        self.active[meter] = call
        call.start(STEP_SECONDS, now=True)
        return ticks
