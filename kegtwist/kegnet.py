"""Kegnet over Redis pub/sub, on txredisapi, that never gives up.

txredisapi's own factories have three pitfalls for a daemon that must run
for years (see ``../shared/design/twisted-idioms.md``): a subscriber is not
subscribed again after a reconnect, a failed AUTH or SELECT stops
reconnection for good, and commands wait forever while disconnected.  So
this module uses txredisapi's protocols (the RESP codec and commands) over
connections it manages itself:

* two connections, a publisher and a subscriber, each reconnecting forever
  with backoff and jitter; AUTH and SELECT are sent by us after every
  connect, and a refusal is one more reason to retry later (Redis may be
  restarting with its password not yet configured);
* the subscriber subscribes again after every reconnect;
* :meth:`KegnetBus.publish` never waits: while disconnected, events queue
  up to a bound, the oldest dropped and counted, and flush in order on
  reconnect;
* what arrives is decoded by :mod:`kegtwist.events`: our own echoes are
  dropped, rejects are counted and logged at most once per 10 s per reason,
  and a ``FlowUpdate`` from another origin (a second core on the channel,
  which would record every pour twice) is logged at error level.

The Redis password is never logged: log lines use :meth:`RedisTarget.redacted`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from . import events
from .backoff import Backoff

CONNECT_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
REJECT_LOG_INTERVAL = 10.0
STOP_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, parsed from ``--redis-url``."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: bool = False

    def redacted(self) -> str:
        """The URL for log lines: never the password."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        if self.path is not None:
            return f"unix://{auth}{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisTarget | None:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://...`` (TLS),
    ``unix://[[USER]:PASSWORD@]/PATH[?db=N]``, or ``none`` (None)."""
    if url == "none":
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    query = parse_qs(parts.query)
    try:
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// needs a socket path")
            db = int(query.get("db", ["0"])[0])
            return RedisTarget(path=parts.path, db=db, password=password, username=username)
        db_text = parts.path.lstrip("/") or query.get("db", ["0"])[0]
        db = int(db_text)
        port = parts.port or 6379
    except ValueError:
        # The message never repeats the URL: it may hold a password.
        raise ValueError("bad port or database number in the Redis URL") from None
    if db < 0:
        raise ValueError("the Redis database number must be 0 or more")
    return RedisTarget(
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        password=password,
        username=username,
        tls=parts.scheme == "rediss",
    )


@dataclass
class BusStats(events.KegnetStats):
    published: int = 0
    queued: int = 0
    dropped_queue_full: int = 0
    publish_failed: int = 0
    echoes: int = 0
    handler_errors: int = 0
    foreign_cores: int = 0
    connects: int = 0


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
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.target = target
        self.channel = channel
        self.origin = origin
        self.on_event = on_event
        self.reactor = reactor
        self.queue_limit = queue_limit
        self.core = core
        self.stats = BusStats()
        self.queue: deque[bytes] = deque()
        self.publisher: Any = None  # a ready txredisapi RedisProtocol, or None
        self.subscriber: Any = None
        self.in_flight = 0
        self._links: list[_Link] = []
        self._reject_logged: dict[str, float] = {}
        self._reject_suppressed: dict[str, int] = {}
        self._foreign_origins: set[str | None] = set()
        self._state: str | None = None
        self.last_error = ""

    # --- publishing --------------------------------------------------------

    def publish(self, event: events.Event) -> None:
        """Send now if connected, else queue (bounded); never waits."""
        event = _with_origin(event, self.origin)
        data = events.encode(event)
        if self.publisher is not None and not self.queue and self.in_flight < self.queue_limit:
            self._send(data)
            return
        if len(self.queue) >= self.queue_limit:
            self.queue.popleft()
            self.stats.dropped_queue_full += 1
        self.queue.append(data)
        self.stats.queued += 1

    def _send(self, data: bytes) -> None:
        self.in_flight += 1
        d = self.publisher.publish(self.channel, data)
        d.addCallbacks(self._published, self._publish_failed)

    def _published(self, result: object) -> None:
        self.in_flight -= 1
        self.stats.published += 1

    def _publish_failed(self, failure: Any) -> None:
        # The connection went while the command was out: Kegnet is lossy by
        # design (readings are cumulative), so count it and move on.
        self.in_flight -= 1
        self.stats.publish_failed += 1

    def _flush(self) -> None:
        while self.queue and self.publisher is not None:
            self._send(self.queue.popleft())

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
            self.log.failure("Kegnet event {event} could not be handled", event=result)

    def _log_reject(self, rejected: events.Rejected) -> None:
        now = self.reactor.seconds()
        last = self._reject_logged.get(rejected.reason)
        if last is not None and now - last < REJECT_LOG_INTERVAL:
            self._reject_suppressed[rejected.reason] = (
                self._reject_suppressed.get(rejected.reason, 0) + 1
            )
            return
        self._reject_logged[rejected.reason] = now
        more = self._reject_suppressed.pop(rejected.reason, 0)
        self.log.warn(
            "Kegnet message rejected ({reason}): {detail}{more}",
            reason=rejected.reason,
            detail=rejected.detail,
            more=f" (and {more} more like it in the last {REJECT_LOG_INTERVAL:.0f} s)"
            if more
            else "",
        )

    def _foreign_core(self, origin: str | None) -> None:
        if origin in self._foreign_origins:
            return
        self._foreign_origins.add(origin)
        self.stats.foreign_cores += 1
        self.log.error(
            "Another Kegbot core (origin {origin}) publishes FlowUpdate on channel {channel}: "
            "two cores record every pour twice. Stop one, or give it another --channel",
            origin=origin or "unknown",
            channel=self.channel,
        )

    # --- connections -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._links = [_Link(self, subscriber=False), _Link(self, subscriber=True)]
        for link in self._links:
            link.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # Let the last events (valves closed, pours completed) leave first.
        waited = 0.0
        while self.in_flight and self.publisher is not None and waited < STOP_FLUSH_SECONDS:
            d: defer.Deferred[None] = defer.Deferred()
            self.reactor.callLater(0.05, d.callback, None)
            await d
            waited += 0.05
        for link in self._links:
            await link.stop()
        self._links = []

    def _link_changed(self) -> None:
        up = bool(self._links) and all(link.ready for link in self._links)
        state = "connected" if up else "down"
        if state == self._state:
            return
        first = self._state is None
        self._state = state
        if up:
            self.log.info(
                "Kegnet: connected to Redis at {url}, channel {channel}",
                url=self.target.redacted(),
                channel=self.channel,
            )
        elif self.running:
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
    from dataclasses import replace

    return event if event.origin == origin else replace(event, origin=origin)


