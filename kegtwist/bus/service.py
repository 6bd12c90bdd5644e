"""Kegnet over Redis pub/sub: the bus service, that never gives up.

Two :class:`~kegtwist.bus.link.RedisLink` connections, a publisher and a
subscriber, each reconnecting forever (see ``docs/kegnet.md``, "Connection
behaviour"); this module is what the daemon sees of them:

* :meth:`KegnetBus.publish` never waits: while disconnected, events queue
  up to a bound, the oldest dropped and counted, and flush in order on
  reconnect; each PUBLISH has a deadline (a Redis that stops answering is
  dropped and reconnected);
* what arrives is decoded by :mod:`kegtwist.protocol.kegnet`: our own echoes are
  dropped, rejects are counted and logged at most once per 10 s per reason,
  and a ``FlowUpdate`` from another origin (a second core on the channel,
  which would record every pour twice) is logged at error level, once per
  origin for the first :data:`MAX_FOREIGN_ORIGINS` origins and then at most
  once per 10 s (origins are whatever a client writes: the set is bounded);
* Redis down is said once, and again only for another reason (a refused
  password after a refused connection), never once per retry.

The Redis password is never logged: log lines use :meth:`RedisTarget.redacted`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from kegtwist.bus.link import C_PARSER, RedisLink
from kegtwist.bus.redis_url import RedisTarget
from kegtwist.protocol import kegnet as events
from kegtwist.ratelimit import RateLimiter, suppressed_note

CONNECT_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
HEALTH_INTERVAL = 30.0  # PING each connection when it has been up this long
REJECT_LOG_INTERVAL = 10.0
STOP_FLUSH_SECONDS = 1.0
MAX_FOREIGN_ORIGINS = 8


@dataclass
class BusStats(events.KegnetStats):
    """The decoder's counters plus what the bus itself did."""

    published: int = 0
    queued: int = 0  # events that waited in the queue (total, not current)
    dropped_queue_full: int = 0
    publish_failed: int = 0  # sent, then refused, unanswered or the connection went
    encode_failed: int = 0
    echoes: int = 0
    handler_errors: int = 0
    foreign_cores: int = 0
    connects: int = 0
    health_failures: int = 0


