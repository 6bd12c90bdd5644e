"""One Redis connection kept up forever, on txredisapi's public protocols.

txredisapi (``RedisProtocol``, ``SubscriberProtocol``) speaks RESP and runs
the commands; with the ``hiredis`` package installed its ``RedisProtocol``
is ``HiredisProtocol``, whose replies are parsed in C.  Its own factories
do not fit a daemon that must run for years (see ``docs/kegnet.md``,
"Connection behaviour"): a subscriber is not subscribed again after a
reconnect, a refused AUTH or SELECT stops reconnection for good, and
commands wait forever while disconnected.  Twisted's ``ClientService``
does not fit either: with a ``prepareConnection`` that fails (a refused
AUTH), Twisted 26.10 leaves the rejected connection open, one more per
retry, and when such a connection closes, or when ``prepareConnection``
closes it itself, the service's state machine raises ``NoTransition``
("Unhandled Error" in the log, every retry); it also logs every retry at
info level and sets no deadline on ``prepareConnection``.

So :class:`RedisLink` owns the loop, around the protocols, never inside
them: it connects through an endpoint, sends AUTH, SELECT and SUBSCRIBE
with txredisapi's ``auth``, ``select`` and ``subscribe`` (the protocol is
made without password or database, so its ``connectionMade`` sends
nothing), each under a deadline on our reactor; PINGs with ``ping`` every
``health_interval``; waits for ``whenDisconnected``; backs off with
jitter (:class:`kegtwist.backoff.Backoff`); and starts over, forever.
Messages reach the subscriber's ``messageReceived``, the hook txredisapi
documents for it.  A reply that is not RESP (a server that is not Redis)
makes hiredis raise ``InvalidData`` from ``dataReceived``: :class:`_Guard`,
a protocol wrapped around txredisapi's, drops that connection quietly, as
one more reason to retry.

Speed (``bench/daemon_kegnet.py``: a ``--role core`` daemon taking 200,000
MeterUpdate; 2 shared vCPUs, 2026-12-01; 16 runs each, interleaved with
the hand-written RESP reader this module replaced): txredisapi with
hiredis 9.0 us CPU a message against 8.6, 74,000 msg/s against 71,000 (the
machine was busy; in the calmest 6 runs each 100,000 against 102,000);
without hiredis 18,500 msg/s and 43 us.  hiredis's parse is 0.2 us of a
message; the 0.4 us more is txredisapi's per-reply Python
(``tryConvertData``, ``replyReceived``), which only overriding its
``dataReceived`` would avoid.  So ``hiredis`` is a dependency, and no RESP
is parsed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from kegtwist.backoff import Backoff
from kegtwist.bus.redis_url import RedisTarget

STOP_ABORT_SECONDS = 1.0
C_PARSER = txredisapi.RedisProtocol is txredisapi.HiredisProtocol
"""hiredis is installed (a dependency): without it a core reads about a
fifth as many messages per second (``bench/daemon_kegnet.py``)."""


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """txredisapi's subscriber, payloads as bytes (decoded strictly by
    :mod:`kegtwist.protocol.kegnet`, never guessed at here)."""

    def __init__(self, on_message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(charset=None, convertNumbers=False)
        self.on_message = on_message

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.on_message(channel, message)


class _Guard(Protocol):
    """Around a txredisapi protocol: hands it the transport and the bytes,
    and turns ``InvalidData`` (not RESP) into a dropped connection."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.problem: str | None = None

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.inner.dataReceived(data)
        except txredisapi.InvalidData as e:
            if self.problem is None:
                self.problem = f"not a Redis server? ({_reason(e)})"
                _abort(self.inner)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.inner.connectionLost(reason)