class _Link:
    """One Redis connection kept up forever: connect, AUTH, SELECT,
    SUBSCRIBE (subscriber) or flush the queue (publisher), wait for the
    loss, back off, again."""

    log: ClassVar[Logger] = Logger()

    def __init__(self, bus: KegnetBus, *, subscriber: bool) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.ready = False
        self.protocol: Any = None
        self.backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.3)
        self._running = False
        self._sleep: defer.Deferred[None] | None = None
        self._task: defer.Deferred[None] | None = None

    def start(self) -> None:
        self._running = True
        self._task = defer.Deferred.fromCoroutine(self._run())

    async def stop(self) -> None:
        self._running = False
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                pass

    def _endpoint(self) -> Any:
        target = self.bus.target
        reactor = self.bus.reactor
        if target.path is not None:
            return UNIXClientEndpoint(reactor, target.path, timeout=CONNECT_TIMEOUT)
        endpoint: Any = HostnameEndpoint(reactor, target.host, target.port, timeout=CONNECT_TIMEOUT)
        if target.tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(target.host), endpoint)
        return endpoint

    def _make_protocol(self) -> Any:
        import txredisapi

        bus = self.bus
        if self.subscriber:

            class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
                """txredisapi's commands, our reader: txredisapi's line
                parser pauses and resumes the transport (an epoll change and
                a callLater) for every bulk string, which capped a core at
                ~14,000 messages/s; this reader does ~4x that."""

                _buffer = b""

                def dataReceived(self, data: bytes) -> None:
                    buffer = self._buffer + data if self._buffer else data
                    pos = 0
                    end = len(buffer)
                    while pos < end:
                        if buffer.startswith(_MESSAGE_HEAD, pos):
                            try:
                                parsed = _push_message(buffer, pos + len(_MESSAGE_HEAD))
                            except _ProtocolError:
                                self.transport.loseConnection()
                                return
                            if parsed is None:
                                break
                            channel, payload, pos = parsed
                            bus._received(channel, payload)
                            continue
                        reply = _parse_reply(buffer, pos)
                        if reply is None:
                            break
                        value, pos = reply
                        if isinstance(value, _ProtocolError):
                            self.transport.loseConnection()
                            return
                        self.replyReceived(value)
                    self._buffer = buffer[pos:]

            return Subscriber(charset=None, convertNumbers=False, replyTimeout=None)
        return txredisapi.RedisProtocol(
            charset="utf-8", convertNumbers=False, replyTimeout=REPLY_TIMEOUT
        )

    async def _run(self) -> None:
        import txredisapi

        target = self.bus.target
        while self._running:
            protocol = self._make_protocol()
            try:
                await self._endpoint().connect(_OneConnection(protocol))
                self.protocol = protocol
                if hasattr(protocol.transport, "setTcpKeepAlive"):
                    protocol.transport.setTcpKeepAlive(1)  # notice a silently dead peer
                await protocol.whenConnected()
                if target.password is not None:
                    reply = await protocol.auth(target.password, target.username)
                    if isinstance(reply, Exception):
                        raise reply
                if target.db:
                    reply = await protocol.select(target.db)
                    if isinstance(reply, Exception):
                        raise reply
                if self.subscriber:
                    await protocol.subscribe(self.bus.channel)
                lost = protocol.whenDisconnected()
                self._up(protocol)
                await lost
            except (txredisapi.ResponseError, txredisapi.ConnectionError) as e:
                self._down(protocol, _reason(e))
            except Exception as e:
                self._down(protocol, _reason(e))
            else:
                self._down(protocol, "connection lost")
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
        self.bus._link_changed()

    def _down(self, protocol: Any, reason: str) -> None:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        self.ready = False
        self.protocol = None
        if self.subscriber:
            self.bus.subscriber = None
        else:
            self.bus.publisher = None
            # Replies still owed on the old connection never come.
            self.bus.in_flight = 0
        self.bus.last_error = reason
        self.bus._link_changed()


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
