"""Delivers the outbox to the Kegbot Server, exactly once, forever.

The thin Twisted loop that carries out :mod:`kegtwist.delivery.policy`
(what to do about each outcome: the rules, pure, and their table) with the
outbox (:mod:`kegtwist.delivery.outbox`: every step journaled before it is
taken) and the client (:mod:`kegtwist.delivery.client`).  One item at a
time, in pour order: the Kegbot Server API has no idempotency key, so the
exactly-once rule lives on our side.

* Before a drink is sent, the outbox journals ``sending``, and the request
  leaves only once that record is durable (the outbox writes off the
  reactor thread: :meth:`~kegtwist.delivery.outbox.Outbox.sending` returns
  a Deferred); a POST made before it could be re-sent after a crash
  instead of looked up.  A request whose outcome is unknown (timeout, dropped connection, a 5xx that may come from
  a proxy after the server committed, or a crash mid-request) leaves the
  drink *uncertain*.
* An uncertain drink is never simply re-sent: first the newest drinks on the
  server (GET /api/drinks) are searched for it
  (:func:`kegtwist.protocol.server_api.matches`: the same time to the
  microsecond, the same ticks, the same drinker).  Found: delivered.  Not
  found: sent again.
* A failure the policy retries waits out the backoff (1 s doubling to
  3 minutes, with jitter) and the same item is tried again, for as long as
  it takes; a dead letter or a guest re-post moves on at once.  The server
  being down, or refusing the key, is logged once, not at every retry.
* A journal step the disk refuses at once (full, EIO) applied nothing: the
  same step is tried again after the backoff.  One it refuses later stays
  queued in the outbox, retried there; the loop waits for its ``sending``.
* On stop (``drain_seconds``), whatever is pending, the drinks of the pours
  the stop ended included, gets one more go at once, whatever happened
  before (no answer yet, a backoff wait): it ends when the outbox is empty,
  at the first failure, or at the bound, where a request still out is
  cancelled (uncertain once it has left, certain if it never connected).

Temperatures are best effort: a permanent refusal drops one, and one older
than ``stale_temperature_seconds`` is dropped unsent (the policy says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kegtwist.backoff import Backoff
from kegtwist.delivery import policy
from kegtwist.delivery.outbox import DrinkItem, Outbox, TemperatureItem
from kegtwist.delivery.policy import STALE_TEMPERATURE_SECONDS, Action, Decision
from kegtwist.protocol.server_api import Drink, ServerError, matches

if TYPE_CHECKING:
    from kegtwist.delivery.client import KegbotServerClient

__all__ = [
    "STALE_TEMPERATURE_SECONDS",
    "DeliveryService",
    "DrinkListener",
    "delivery_backoff",
    "matches",
]

DrinkListener = Callable[[DrinkItem, int], None]


def delivery_backoff() -> Backoff:
    return Backoff(initial=1.0, factor=2.0, maximum=180.0, jitter=0.5)


class DeliveryService(Service):
    """Runs the delivery loop while the daemon runs."""

    log: ClassVar[Logger] = Logger()
    name = "delivery"

    def __init__(
        self,
        outbox: Outbox,
        client: KegbotServerClient,
        clock: IReactorTime,
        *,
        wall: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        stale_temperature_seconds: float = STALE_TEMPERATURE_SECONDS,
        drain_seconds: float = 0.0,
        listeners: list[DrinkListener] | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.clock = clock
        self.wall = wall
        self.backoff = backoff if backoff is not None else delivery_backoff()
        self.stale_temperature_seconds = stale_temperature_seconds
        self.listeners: list[DrinkListener] = list(listeners or [])
        self.state = "starting"  # ok, down, bad_key
        self.last_error: str | None = None
        self._wakeup: defer.Deferred[None] | None = None
        self._sleep: defer.Deferred[None] | None = None
        self._loop: defer.Deferred[None] | None = None
        self._sleep_call: IDelayedCall | None = None
        self._stopping = False
        self._draining = False
        self.drain_seconds = drain_seconds

    # lifecycle

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._draining = False
        if len(self.outbox):
            self.log.info(
                "Outbox holds {count} item(s) from before; delivering them first",
                count=len(self.outbox),
            )
        self._loop = defer.Deferred.fromCoroutine(self._run())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.addErrback(lambda f: f.trap(defer.CancelledError))
        if self.drain_seconds > 0 and self.outbox.next_item() is not None:
            # Pours ended by the shutdown itself (and anything older): one
            # more go now, whatever the server did before (the first
            # delivery of the process included), bounded by drain_seconds.
            # The loop ends by itself once the outbox is empty or at the
            # first failure; a request still running at the bound is
            # cancelled like any other (see below).
            self._draining = True
            self._end_sleep()
            self.wake()
            limit = self.clock.callLater(self.drain_seconds, loop.cancel)
            try:
                await loop
            finally:
                if limit.active():
                    limit.cancel()
                self._draining = False
        else:
            # An in-flight request is abandoned: the journal already says
            # "sending", so the next start checks the server before resending
            # (unless the request certainly never left: no connection).
            self._stopping = True
            loop.cancel()
            await loop
        self._stopping = True
        if len(self.outbox):
            self.log.info(
                "{count} item(s) stay in the outbox for the next start", count=len(self.outbox)
            )

    def wake(self) -> None:
        """Something was added to the outbox."""
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    # the loop

    async def _run(self) -> None:
        while not self._stopping:
            item = self.outbox.next_item()
            if item is None:
                if self._draining:
                    return  # stopping, and everything is delivered
                self._wakeup = defer.Deferred()
                await self._wakeup
                continue
            try:
                if isinstance(item, DrinkItem):
                    await self._deliver_drink(item)
                else:
                    await self._deliver_temperature(item)
            except ServerError as e:
                if self._draining or self._stopping:
                    # Stopping: no backoff, the rest waits for the next start.
                    self.log.info("Kegbot Server at stop: {reason}", reason=e.reason)
                    return
                self._failed(e)
                await self._pause()
                continue
            except defer.CancelledError:
                raise
            except OSError as e:
                # The journal refused a step (disk full, EIO): nothing of it
                # was applied, so the same step is tried again (an uncertain
                # drink is looked up on the server first, never resent).
                self.log.error("Outbox journal write failed ({error}); retrying", error=e)
                if self._draining or self._stopping:
                    return
                await self._pause()
                continue
            except Exception:
                self.log.failure("Delivery failed unexpectedly; retrying")
                if self._draining or self._stopping:
                    return
                await self._pause()
                continue
            self._ok()

    def _pause(self) -> defer.Deferred[None]:
        """The backoff wait; a stop ends it early (see :meth:`_end_sleep`)."""
        call = None

        def cancel(d: defer.Deferred[None]) -> None:
            if call is not None and call.active():
                call.cancel()

        sleep: defer.Deferred[None] = defer.Deferred(cancel)
        call = self.clock.callLater(self.backoff.next_delay(), sleep.callback, None)
        self._sleep, self._sleep_call = sleep, call
        return sleep

    def _end_sleep(self) -> None:
        call, sleep = self._sleep_call, self._sleep
        if call is not None and call.active() and sleep is not None and not sleep.called:
            call.cancel()
            sleep.callback(None)

    async def _deliver_drink(self, item: DrinkItem) -> None:
        outbox = self.outbox
        if policy.before_drink(item.uncertain).action is Action.LOOK_UP:
            found = await self._find_on_server(item)
            if found is not None:
                self.log.info(
                    "Drink for flow {flow_id} was already recorded as drink {drink_id}; not sending it again",
                    flow_id=item.flow_id,
                    drink_id=found.id,
                )
                outbox.delivered(item, found.id, found=True)
                self._notify(item, found.id)
                return
            outbox.certain_not_recorded(item)
        await outbox.sending(item)  # durable before the request leaves
        try:
            drink = await self.client.record_drink(
                item.meter_name,
                item.ticks,
                username=item.username,
                record_date=datetime.fromisoformat(item.record_date),
                duration=max(0, round(item.duration_seconds)),
                volume_ml=item.volume_ml if item.post_volume else None,
            )
        except ServerError as e:
            decision = policy.drink_failed(e, item.username)
            self._drink_failed(item, decision)
            if decision.backs_off:
                raise  # the loop waits out the backoff, then tries this item again
            return
        outbox.delivered(item, drink.id)
        self.log.info(
            "Drink {drink_id} recorded: flow {flow_id} on {meter}, {ticks} ticks, {user}",
            drink_id=drink.id,
            flow_id=item.flow_id,
            meter=item.meter_name,
            ticks=item.ticks,
            user=item.username or "guest",
        )
        self._notify(item, drink.id)

    def _drink_failed(self, item: DrinkItem, decision: Decision) -> None:
        """Journal what the policy decided about a failed POST."""
        outbox = self.outbox
        if decision.action is Action.RETRY_CERTAIN:
            outbox.certain_not_recorded(item)
        elif decision.action is Action.RETRY_UNCERTAIN:
            outbox.uncertain(item)
        elif decision.action is Action.GUEST_REPOST:
            self.log.error(
                "Server does not know drinker {username}: flow {flow_id} re-posted as a guest pour "
                "(kept in the dead letters)",
                username=item.username,
                flow_id=item.flow_id,
            )
            outbox.as_guest(item, decision.reason, decision.status, self.wall())
        elif decision.action is Action.DEAD_LETTER:
            self.log.error(
                "Server refused the drink for flow {flow_id} on {meter} ({ticks} ticks): {reason}; "
                "kept in the dead letters",
                flow_id=item.flow_id,
                meter=item.meter_name,
                ticks=item.ticks,
                reason=decision.reason,
            )
            outbox.dead_letter(item, decision.reason, decision.status, self.wall())
        else:
            raise ValueError(f"not what to do about a failed drink: {decision}")

    async def _find_on_server(self, item: DrinkItem) -> Drink | None:
        for drink in await self.client.recent_drinks():
            if matches(item, drink):
                return drink
        return None

    async def _deliver_temperature(self, item: TemperatureItem) -> None:
        decision = policy.before_temperature(
            self.wall() - item.wall, self.stale_temperature_seconds
        )
        if decision.action is Action.DROP:
            self.outbox.drop(item, decision.reason)
            return
        try:
            await self.client.record_temperature(item.sensor_name, item.celsius)
        except ServerError as e:
            decision = policy.temperature_failed(e)
            if decision.backs_off:
                raise
            self.log.warn(
                "Server refused temperature of {sensor}: {reason}",
                sensor=item.sensor_name,
                reason=decision.reason,
            )
            self.outbox.drop(item, decision.reason)
            return
        self.outbox.delivered(item)

    # reporting

    def _notify(self, item: DrinkItem, drink_id: int) -> None:
        for listener in self.listeners:
            try:
                listener(item, drink_id)
            except Exception:
                self.log.failure("Drink listener failed")

    def _ok(self) -> None:
        self.backoff.reset()
        if self.state in ("down", "bad_key"):
            self.log.info(
                "Kegbot Server reachable again; delivering {count} queued item(s)",
                count=len(self.outbox),
            )
        self.state = "ok"
        self.last_error = None

    def _failed(self, error: ServerError) -> None:
        state = policy.health(error)
        self.last_error = error.reason
        if state != self.state:
            if state == "bad_key":
                self.log.error(
                    "The Kegbot Server refused the API key ({reason}). Nothing is lost: {count} item(s) "
                    "wait in the outbox. Set --api-key or --api-key-file to a key of a staff user.",
                    reason=error.reason,
                    count=len(self.outbox),
                )
            else:
                self.log.warn(
                    "Kegbot Server unavailable ({reason}); {count} item(s) wait in the outbox, retrying with backoff",
                    reason=error.reason,
                    count=len(self.outbox),
                )
        self.state = state

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pending": len(self.outbox),
            "dead_letters": len(self.outbox.dead),
            "last_error": self.last_error,
            "stats": self.outbox.stats,
        }