class _Once(Factory):
    """Hands out one prepared protocol; quiet (no "Starting factory" lines)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class RedisLink:
    """One Redis connection kept up forever: connect, AUTH, SELECT,
    SUBSCRIBE (with a ``channel``), PING now and then, wait for the loss,
    back off, again.  Every step has a deadline: a Redis that accepts and
    never answers is as down as one that refuses.

    ``on_up(protocol)`` gets the ready txredisapi protocol, ``on_down(reason)``
    a line for the log (never the password), ``on_unhealthy()`` a PING that
    went unanswered."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        target: RedisTarget,
        *,
        reactor: Any,
        on_up: Callable[[Any], None],
        on_down: Callable[[str], None],
        channel: str | None = None,
        on_message: Callable[[bytes, bytes], None] | None = None,
        on_unhealthy: Callable[[], None] = lambda: None,
        reply_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        health_interval: float = 30.0,
    ) -> None:
        if (channel is None) != (on_message is None):
            raise ValueError("a subscriber needs both a channel and on_message")
        self.target = target
        self.reactor = reactor
        self.on_up = on_up
        self.on_down = on_down
        self.channel = channel
        self.on_message = on_message
        self.on_unhealthy = on_unhealthy
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.ready = False
        self.protocol: Any = None  # the txredisapi protocol of the connection, if any
        self.backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.3)
        self._running = False
        self._guard: _Guard | None = None
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
        if protocol is not None and protocol.connected:
            gone = protocol.whenDisconnected()
            protocol.transport.loseConnection()
            # A peer that never reads would hold a graceful close forever.
            abort = self.reactor.callLater(STOP_ABORT_SECONDS, _abort, protocol)
            gone.addBoth(lambda _: abort.cancel() if abort.active() else None)
        if self._task is not None:
            try:
                await self._task
            except Exception:
                self.log.failure("Kegnet: Redis link ended with an error")

    def abort(self, reason: str) -> None:
        """Drop the connection now (it answers no more); the loop retries."""
        protocol = self.protocol
        if protocol is not None and protocol.connected:
            self._loss_reason = self._loss_reason or reason
            _abort(protocol)

    # --- the loop ---------------------------------------------------------

    def _endpoint(self) -> Any:
        target = self.target
        if target.path is not None:
            return UNIXClientEndpoint(self.reactor, target.path, timeout=self.connect_timeout)
        endpoint: Any = HostnameEndpoint(
            self.reactor, target.host, target.port, timeout=self.connect_timeout
        )
        if target.tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(target.host), endpoint)
        return endpoint

    def _new_protocol(self) -> Any:
        if self.on_message is not None:
            return _Subscriber(self.on_message)
        return txredisapi.RedisProtocol(charset="utf-8", convertNumbers=False)

    async def _deadline(self, d: defer.Deferred[Any]) -> Any:
        d.addTimeout(self.reply_timeout, self.reactor)
        return await d

    async def _handshake(self, protocol: Any) -> None:
        target = self.target
        if target.password is not None:
            try:
                await self._deadline(protocol.auth(target.password, target.username))
            except txredisapi.ResponseError as e:
                # Redis before 6 knows no users: AUTH takes one argument.
                if not target.username or "wrong number of arguments" not in str(e):
                    raise
                await self._deadline(protocol.auth(target.password))
        if target.db:
            await self._deadline(protocol.select(target.db))
        if self.channel is not None:
            await self._deadline(protocol.subscribe(self.channel))

    async def _run(self) -> None:
        while self._running:
            protocol = self._new_protocol()
            guard = self._guard = _Guard(protocol)
            lost = protocol.whenDisconnected()
            self._loss_reason = None
            reason = "connection lost"
            try:
                self._connecting = self._endpoint().connect(_Once(guard))
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
                    await lost
                    reason = self._loss_reason or reason
            except defer.CancelledError:
                reason = "stopped" if not self._running else "connect cancelled"
            except defer.TimeoutError:
                reason = f"no answer from Redis within {self.reply_timeout:g} s"
            except Exception as e:
                reason = _reason(e)
            self._down(protocol, guard.problem or reason)
            if not self._running:
                break
            self._sleep = defer.Deferred()
            call = self.reactor.callLater(self.backoff.next_delay(), self._sleep.callback, None)
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
        self._schedule_ping(protocol)
        self.on_up(protocol)

    def _down(self, protocol: Any, reason: str) -> None:
        self._cancel_ping()
        _abort(protocol)
        self.ready = False
        self.protocol = None
        self._guard = None
        self.on_down(reason)

    # --- health check -----------------------------------------------------

    def _schedule_ping(self, protocol: Any) -> None:
        if self.health_interval > 0:
            self._ping_call = self.reactor.callLater(self.health_interval, self._ping, protocol)

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

        def alive(_: object) -> None:
            if protocol is self.protocol and self._running:
                self._schedule_ping(protocol)

        def failed(failure: Any) -> None:
            if failure.check(txredisapi.ResponseError):
                alive(None)
            elif protocol is self.protocol and protocol.connected:
                self.on_unhealthy()
                self.abort(f"no answer to PING within {self.reply_timeout:g} s")

        try:
            d = protocol.ping()
        except txredisapi.ConnectionError:
            return  # the connection is going; the loop hears of it
        d.addTimeout(self.reply_timeout, self.reactor)
        d.addCallbacks(alive, failed)


def _abort(protocol: Any) -> None:
    transport = protocol.transport
    if transport is None or not protocol.connected:
        return
    if hasattr(transport, "abortConnection"):
        transport.abortConnection()
    else:
        transport.loseConnection()


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    # Redis's own refusals (WRONGPASS, NOAUTH) never contain the password.
    return text.splitlines()[0][:120]
