"""Kegnet over Redis pub/sub, on txredisapi, that never gives up.

txredisapi's own factories have three pitfalls for a daemon that must run
for years (see ``docs/kegnet.md``, "Connection behaviour"): a subscriber is not
subscribed again after a reconnect, a failed AUTH or SELECT stops
reconnection for good, and commands wait forever while disconnected.  So
this module uses txredisapi's protocols (the RESP codec and commands) over
connections it manages itself:

* two connections, a publisher and a subscriber, each reconnecting forever
  with backoff and jitter; AUTH and SELECT are sent by us after every
  connect, and a refusal is one more reason to retry later (Redis may be
  restarting with its password not yet configured);
* the subscriber subscribes again after every reconnect;
* every step has a deadline (connect, AUTH/SELECT/SUBSCRIBE, each PUBLISH)
  and each connection is PINGed every 30 s, so a Redis that accepts and
  never answers, or a peer gone without a FIN, is noticed and retried;
* :meth:`KegnetBus.publish` never waits: while disconnected, events queue
  up to a bound, the oldest dropped and counted, and flush in order on
  reconnect;
* what arrives is decoded by :mod:`kegtwist.protocol.kegnet`: our own echoes are
  dropped, rejects are counted and logged at most once per 10 s per reason,
  and a ``FlowUpdate`` from another origin (a second core on the channel,
  which would record every pour twice) is logged at error level, once per
  origin for the first :data:`MAX_FOREIGN_ORIGINS` origins and then at most
  once per 10 s (origins are whatever a client writes: the set is bounded).

The Redis password is never logged: log lines use :meth:`RedisTarget.redacted`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from kegtwist.backoff import Backoff
from kegtwist.bus.redis_url import RedisTarget, parse_redis_url
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
    publish_failed: int = 0  # sent, then the connection went before Redis answered
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
        on_event: Callable[[events.Event], None],
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
        self.on_event = on_event
        self.reactor = reactor
        self.queue_limit = queue_limit
        self.core = core
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.stats = BusStats()
        self.queue: deque[bytes] = deque()
        self.publisher: Any = None  # a ready txredisapi RedisProtocol, or None
        self.subscriber: Any = None
        self.in_flight = 0
        self._links: list[_Link] = []
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
        try:
            d = self.publisher.publish(self.channel, data)
        except Exception:
            # txredisapi raises at once if the connection has just gone and
            # our link has not heard yet: keep the event for the next one.
            return False
        self.in_flight += 1
        d.addCallbacks(self._published, self._publish_failed)
        return True

    def _published(self, result: object) -> None:
        self.in_flight -= 1
        self.stats.published += 1
        if self.queue:
            self._flush()  # the in-flight bound had held some back

    def _publish_failed(self, failure: Any) -> None:
        # The connection went while the command was out (every waiting reply
        # fails when it does, so in_flight returns to 0): Kegnet is lossy by
        # design (readings are cumulative), so count it and move on.
        self.in_flight -= 1
        self.stats.publish_failed += 1

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
        self._state = None
        self._logged_reason = ""
        self._links = [_Link(self, subscriber=False), _Link(self, subscriber=True)]
        for link in self._links:
            link.start()

    _credentials_noted = False

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

    def describe(self) -> str:
        s = self.stats
        return (
            f"{self._state or 'starting'} ({self.target.redacted()}, channel {self.channel}); "
            f"{s.published} published, {len(self.queue)} queued, {s.dropped_queue_full} dropped, "
            f"{s.decoded} received, {s.rejected} rejected, {s.ignored} ignored"
        )


class _OneConnection(Factory):
    """Hands out one prepared protocol; quiet (no "Starting factory" lines)."""

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


def _with_origin(event: events.Event, origin: str) -> events.Event:
    return event if event.origin == origin else replace(event, origin=origin)


_PROTOCOLS: tuple[Any, Any] | None = None


def _protocol_classes() -> tuple[Any, Any]:
    """txredisapi's RESP codec and commands with our own connection life
    cycle, made on first use (importing txredisapi is not free)."""
    global _PROTOCOLS
    if _PROTOCOLS is not None:
        return _PROTOCOLS
    import txredisapi

    class Owned:
        """txredisapi's connectionMade sends AUTH/SELECT itself and, on any
        failure, tells its factory to stop reconnecting for good; 1.4's
        ``whenConnected`` never fires if asked after the connection is made;
        1.4 calls ``factory.addConnection``.  We need none of it: the link
        sends AUTH/SELECT/SUBSCRIBE and owns the retrying."""

        lost: defer.Deferred[None]

        def connectionMade(self) -> None:
            self.connected = 1

        def connectionLost(self, why: object) -> None:
            self.connected = 0
            # Every command still owed a reply fails now, as in txredisapi.
            while self.replyQueue.waiting:  # type: ignore[attr-defined]
                self.replyReceived(txredisapi.ConnectionError("Lost connection"))  # type: ignore[attr-defined]
            if not self.lost.called:
                self.lost.callback(None)

    class Publisher(Owned, txredisapi.RedisProtocol):  # type: ignore[misc]
        pass

    class Subscriber(Owned, txredisapi.SubscriberProtocol):  # type: ignore[misc]
        """txredisapi's commands, our reader: txredisapi's line parser
        pauses and resumes the transport (an epoll change and a callLater)
        for every bulk string, which capped a core at ~14,000 messages/s;
        this reader does ~4x that."""

        _buffer = b""
        on_message: Callable[[bytes, bytes], None]

        def dataReceived(self, data: bytes) -> None:
            buffer = self._buffer + data if self._buffer else data
            pos = 0
            end = len(buffer)
            while pos < end:
                if buffer.startswith(_MESSAGE_HEAD, pos):
                    try:
                        parsed = _push_message(buffer, pos + len(_MESSAGE_HEAD))
                    except _ProtocolError:
                        self._buffer = b""
                        self.transport.loseConnection()
                        return
                    if parsed is None:
                        break
                    channel, payload, pos = parsed
                    self.on_message(channel, payload)
                    continue
                reply = _parse_reply(buffer, pos)
                if reply is None:
                    break
                value, pos = reply
                if isinstance(value, _ProtocolError):
                    self._buffer = b""
                    self.transport.loseConnection()
                    return
                self.replyReceived(value)
            self._buffer = buffer[pos:]

    _PROTOCOLS = (Publisher, Subscriber)
    return _PROTOCOLS


class _Link:
    """One Redis connection kept up forever: connect, AUTH, SELECT,
    SUBSCRIBE (subscriber) or flush the queue (publisher), PING now and
    then, wait for the loss, back off, again.  Every step has a deadline:
    a Redis that accepts and never answers is as down as one that refuses."""

    log: ClassVar[Logger] = Logger()

    def __init__(self, bus: KegnetBus, *, subscriber: bool) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.ready = False
        self.protocol: Any = None
        self.backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.3)
        self._running = False
        self._connecting: defer.Deferred[Any] | None = None
        self._sleep: defer.Deferred[None] | None = None
        self._ping_call: Any = None
        self._loss_reason: str | None = None
        self._task: defer.Deferred[None] | None = None

    def start(self) -> None:
        self._running = True
        self._task = defer.Deferred.fromCoroutine(self._run())

    async def stop(self) -> None:
        """Cancel a connect or a backoff in progress, close the connection,
        and wait for the loop to end (at most about a second)."""
        self._running = False
        self._cancel_ping()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None and protocol.connected:
            protocol.transport.loseConnection()
            # A peer that never reads would hold a graceful close forever.
            abort = self.bus.reactor.callLater(1.0, _abort, protocol)
            protocol.lost.addBoth(lambda _: abort.cancel() if abort.active() else None)
        if self._task is not None:
            try:
                await self._task
            except Exception:
                self.log.failure("Kegnet: link ended with an error")

    def _endpoint(self) -> Any:
        target = self.bus.target
        reactor = self.bus.reactor
        timeout = self.bus.connect_timeout
        if target.path is not None:
            return UNIXClientEndpoint(reactor, target.path, timeout=timeout)
        endpoint: Any = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
        if target.tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(target.host), endpoint)
        return endpoint

    def _make_protocol(self) -> Any:
        publisher_class, subscriber_class = _protocol_classes()
        bus = self.bus
        if self.subscriber:
            protocol = subscriber_class(charset=None, convertNumbers=False, replyTimeout=None)
            protocol.on_message = bus._received
        else:
            protocol = publisher_class(
                charset="utf-8", convertNumbers=False, replyTimeout=bus.reply_timeout
            )
        # txredisapi binds its timers to the global reactor at import time.
        protocol.callLater = bus.reactor.callLater
        protocol.lost = defer.Deferred()
        return protocol

    async def _command(self, protocol: Any, *args: Any) -> Any:
        """One command with our deadline (txredisapi's replyTimeout spares
        SUBSCRIBE, and the subscriber has none)."""
        d = protocol.execute_command(*args, apply_timeout=False)
        d.addTimeout(self.bus.reply_timeout, self.bus.reactor)
        return await d

    async def _handshake(self, protocol: Any) -> None:
        import txredisapi

        target = self.bus.target
        if target.password is not None:
            if target.username:
                try:
                    await self._command(protocol, "AUTH", target.username, target.password)
                except txredisapi.ResponseError as e:
                    # Redis before 6 knows no users: AUTH takes one argument.
                    if "wrong number of arguments" not in str(e):
                        raise
                    await self._command(protocol, "AUTH", target.password)
            else:
                await self._command(protocol, "AUTH", target.password)
        if target.db:
            await self._command(protocol, "SELECT", target.db)
        if self.subscriber:
            await self._command(protocol, "SUBSCRIBE", self.bus.channel)

    async def _run(self) -> None:
        while self._running:
            protocol = self._make_protocol()
            self._loss_reason = None
            reason = "connection lost"
            try:
                self._connecting = self._endpoint().connect(_OneConnection(protocol))
                try:
                    await self._connecting
                finally:
                    self._connecting = None
                self.protocol = protocol
                if hasattr(protocol.transport, "setTcpKeepAlive"):
                    protocol.transport.setTcpKeepAlive(1)  # notice a silently dead peer
                await self._handshake(protocol)
                if self._running:
                    self._up(protocol)
                    await protocol.lost
                    reason = self._loss_reason or reason
            except defer.CancelledError:
                reason = "stopped" if not self._running else "connect cancelled"
            except defer.TimeoutError:
                reason = f"no answer from Redis within {self.bus.reply_timeout:g} s"
            except Exception as e:
                reason = _reason(e)
            self._down(protocol, reason)
            if not self._running:
                break
            self._sleep = defer.Deferred()
            call = self.bus.reactor.callLater(self.backoff.next_delay(), self._sleep.callback, None)
            try:
                await self._sleep
            except defer.CancelledError:
                if call.active():
                    call.cancel()
                break
            finally:
                self._sleep = None

    def _up(self, protocol: Any) -> None:
        self.ready = True
        self.backoff.reset()
        self.bus.stats.connects += 1
        if self.subscriber:
            self.bus.subscriber = protocol
        else:
            self.bus.publisher = protocol
            self.bus._flush()
        self._schedule_ping(protocol)
        self.bus._link_changed()

    def _down(self, protocol: Any, reason: str) -> None:
        self._cancel_ping()
        if protocol.transport is not None and protocol.connected:
            _abort(protocol)
        self.ready = False
        self.protocol = None
        if self.subscriber:
            self.bus.subscriber = None
        else:
            self.bus.publisher = None
        if self._running:
            self.bus.last_error = reason
        self.bus._link_changed()

    # --- health check --------------------------------------------------------

    def _schedule_ping(self, protocol: Any) -> None:
        if self.bus.health_interval > 0:
            self._ping_call = self.bus.reactor.callLater(
                self.bus.health_interval, self._ping, protocol
            )

    def _cancel_ping(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _ping(self, protocol: Any) -> None:
        """A connection can die without a FIN (Redis host gone, NAT
        forgot us); a subscriber would then wait forever for messages.
        Any answer (even an error from an old Redis) proves it alive."""
        self._ping_call = None
        if protocol is not self.protocol or not self._running:
            return
        import txredisapi

        def alive(_: object) -> None:
            if protocol is self.protocol and self._running:
                self._schedule_ping(protocol)

        def failed(failure: Any) -> None:
            if failure.check(txredisapi.ResponseError):
                alive(None)
                return
            if protocol is self.protocol and protocol.connected:
                self.bus.stats.health_failures += 1
                self._loss_reason = f"no answer to PING within {self.bus.reply_timeout:g} s"
                _abort(protocol)

        try:
            d = protocol.execute_command("PING", apply_timeout=False)
        except Exception:
            return  # the connection is going; the link hears of it
        d.addTimeout(self.bus.reply_timeout, self.bus.reactor)
        d.addCallbacks(alive, failed)


def _abort(protocol: Any) -> None:
    transport = protocol.transport
    if transport is None or not protocol.connected:
        return
    if hasattr(transport, "abortConnection"):
        transport.abortConnection()
    else:
        transport.loseConnection()


# --- a RESP2 reader for the subscriber connection ---------------------------

_MESSAGE_HEAD = b"*3\r\n$7\r\nmessage\r\n"


class _ProtocolError(Exception):
    """Bytes that are not RESP: drop the connection, reconnect, resubscribe."""


def _bulk(buffer: bytes, pos: int) -> tuple[bytes, int] | None:
    """``$N\r\n<N bytes>\r\n`` at ``pos``; None if incomplete."""
    eol = buffer.find(b"\r\n", pos)
    if eol < 0:
        return None
    if buffer[pos : pos + 1] != b"$":
        raise _ProtocolError("expected a bulk string")
    try:
        size = int(buffer[pos + 1 : eol])
    except ValueError:
        raise _ProtocolError("bad bulk length") from None
    start = eol + 2
    if len(buffer) < start + size + 2:
        return None
    return buffer[start : start + size], start + size + 2


def _push_message(buffer: bytes, pos: int) -> tuple[bytes, bytes, int] | None:
    """The channel and payload of a ``message`` push, after its header."""
    channel = _bulk(buffer, pos)
    if channel is None:
        return None
    payload = _bulk(buffer, channel[1])
    if payload is None:
        return None
    return channel[0], payload[0], payload[1]


def _parse_reply(buffer: bytes, pos: int) -> tuple[Any, int] | None:
    """Any RESP2 reply at ``pos`` (the answers to AUTH, SELECT, SUBSCRIBE),
    in txredisapi's shapes; None if incomplete."""
    import txredisapi

    eol = buffer.find(b"\r\n", pos)
    if eol < 0:
        return None
    kind = buffer[pos : pos + 1]
    line = buffer[pos + 1 : eol]
    after = eol + 2
    try:
        if kind == b"+":
            return line.decode("utf-8", "replace"), after
        if kind == b"-":
            text = line.decode("utf-8", "replace")
            return txredisapi.ResponseError(text[4:] if text[:4] == "ERR " else text), after
        if kind == b":":
            return int(line), after
        if kind == b"$":
            if int(line) < 0:
                return None, after
            return _bulk(buffer, pos)  # may raise _ProtocolError
        if kind == b"*":
            count = int(line)
            items: list[Any] = []
            for _ in range(max(count, 0)):
                item = _parse_reply(buffer, after)
                if item is None:
                    return None
                value, after = item
                items.append(value)
            return (items if count >= 0 else None), after
    except (ValueError, _ProtocolError):
        pass
    return _ProtocolError(f"not RESP: {bytes(line[:20])!r}"), after


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # Redis's own refusals (WRONGPASS, NOAUTH) never contain the password.
    return text.splitlines()[0][:120]


__all__ = ["BusStats", "KegnetBus", "RedisTarget", "parse_redis_url"]
