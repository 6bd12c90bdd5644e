"""The Twisted side of the core: feeds it inputs with the time, runs effects.

The core is pure; this service owns the clock.  After every input it
schedules one DelayedCall for exactly the core's next deadline (no polling),
and it executes effects: valve commands go to a relay driver (the board
service, or Kegnet in the ``core`` role), token lookups to a resolver (the
Kegbot Server), and everything else to listeners (logs, the outbox, Kegnet).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core import (
    Core,
    CoreInput,
    Effect,
    LookupToken,
    Notice,
    PourUpdate,
    RecordDrink,
    SensorState,
    SetRelay,
    TokenLookupResult,
)

RelayDriver = Callable[[str, bool], bool]
TokenResolver = Callable[[str, str], "defer.Deferred[TokenLookupResult]"]
EffectListener = Callable[[Effect], None]
CHECKPOINT_DELAY = 0.5


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class CoreService(Service):
    """Runs a :class:`~kegtwist.core.Core` on a reactor clock."""

    log: ClassVar[Logger] = Logger()
    name = "core"

    def __init__(
        self,
        core: Core,
        clock: IReactorTime,
        *,
        relay_driver: RelayDriver | None = None,
        token_resolver: TokenResolver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        checkpoint_path: Path | None = None,
        already_recorded: Callable[[int], bool] = lambda flow_id: False,
    ) -> None:
        self.core = core
        self.checkpoint_path = checkpoint_path
        self.already_recorded = already_recorded
        self._checkpoint_call: IDelayedCall | None = None
        self.clock = clock
        self.relay_driver = relay_driver
        self.token_resolver = token_resolver
        self.monotonic = monotonic
        self.wall = wall
        self.listeners: list[EffectListener] = []
        self._call: IDelayedCall | None = None
        self._scheduled: float | None = None
        self._stopped = False
        self._busy = False
        self._queue: list[CoreInput] = []
        self._last_checkpoint: bytes | None = None
        self.closed_at_shutdown: set[str] = set()
        self._unjournaled: list[RecordDrink] = []
        self._before_start: list[CoreInput] | None = []

    # inputs

    def feed(self, item: CoreInput) -> None:
        """One input, now.  Safe to call from any callback, effects included:
        an input that arrives while effects run waits for them to finish."""
        if self._stopped:
            return
        if self._before_start is not None:
            # Inputs before the checkpoint is restored (cached taps) wait for it.
            self._before_start.append(item)
            return
        if self._busy:
            self._queue.append(item)
            return
        self._run(lambda: self.core.handle(item, self.monotonic(), self.wall()))

    def _wake(self) -> None:
        self._call = None
        self._scheduled = None
        if not self._stopped:
            self._run(lambda: self.core.advance(self.monotonic(), self.wall()))

    def _run(self, step: Callable[[], list[Effect]]) -> None:
        self._busy = True
        try:
            self._commit(step())
            while self._queue:
                item = self._queue.pop(0)
                self._commit(self.core.handle(item, self.monotonic(), self.wall()))
        finally:
            self._busy = False
        self._reschedule()
        self._checkpoint_soon()

    def _commit(self, effects: list[Effect]) -> None:
        """Run effects; a pour that ended is made durable first.

        The checkpoint holds meter baselines.  If it lagged behind a drink
        the outbox already holds, a restart would count that drink's ticks
        again (measured: a 250-tick pour recorded twice after kill -9).
        So when drinks come out, the checkpoint is written at once with the
        new baselines *and the drinks themselves*, then the drinks go to the
        outbox; a crash between the two re-adds them on restart, unless the
        outbox already knows their flow."""
        drinks = [e for e in effects if isinstance(e, RecordDrink)]
        if drinks and self.checkpoint_path is not None:
            self._unjournaled = drinks
            self.write_checkpoint()
        self._execute(effects)
        self._unjournaled = []

    # crash safety

    def _checkpoint_soon(self) -> None:
        """Keep the checkpoint at most CHECKPOINT_DELAY old while things change."""
        if self.checkpoint_path is None or self._stopped:
            return
        if self._checkpoint_call is None or not self._checkpoint_call.active():
            self._checkpoint_call = self.clock.callLater(CHECKPOINT_DELAY, self.write_checkpoint)

    def write_checkpoint(self) -> None:
        """Baselines and open pours, written atomically (tmp, fsync, rename)."""
        if self._checkpoint_call is not None and self._checkpoint_call.active():
            self._checkpoint_call.cancel()
        self._checkpoint_call = None
        if self.checkpoint_path is None:
            return
        state = self.core.checkpoint()
        state["drinks"] = [asdict(d) for d in self._unjournaled]
        data = json.dumps(state, separators=(",", ":")).encode()
        if data == self._last_checkpoint:
            return
        tmp = self.checkpoint_path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint_path)
        except OSError as e:
            self.log.error(
                "Cannot write checkpoint {path}: {error}", path=str(self.checkpoint_path), error=e
            )
            return
        self._last_checkpoint = data

    def restore_checkpoint(self) -> None:
        """Resume pours and baselines a previous process left behind."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return
        try:
            state = json.loads(path.read_bytes())
            state["pours"] = [
                p for p in state.get("pours", []) if not self.already_recorded(int(p["flow_id"]))
            ]
            effects = self.core.restore(state, self.monotonic(), self.wall())
            lost = [RecordDrink(**d) for d in state.get("drinks", [])]
            for drink in lost:
                if not self.already_recorded(drink.flow_id):
                    self.log.warn(
                        "Drink for flow {flow_id} ended just before a crash; recording it now",
                        flow_id=drink.flow_id,
                    )
                    effects.append(drink)
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.log.error(
                "Checkpoint {path} unreadable ({error}); starting afresh", path=str(path), error=e
            )
            return
        self._run(lambda: effects)

    def _reschedule(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._scheduled:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._scheduled = deadline
        if deadline is not None:
            self._call = self.clock.callLater(max(0.0, deadline - self.monotonic()), self._wake)

    # effects

    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SetRelay):
                self._set_relay(effect)
            elif isinstance(effect, LookupToken):
                self._lookup(effect)
            elif isinstance(effect, Notice):
                getattr(self.log, effect.level)(effect.message, **effect.fields)
            elif isinstance(effect, PourUpdate):
                self._log_pour(effect)
            elif isinstance(effect, RecordDrink):
                self.log.info(
                    "Drink: flow {flow_id} on {meter}: {ticks} ticks, {volume_ml:.1f} mL, "
                    "{user}, {start} to {end} ({reason})",
                    flow_id=effect.flow_id,
                    meter=effect.meter_name,
                    ticks=effect.ticks,
                    volume_ml=effect.volume_ml,
                    user=effect.username or "guest",
                    start=_iso(effect.start_wall),
                    end=_iso(effect.end_wall),
                    reason=effect.reason,
                )
            elif isinstance(effect, SensorState):
                self.log.warn(
                    "Temperature sensor {sensor} {state}",
                    sensor=effect.sensor_name,
                    state="lost: silent for 2 minutes" if effect.lost else "is back",
                )
            for listener in self.listeners:
                try:
                    listener(effect)
                except Exception:
                    self.log.failure("Effect listener failed on {effect}", effect=effect)

    def _set_relay(self, effect: SetRelay) -> None:
        level = self.log.debug if effect.reason == "refresh" else self.log.info
        sent = self.relay_driver(effect.relay_name, effect.on) if self.relay_driver else False
        level(
            "Valve {relay} {state} ({reason}){missing}",
            relay=effect.relay_name,
            state="open" if effect.on else "closed",
            reason=effect.reason,
            missing="" if sent else ": no board to send it to",
        )

    def _lookup(self, effect: LookupToken) -> None:
        device, value = effect.auth_device, effect.token_value
        if self.token_resolver is None:
            self.feed(TokenLookupResult(device, value, error="no Kegbot Server configured"))
            return
        try:
            d = self.token_resolver(device, value)
        except Exception as e:  # a resolver bug must not stop the core
            d = defer.fail(e)

        def failed(failure: Failure) -> TokenLookupResult:
            return TokenLookupResult(
                device, value, error=failure.getErrorMessage() or "lookup failed"
            )

        d.addErrback(failed)
        d.addCallback(self.feed)

    def _log_pour(self, effect: PourUpdate) -> None:
        pour = effect.pour
        if effect.state == "completed":
            self.log.info(
                "Pour {flow_id} on {meter} ended ({reason}): {ticks} ticks, {volume_ml:.1f} mL{extra}",
                flow_id=pour.flow_id,
                meter=pour.meter_name,
                reason=effect.reason,
                ticks=pour.ticks,
                volume_ml=pour.volume_ml,
                extra=""
                if effect.recorded
                else ", held until its meter has a tap"
                if effect.held
                else ", not recorded (too small)",
            )
        elif pour.ticks == 0 or pour.duration_seconds == 0:
            self.log.info(
                "Pour {flow_id} on {meter} started ({user})",
                flow_id=pour.flow_id,
                meter=pour.meter_name,
                user=pour.username or "anonymous",
            )
        else:
            self.log.debug("Pour {flow_id}: {ticks} ticks", flow_id=pour.flow_id, ticks=pour.ticks)

    # lifecycle

    def startService(self) -> None:
        super().startService()
        early, self._before_start = self._before_start or [], None
        self.restore_checkpoint()
        for item in early:
            self.feed(item)

    def stopService(self) -> defer.Deferred[None] | None:
        """End pours (recorded) and close every valve the core opened."""
        super().stopService()
        if self._stopped:
            return None
        effects = self.core.shutdown(self.monotonic(), self.wall())
        self.closed_at_shutdown = {
            e.relay_name for e in effects if isinstance(e, SetRelay) and not e.on
        }
        self._commit(effects)
        self._stopped = True
        self.write_checkpoint()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return None

    def status(self) -> dict[str, Any]:
        return {"pours": self.core.pour_snapshots(), "stats": self.core.stats}