class KegnetBus(Service):
    """Publishes and receives Kegnet events on one Redis channel."""

    log: ClassVar[Logger] = Logger()
    name = "kegnet"

    def __init__(
        self,
        target: RedisTarget,
        channel: str,
        origin: str,
        on_event: Callable[[events.Event], None] | None = None,
        *,
        reactor: Any = None,
        queue_limit: int = 10_000,
        core: bool = True,
        reply_timeout: float = REPLY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.target = target
        self.channel = channel
        self.origin = origin
        self.on_event = on_event  # None: events are counted, handed to no one
        self.reactor = reactor
        self.queue_limit = queue_limit
        self.core = core
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.stats = BusStats()
        self.queue: deque[bytes] = deque()
        self.publisher: Any = None  # a ready txredisapi RedisProtocol, or None
        self.subscriber: Any = None  # a subscribed txredisapi SubscriberProtocol, or None
        self.in_flight = 0
        self._links: list[RedisLink] = []
        self._log_limit = RateLimiter(REJECT_LOG_INTERVAL)
        self._foreign_origins: set[str | None] = set()  # at most MAX_FOREIGN_ORIGINS
        self._state: str | None = None
        self._logged_reason = ""
        self.last_error = ""

    # --- publishing --------------------------------------------------------

    def publish(self, event: events.Event) -> None:
        """Send now if connected, else queue (bounded); never waits, never
        raises (an event that cannot be encoded is a bug: logged, counted)."""
        try:
            data = events.encode(_with_origin(event, self.origin))
        except (ValueError, OverflowError, TypeError):
            self.stats.encode_failed += 1
            self.log.failure("Kegnet: cannot encode {event}; not sent", event=event)
            return
        if self.publisher is not None and not self.queue and self.in_flight < self.queue_limit:
            if self._send(data):
                return
        if len(self.queue) >= self.queue_limit:
            self.queue.popleft()
            self.stats.dropped_queue_full += 1
        self.queue.append(data)
        self.stats.queued += 1

    def _send(self, data: bytes) -> bool:
        protocol = self.publisher
        try:
            d = protocol.publish(self.channel, data)
        except txredisapi.ConnectionError:
            # txredisapi raises at once if the connection has just gone and
            # our link has not heard yet: keep the event for the next one.
            return False
        self.in_flight += 1
        d.addTimeout(self.reply_timeout, self.reactor)
        d.addCallbacks(self._published, self._publish_failed, errbackArgs=(protocol,))
        return True

    def _published(self, result: object) -> None:
        self.in_flight -= 1
        self.stats.published += 1
        if self.queue:
            self._flush()  # the in-flight bound had held some back

    def _publish_failed(self, failure: Any, protocol: Any) -> None:
        # Refused (NOAUTH), or the connection went while the command was out
        # (every waiting reply fails when it does, so in_flight returns to
        # 0): Kegnet is lossy by design (readings are cumulative), so count
        # it and move on.  No answer in time: that connection is dead.
        self.in_flight -= 1
        self.stats.publish_failed += 1
        if failure.check(defer.TimeoutError):
            for link in self._links:
                if link.protocol is protocol:
                    link.abort(f"no answer to PUBLISH within {self.reply_timeout:g} s")

    def _flush(self) -> None:
        """Send queued events in order, as far as the in-flight bound allows."""
        while self.queue and self.publisher is not None and self.in_flight < self.queue_limit:
            data = self.queue.popleft()
            if not self._send(data):
                self.queue.appendleft(data)
                break

    # --- receiving -----------------------------------------------------------

    def _received(self, channel: object, message: bytes | str) -> None:
        result = events.decode(message)
        self.stats.count(result)
        if isinstance(result, events.Rejected):
            self._log_reject(result)
            return
        if isinstance(result, events.Ignored):
            if result.reason == "internal_event":
                self._log_reject(events.Rejected("internal_event", f"{result.event} ignored"))
            return
        if result.origin == self.origin:
            self.stats.echoes += 1
            return
        if isinstance(result, events.FlowUpdate) and self.core:
            self._foreign_core(result.origin)
        if self.on_event is None:
            return
        try:
            self.on_event(result)
        except Exception:
            self.stats.handler_errors += 1
            if self._rate_limited("handler_error"):
                return
            self.log.failure(
                "Kegnet event {event} could not be handled{more}",
                event=result,
                more=self._suppressed_note("handler_error"),
            )

    def _rate_limited(self, key: str) -> bool:
        """True if a line for ``key`` was logged in the last 10 s (and count
        this one as suppressed)."""
        return not self._log_limit.allow(key, self.reactor.seconds())

    def _suppressed_note(self, key: str) -> str:
        return suppressed_note(self._log_limit.take_suppressed(key))

    def _log_reject(self, rejected: events.Rejected) -> None:
        if self._rate_limited(rejected.reason):
            return
        self.log.warn(
            "Kegnet message rejected ({reason}): {detail}{more}",
            reason=rejected.reason,
            detail=rejected.detail,
            more=self._suppressed_note(rejected.reason),
        )

    def _foreign_core(self, origin: str | None) -> None:
        if origin in self._foreign_origins:
            return
        if len(self._foreign_origins) >= MAX_FOREIGN_ORIGINS:
            # Origins are free text from any client: not remembered past the bound.
            if self._rate_limited("foreign_core"):
                return
            self.log.error(
                "Yet another origin ({origin}) publishes FlowUpdate on channel {channel}, "
                "after {count} others: a misbehaving or hostile client{more}",
                origin=events.shown(origin or "unknown"),
                channel=self.channel,
                count=MAX_FOREIGN_ORIGINS,
                more=self._suppressed_note("foreign_core"),
            )
            return
        self._foreign_origins.add(origin)
        self.stats.foreign_cores += 1
        self.log.error(
            "Another Kegbot core (origin {origin}) publishes FlowUpdate on channel {channel}: "
            "two cores record every pour twice. Stop one, or give it another --channel",
            origin=events.shown(origin or "unknown"),
            channel=self.channel,
        )

    # --- connections -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.target.password is None and not self._credentials_noted:
            self._credentials_noted = True
            self._warn_no_credentials()
        if not C_PARSER and not KegnetBus._parser_noted:
            KegnetBus._parser_noted = True
            self.log.warn(
                "Kegnet: the hiredis package is missing (a dependency of kegtwist): Redis "
                "replies are parsed in Python, about a fifth as many messages a second"
            )
        self._state = None
        self._logged_reason = ""
        self._links = [self._link(subscriber=False), self._link(subscriber=True)]
        for link in self._links:
            link.start()

    def _link(self, *, subscriber: bool) -> RedisLink:
        def up(protocol: Any) -> None:
            self.stats.connects += 1
            if subscriber:
                self.subscriber = protocol
            else:
                self.publisher = protocol
                self._flush()
            self._link_changed()

        def down(reason: str) -> None:
            if subscriber:
                self.subscriber = None
            else:
                self.publisher = None
            if self.running:
                self.last_error = reason
            self._link_changed()

        def unhealthy() -> None:
            self.stats.health_failures += 1

        return RedisLink(
            self.target,
            reactor=self.reactor,
            on_up=up,
            on_down=down,
            channel=self.channel if subscriber else None,
            on_message=self._received if subscriber else None,
            on_unhealthy=unhealthy,
            reply_timeout=self.reply_timeout,
            connect_timeout=self.connect_timeout,
            health_interval=self.health_interval,
        )

    _credentials_noted = False
    _parser_noted: ClassVar[bool] = False

    def _warn_no_credentials(self) -> None:
        """Once a process: a Redis without AUTH lets anyone who reaches it
        fake meter readings and tokens, or drive relays."""
        user = self.target.username
        self.log.warn(
            "Kegnet: no Redis credentials (no password in --redis-url, no "
            "--redis-password-file){note}: anyone who can reach Redis at {url} can pour "
            'through this daemon. See "Kegnet security" in the README (ACL users, '
            "passwords, bind addresses)",
            note=f"; the user name {user} is not sent without a password" if user else "",
            url=self.target.redacted(),
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # Let the last events (valves closed, pours completed) leave first.
        waited = 0.0
        while (
            (self.in_flight or self.queue)
            and self.publisher is not None
            and waited < STOP_FLUSH_SECONDS
        ):
            d: defer.Deferred[None] = defer.Deferred()
            self.reactor.callLater(0.05, d.callback, None)
            await d
            waited += 0.05
        links, self._links = self._links, []
        await defer.DeferredList([defer.Deferred.fromCoroutine(link.stop()) for link in links])
        if self.queue:
            self.log.info(
                "Kegnet: stopped with {count} events not sent (Redis was unreachable)",
                count=len(self.queue),
            )

    def _link_changed(self) -> None:
        up = bool(self._links) and all(link.ready for link in self._links)
        state = "connected" if up else "down"
        if state == self._state:
            if not up and self.running and self.last_error != self._logged_reason:
                # Still down, for another reason (refused -> wrong password):
                # worth one line, unlike every retry.
                self._logged_reason = self.last_error
                self.log.warn(
                    "Kegnet: still waiting for Redis at {url}: {reason}",
                    url=self.target.redacted(),
                    reason=self.last_error,
                )
            return
        first = self._state is None
        self._state = state
        if up:
            self._logged_reason = ""
            self.log.info(
                "Kegnet: connected to Redis at {url}, channel {channel}",
                url=self.target.redacted(),
                channel=self.channel,
            )
        elif self.running:
            self._logged_reason = self.last_error
            self.log.warn(
                "Kegnet: {what} Redis at {url} ({reason}); pours go on and are recorded, "
                "events wait (at most {limit}). Set --redis-url (or $KEGBOT_REDIS_URL), "
                "or --redis-url none for no bus",
                what="waiting for" if first else "lost",
                url=self.target.redacted(),
                reason=self.last_error or "connecting",
                limit=self.queue_limit,
            )

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def state(self) -> str:
        """``starting`` (no attempt finished yet), ``connected`` or ``down``."""
        return self._state or "starting"

    def describe(self) -> str:
        s = self.stats
        return (
            f"{self.state} ({self.target.redacted()}, channel {self.channel}); "
            f"{s.published} published, {len(self.queue)} queued, {s.dropped_queue_full} dropped, "
            f"{s.decoded} received, {s.rejected} rejected, {s.ignored} ignored"
        )


def _with_origin(event: events.Event, origin: str) -> events.Event:
    return event if event.origin == origin else replace(event, origin=origin)


__all__ = ["MAX_FOREIGN_ORIGINS", "BusStats", "KegnetBus"]
