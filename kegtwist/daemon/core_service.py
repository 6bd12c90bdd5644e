"""The Twisted side of the core: feeds it inputs with the time, runs effects.

The core is pure; this service owns the clock.  After every input it
schedules one DelayedCall for exactly the core's next deadline (no polling),
and it executes effects: valve commands go to a relay driver (the board
service, or Kegnet in the ``core`` role), token lookups to a resolver (the
Kegbot Server), and everything else to listeners (logs, the outbox, Kegnet).

Effects run at once (a valve closes without waiting for any disk); the
checkpoint is serialized on the reactor and written by a
:class:`~kegtwist.durable.Writer` (in the daemon, a thread of its own): at
most one write in flight, and whatever changed meanwhile is written right
after it (group commit).

A drink is logged when its pour ends and is never lost or counted twice,
whatever the disk does.  It is *pending* in this service's memory until
the listeners (the outbox) have it durably, and it is handed to them only
once a checkpoint holding it is durable: the checkpoint's baselines already
include the drink's ticks, so a drink journaled against an older checkpoint
(which a restart would count again) cannot happen.  It leaves the
checkpoint's ``drinks`` only once the outbox says its record is durable
(``outbox_durable``).  While the checkpoint cannot be written (disk full,
EIO, read-only) the drink waits; while the journal append fails it waits
too, still listed in the checkpoint's ``drinks`` (a restart records it from
there, unless the outbox already knows its flow).  Both are retried with
backoff while pours go on.  A stop waits for the writes under way (at most
``STOP_WRITE_SECONDS``); drinks still pending then are said at error level
(``unwritten``).
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
from kegtwist.daemon.pour_log import drink_fields, log_drink, log_pour
from kegtwist.durable import SyncWriter, Writer, write_atomic

RelayDriver = Callable[[str, bool], bool]
TokenResolver = Callable[[str, str], "defer.Deferred[TokenLookupResult]"]
EffectListener = Callable[[Effect], None]
CHECKPOINT_DELAY = 0.5
STOP_WRITE_SECONDS = 5.0  # a stop waits this long for the checkpoint and the outbox


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
        writer: Writer | None = None,
        outbox_durable: Callable[[], defer.Deferred[None]] | None = None,
    ) -> None:
        """``writer`` writes the checkpoint (default: at once, for tests);
        ``outbox_durable`` fires once what the listeners wrote is durable
        (the outbox's ``durable``; None: once they return)."""
        self.core = core
        self.os_write = write  # the seams a disk fails through (tests)
        self.os_fsync = fsync
        self.writer = writer if writer is not None else SyncWriter()
        self.outbox_durable = outbox_durable
        self._writing = False  # a checkpoint write is in flight
        self._dirty = False  # write again once it is done
        self._drinks_ended = False  # write at once, not in CHECKPOINT_DELAY
        self._handing = False  # a hand-over is under way (awaiting the outbox)
        self._warned: set[int] = set()  # drinks said to wait for the checkpoint
        self._settle_waiters: list[defer.Deferred[None]] = []
        self._stopping = False
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
        if self._stopping:
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
        if not self._stopping:
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
        if self._drinks_ended:
            self._drinks_ended = False
            self.write_checkpoint()  # at once: the drinks wait for it
        else:
            self._checkpoint_soon()

    def _commit(self, effects: list[Effect]) -> None:
        """Run effects at once; a pour that ended is made durable after.

        The checkpoint holds meter baselines.  If it lagged behind a drink
        the outbox already holds, a restart would count that drink's ticks
        again (measured: a 250-tick pour recorded twice after kill -9; and a
        checkpoint that could not be rewritten, ENOSPC, did the same).  So
        when drinks come out, the checkpoint is written at once with the new
        baselines *and the drinks themselves*, and only once it is durable
        do the drinks go to the outbox; a crash between the two re-adds them
        on restart, unless the outbox already knows their flow.  Until then
        they are pending here (see the module docstring).  Valve commands,
        lookups and logs do not wait for any of it."""
        drinks = [e for e in effects if isinstance(e, RecordDrink)]
        if drinks:
            self._pending.extend(drinks)
            self._drinks_ended = True
        self._execute(effects)

    # durability

    def _hand_over(self) -> None:
        """Pending drinks to the listeners, in order, each once a durable
        checkpoint holds it; they leave ``_pending`` (and so the checkpoint)
        once ``outbox_durable`` fires.  A listener's ``OSError`` (the outbox
        could not journal it) keeps it, and the ones after it, pending for a
        retry.  One hand-over at a time."""
        if self._handing or self._stopped:
            return
        self._handing = True
        handed: list[RecordDrink] = []
        failed: OSError | None = None
        try:
            for drink in self._pending:
                if drink.flow_id not in self._durable_flows:
                    break  # its checkpoint is not durable yet: written, or to be retried
                if not self.already_recorded(drink.flow_id):  # (a retry after a partial success)
                    try:
                        self._notify(drink)
                    except OSError as e:
                        failed = e
                        break
                handed.append(drink)
        except BaseException:
            self._handing = False
            raise
        if failed is not None:
            if self._handover_error is None:
                self.log.error(
                    "Cannot write the drink for flow {flow_id} to the outbox ({error}); "
                    "{count} drink(s) wait in memory and in the checkpoint, retrying with backoff",
                    flow_id=self._pending[len(handed)].flow_id,
                    error=failed,
                    count=len(self._pending) - len(handed),
                )
            self._handover_error = str(failed)
            self._schedule_retry()
        if not handed:
            self._handing = False
            self._check_settled()
            return
        if self.outbox_durable is None:
            self._handed(handed, clean=failed is None)
            return
        try:
            durable = self.outbox_durable()
        except Exception:
            durable = defer.fail()
        durable.addCallbacks(
            lambda _: self._handed(handed, clean=failed is None), self._outbox_wait_failed
        )

    def _handed(self, drinks: list[RecordDrink], *, clean: bool) -> None:
        """The outbox holds ``drinks`` durably: the checkpoint may forget them."""
        self._handing = False
        gone = {id(d) for d in drinks}
        self._pending = [d for d in self._pending if id(d) not in gone]
        if clean and self._handover_error is not None:
            self.log.info(
                "Outbox writable again: {count} waiting drink(s) written to it", count=len(drinks)
            )
            self._handover_error = None
        self._checkpoint_soon()  # the checkpoint need not hold them any more
        self._maybe_reset_backoff()
        self._hand_over()  # those whose checkpoint became durable meanwhile
        self._check_settled()

    def _outbox_wait_failed(self, failure: Failure) -> None:
        # Never expected (the outbox retries its own writes): the drinks
        # stay pending, and a retry awaits the outbox again.
        self._handing = False
        if not failure.check(defer.CancelledError):
            self.log.failure("Waiting for the outbox failed", failure)
        self._schedule_retry()
        self._check_settled()

    def _notify(self, drink: RecordDrink) -> None:
        for listener in self.listeners:
            try:
                listener(drink)
            except OSError:
                raise
            except Exception:
                self.log.failure("Effect listener failed on {effect}", effect=drink)

    def _schedule_retry(self) -> None:
        if self._stopping or (self._retry_call is not None and self._retry_call.active()):
            return
        self._retry_call = self.clock.callLater(self._backoff.next_delay(), self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        if not self._stopping:
            self.write_checkpoint()  # then the hand-over, whether or not it is written

    def _maybe_reset_backoff(self) -> None:
        if self._checkpoint_error is None and self._handover_error is None:
            self._backoff.reset()

    # crash safety

    def _checkpoint_soon(self) -> None:
        """Keep the checkpoint at most CHECKPOINT_DELAY old while things change
        (while writing it fails, the backoff retry does it instead)."""
        if self.checkpoint_path is None or self._stopping or self._checkpoint_error is not None:
            return
        if self._checkpoint_call is None or not self._checkpoint_call.active():
            self._checkpoint_call = self.clock.callLater(CHECKPOINT_DELAY, self.write_checkpoint)

    def write_checkpoint(self) -> None:
        """Baselines, open pours and pending drinks, serialized now and
        written atomically by the writer (tmp, fsync, rename, fsync of the
        directory); while a write is in flight, right after it.  Then the
        drinks it holds are handed over.  If the disk refuses it, the
        previous checkpoint stays, and a retry is scheduled."""
        if self._checkpoint_call is not None and self._checkpoint_call.active():
            self._checkpoint_call.cancel()
        self._checkpoint_call = None
        if self._writing:
            self._dirty = True
            return
        if self.checkpoint_path is None:
            self._durable_flows = {d.flow_id for d in self._pending}
            self._hand_over()
            return
        state = self.core.checkpoint()
        state["drinks"] = [asdict(d) for d in self._pending]
        flows = {d.flow_id for d in self._pending}
        data = json.dumps(state, separators=(",", ":")).encode()
        if data == self._last_checkpoint:
            self._written(data, flows)
            return
        self._writing = True
        written = self.writer.submit(
            write_atomic, self.checkpoint_path, data, self.os_write, self.os_fsync
        )
        written.addCallbacks(
            lambda _: self._written(data, flows), self._write_failed, errbackArgs=(flows,)
        )

    def _written(self, data: bytes, flows: set[int]) -> None:
        self._writing = False
        self._last_checkpoint = data
        if self._checkpoint_error is not None:
            self.log.info("Checkpoint {path} written again", path=str(self.checkpoint_path))
            self._checkpoint_error = None
        pending = {d.flow_id for d in self._pending}
        self._durable_flows = (self._durable_flows | flows) & pending
        self._warned &= pending
        self._hand_over()  # first: the outbox's write goes before the next checkpoint's
        if self._dirty:
            self._dirty = False
            self.write_checkpoint()  # what changed while it was written
        self._maybe_reset_backoff()
        self._check_settled()

    def _write_failed(self, failure: Failure, flows: set[int]) -> None:
        self._writing = False
        self._dirty = False  # the retry writes the newest state
        error = failure.value
        if not isinstance(error, OSError):
            self.log.failure("Writing the checkpoint failed", failure)
        if self._checkpoint_error is None:
            self.log.error(
                "Cannot write checkpoint {path} ({error}); retrying with backoff. "
                "Until it is written, drinks that end wait in memory, not in the outbox",
                path=str(self.checkpoint_path),
                error=error,
            )
        self._checkpoint_error = str(error)
        self._last_checkpoint = None  # what is on disk is unknown now
        waiting = [
            d
            for d in self._pending
            if d.flow_id not in self._durable_flows and d.flow_id not in self._warned
        ]
        if waiting:
            self.log.warn(
                "{count} drink(s) wait in memory for the checkpoint (flow {flows})",
                count=len(waiting),
                flows=", ".join(str(d.flow_id) for d in waiting),
            )
            self._warned.update(d.flow_id for d in waiting)
        self._schedule_retry()
        self._hand_over()  # drinks an earlier checkpoint holds may go all the same
        self._check_settled()

    def _check_settled(self) -> None:
        if self._writing or self._handing:
            return
        waiters, self._settle_waiters = self._settle_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _settled(self, seconds: float) -> defer.Deferred[None]:
        """Fires once no checkpoint write and no hand-over is under way,
        or after ``seconds`` (said at warning level)."""
        if not (self._writing or self._handing):
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._settle_waiters.append(waiter)

        def late(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            self.log.warn(
                "Stopping: the checkpoint or the outbox still being written after {seconds} s",
                seconds=seconds,
            )

        return waiter.addTimeout(seconds, self.clock).addErrback(late)

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
        """End pours (recorded) and close every valve the core opened at
        once; then wait (at most ``STOP_WRITE_SECONDS``) for the checkpoint
        and the outbox to hold them."""
        super().stopService()
        if self._stopping:
            return None
        self._stopping = True  # no input from now on
        effects = self.core.shutdown(self.monotonic(), self.wall())
        self.closed_at_shutdown = {
            e.relay_name for e in effects if isinstance(e, SetRelay) and not e.on
        }
        for call in (self._call, self._checkpoint_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._retry_call = self._checkpoint_call = None
        self._commit(effects)
        return defer.Deferred.fromCoroutine(self._finish_stop())

    async def _finish_stop(self) -> None:
        self._drinks_ended = False
        self.write_checkpoint()  # the drinks the stop ended, and the ones that waited
        await self._settled(STOP_WRITE_SECONDS)
        if self._pending and not (self._writing or self._handing):
            self.write_checkpoint()  # one last go for drinks that waited
            await self._settled(STOP_WRITE_SECONDS)
        self._stopped = True  # no hand-over from now on
        if not (self._writing or self._handing):
            self.write_checkpoint()  # baselines, and whatever is still pending
            await self._settled(STOP_WRITE_SECONDS)
        self._report_unwritten()

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
                **drink_fields(drink),
            )

    def status(self) -> dict[str, Any]:
        return {
            "pours": self.core.pour_snapshots(),
            "stats": self.core.stats,
            "drinks_not_in_outbox": len(self._pending),
            "disk_error": self._checkpoint_error or self._handover_error,
        }
