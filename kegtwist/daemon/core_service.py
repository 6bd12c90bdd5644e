"""The Twisted side of the core: feeds it inputs with the time, runs effects.

The core is pure; this service owns the clock.  After every input it
schedules one DelayedCall for exactly the core's next deadline (no polling),
and it executes effects: valve commands go to a relay driver (the board
service, or Kegnet in the ``core`` role), token lookups to a resolver (the
Kegbot Server), and everything else to listeners (logs, the outbox, Kegnet).

A drink is logged when its pour ends and is never lost or counted twice,
whatever the disk does.  It is *pending* in this service's memory until
the listeners (the outbox) have it, and it is handed to them only once a
checkpoint holding it is durable: the checkpoint's baselines already
include the drink's ticks, so a drink journaled against an older checkpoint
(which a restart would count again) cannot happen.  While the checkpoint
cannot be written (disk full, EIO, read-only) the drink waits; while the
journal append fails it waits too, still listed in the checkpoint's
``drinks`` (a restart records it from there, unless the outbox already
knows its flow).  Both are retried with backoff while pours go on.  A stop
with drinks still pending says so at error level (``unwritten``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kegtwist.backoff import Backoff
from kegtwist.core import (
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
from kegtwist.daemon.pour_log import iso, log_drink, log_pour
from kegtwist.durable import write_atomic

RelayDriver = Callable[[str, bool], bool]
TokenResolver = Callable[[str, str], "defer.Deferred[TokenLookupResult]"]
EffectListener = Callable[[Effect], None]
CHECKPOINT_DELAY = 0.5


def disk_retry_backoff() -> Backoff:
    """Retries of a failed checkpoint or journal write: 0.5 s doubling to 30 s."""
    return Backoff(initial=0.5, factor=2.0, maximum=30.0)


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
        write: Callable[[int, bytes], int] = os.write,
        fsync: Callable[[int], None] = os.fsync,
        retry_backoff: Backoff | None = None,
        listeners: list[EffectListener] | None = None,
    ) -> None:
        self.core = core
        self.os_write = write  # the seams a disk fails through (tests)
        self.os_fsync = fsync
        self._backoff = retry_backoff if retry_backoff is not None else disk_retry_backoff()
        self._retry_call: IDelayedCall | None = None
        self._pending: list[RecordDrink] = []  # logged, not yet handed to the listeners
        self._durable_flows: set[int] = set()  # pending drinks a durable checkpoint holds
        self._checkpoint_error: str | None = None
        self._handover_error: str | None = None
        self.unwritten: list[RecordDrink] = []  # pending at stop (see stopService)
        self.checkpoint_path = checkpoint_path
        self.already_recorded = already_recorded
        self._checkpoint_call: IDelayedCall | None = None
        self.clock = clock
        self.relay_driver = relay_driver
        self.token_resolver = token_resolver
        self.monotonic = monotonic
        self.wall = wall
        self.listeners: list[EffectListener] = list(listeners or [])
        self._call: IDelayedCall | None = None
        self._scheduled: float | None = None
        self._stopped = False
        self._busy = False
        self._queue: list[CoreInput] = []
        self._last_checkpoint: bytes | None = None
        self.closed_at_shutdown: set[str] = set()
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
        again (measured: a 250-tick pour recorded twice after kill -9; and a
        checkpoint that could not be rewritten, ENOSPC, did the same).  So
        when drinks come out, the checkpoint is written at once with the new
        baselines *and the drinks themselves*, and only once it is durable
        do the drinks go to the outbox; a crash between the two re-adds them
        on restart, unless the outbox already knows their flow.  Until then
        they are pending here (see the module docstring)."""
        drinks = [e for e in effects if isinstance(e, RecordDrink)]
        if drinks:
            self._pending.extend(drinks)
            if not self.write_checkpoint():
                waiting = [d for d in self._pending if d.flow_id not in self._durable_flows]
                if waiting:
                    self.log.warn(
                        "{count} drink(s) wait in memory for the checkpoint (flow {flows})",
                        count=len(waiting),
                        flows=", ".join(str(d.flow_id) for d in waiting),
                    )
        self._execute(effects)
        if drinks:
            self._hand_over()

    # durability

    def _hand_over(self) -> None:
        """Pending drinks to the listeners, in order, each once a durable
        checkpoint holds it.  A listener's ``OSError`` (the outbox could not
        journal it) keeps it, and the ones after it, pending for a retry."""
        handed = 0
        failed: OSError | None = None
        while self._pending:
            drink = self._pending[0]
            if drink.flow_id not in self._durable_flows:
                self._schedule_retry()  # its checkpoint is not durable yet
                break
            if not self.already_recorded(drink.flow_id):  # (a retry after a partial success)
                try:
                    self._notify(drink)
                except OSError as e:
                    failed = e
                    break
            self._pending.pop(0)
            handed += 1
        if failed is not None:
            if self._handover_error is None:
                self.log.error(
                    "Cannot write the drink for flow {flow_id} to the outbox ({error}); "
                    "{count} drink(s) wait in memory and in the checkpoint, retrying with backoff",
                    flow_id=self._pending[0].flow_id,
                    error=failed,
                    count=len(self._pending),
                )
            self._handover_error = str(failed)
            self._schedule_retry()
        elif handed and self._handover_error is not None:
            self.log.info(
                "Outbox writable again: {count} waiting drink(s) written to it", count=handed
            )
            self._handover_error = None
        if handed:
            self._checkpoint_soon()  # the checkpoint need not hold them any more

    def _notify(self, drink: RecordDrink) -> None:
        for listener in self.listeners:
            try:
                listener(drink)
            except OSError:
                raise
            except Exception:
                self.log.failure("Effect listener failed on {effect}", effect=drink)

    def _schedule_retry(self) -> None:
        if self._stopped or (self._retry_call is not None and self._retry_call.active()):
            return
        self._retry_call = self.clock.callLater(self._backoff.next_delay(), self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        if self._stopped:
            return
        if self.write_checkpoint():
            self._hand_over()
        if self._checkpoint_error is None and not self._pending:
            self._backoff.reset()

    # crash safety

    def _checkpoint_soon(self) -> None:
        """Keep the checkpoint at most CHECKPOINT_DELAY old while things change
        (while writing it fails, the backoff retry does it instead)."""
        if self.checkpoint_path is None or self._stopped or self._checkpoint_error is not None:
            return
        if self._checkpoint_call is None or not self._checkpoint_call.active():
            self._checkpoint_call = self.clock.callLater(CHECKPOINT_DELAY, self.write_checkpoint)

    def write_checkpoint(self) -> bool:
        """Baselines, open pours and pending drinks, written atomically (tmp,
        fsync, rename, fsync of the directory).  False if the disk refused
        it: the previous checkpoint stays, and a retry is scheduled."""
        if self._checkpoint_call is not None and self._checkpoint_call.active():
            self._checkpoint_call.cancel()
        self._checkpoint_call = None
        if self.checkpoint_path is None:
            self._durable_flows = {d.flow_id for d in self._pending}
            return True
        state = self.core.checkpoint()
        state["drinks"] = [asdict(d) for d in self._pending]
        data = json.dumps(state, separators=(",", ":")).encode()
        if data != self._last_checkpoint:
            try:
                write_atomic(self.checkpoint_path, data, self.os_write, self.os_fsync)
            except OSError as e:
                if self._checkpoint_error is None:
                    self.log.error(
                        "Cannot write checkpoint {path} ({error}); retrying with backoff. "
                        "Until it is written, drinks that end wait in memory, not in the outbox",
                        path=str(self.checkpoint_path),
                        error=e,
                    )
                self._checkpoint_error = str(e)
                self._last_checkpoint = None  # what is on disk is unknown now
                self._schedule_retry()
                return False
            self._last_checkpoint = data
        if self._checkpoint_error is not None:
            self.log.info("Checkpoint {path} written again", path=str(self.checkpoint_path))
            self._checkpoint_error = None
        self._durable_flows = {d.flow_id for d in self._pending}
        return True

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
                        "Drink for flow {flow_id} ended just before a crash (or was not "
                        "written to the outbox); recording it now",
                        flow_id=drink.flow_id,
                    )
                    effects.append(drink)
                    # The checkpoint just read holds it: it may go to the
                    # outbox even if rewriting the checkpoint fails now.
                    self._durable_flows.add(drink.flow_id)
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
                log_pour(self.log, effect)
            elif isinstance(effect, RecordDrink):
                log_drink(self.log, effect)
            elif isinstance(effect, SensorState):
                self.log.warn(
                    "Temperature sensor {sensor} {state}",
                    sensor=effect.sensor_name,
                    state="lost: silent for 2 minutes" if effect.lost else "is back",
                )
            if isinstance(effect, RecordDrink):
                continue  # to the listeners once durable: see _hand_over
            for listener in self.listeners:
                try:
                    listener(effect)
                except OSError as e:  # a temperature the disk refused: best effort
                    self.log.warn("Could not write {effect} ({error})", effect=effect, error=e)
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
        if self._pending and self.write_checkpoint():
            self._hand_over()  # one last go for drinks that waited
        self._stopped = True
        self.write_checkpoint()  # baselines, and whatever is still pending
        for call in (self._call, self._retry_call, self._checkpoint_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._retry_call = self._checkpoint_call = None
        self._report_unwritten()
        return None

    def _report_unwritten(self) -> None:
        """Drinks the outbox never got: how many, at error level, and where
        they are (``unwritten``; the daemon then exits non-zero)."""
        self.unwritten = list(self._pending)
        if not self.unwritten:
            return
        durable = self._durable_flows if self.checkpoint_path is not None else set()
        kept = [d for d in self.unwritten if d.flow_id in durable]
        lost = [d for d in self.unwritten if d.flow_id not in durable]
        self.log.error(
            "Stopping with {count} drink(s) not written to the outbox ({error}): {kept} kept "
            "in the checkpoint {path}, recorded at the next start; {lost} not written anywhere",
            count=len(self.unwritten),
            error=self._handover_error or self._checkpoint_error or "not written",
            kept=len(kept),
            path=str(self.checkpoint_path),
            lost=len(lost),
        )
        for drink in lost:
            self.log.error(
                "Not written anywhere: the drink for flow {flow_id} on {meter}: {ticks} ticks, "
                "{volume_ml:.1f} mL, {user}, {start} to {end}. The checkpoint on disk predates "
                "it: the next start reads the meter against that older baseline, so these ticks "
                "come back (in the next pour on that meter) only if the board kept its count",
                flow_id=drink.flow_id,
                meter=drink.meter_name,
                ticks=drink.ticks,
                volume_ml=drink.volume_ml,
                user=drink.username or "guest",
                start=iso(drink.start_wall),
                end=iso(drink.end_wall),
            )

    def status(self) -> dict[str, Any]:
        return {
            "pours": self.core.pour_snapshots(),
            "stats": self.core.stats,
            "drinks_not_in_outbox": len(self._pending),
            "disk_error": self._checkpoint_error or self._handover_error,
        }
