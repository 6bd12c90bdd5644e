"""The status page over HTTP: read-only, bounded, and never in the way.

``StatusService(endpoint, document, metrics, hub, reactor)`` listens on a
Twisted endpoint string (``tcp:8010:interface=127.0.0.1``) when it starts
(never in the constructor).  If it cannot (the port is taken), it logs one
line and the daemon runs on without it: pours matter more than the page.

Routes (GET and HEAD only; anything else is 405 with ``Allow: GET, HEAD``):

=================  ============================================================
``/``              the page (``static/index.html``)
``/static/NAME``   ``index.html``, ``app.js``, ``style.css`` of this package
``/status.json``   the document, plus ``last_event_id``: the events after it
                   are what changed since (``/events?after=ID``)
``/events``        Server-Sent Events (``id:``, ``event:``, ``data:``); a
                   client that reconnects with ``Last-Event-ID`` (or
                   ``?after=ID``) gets exactly the events it missed, or one
                   ``reload`` event if the ring no longer holds them; a
                   comment every 15 s while at least one client is connected
                   (no timer at all while none is)
``/metrics``       Prometheus text format
=================  ============================================================

Bounds: request line 2 KiB (414), header lines 8 KiB in all and at most 40
of them (431), request bodies are never kept and at most 64 KiB (413), 64
connections at once, idle connections closed after 30 s, at most 20 event
streams (the 21st gets 503).  A slow event client is paused, not buffered
for: it catches up from the hub's ring when it reads again (or reloads);
one that reads nothing for 60 s is dropped.
No access log, no timer of twisted.web's own (its 1 s log-date timer is not
started).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource
from zope.interface import implementer

from kegtwist.ratelimit import RateLimiter
from kegtwist.status.endpoint import DEFAULT_ENDPOINT, check_endpoint
from kegtwist.status.hub import Event, EventHub
from kegtwist.status.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

MAX_REQUEST_LINE = 2048
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 40
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_EVENT_CLIENTS = 20
HEARTBEAT_SECONDS = 15.0
STALLED_SECONDS = 60.0
"""An event client that has read nothing for this long is dropped."""
IDLE_TIMEOUT = 30.0
RETRY_MILLIS = 3000
NOT_DONE_YET = 1
"""twisted.web.server.NOT_DONE_YET (the same value), without importing that module."""
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
STATIC_DIR = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Content-Security-Policy": (
        b"default-src 'self'; img-src 'self' data:; base-uri 'none'; "
        b"form-action 'none'; frame-ancestors 'none'"
    ),
}

log = Logger(namespace="kegtwist.status")


# --- HTTP with bounds -----------------------------------------------------------

_CLOSED = Failure(ConnectionDone("closed"))


class _Channel(http.HTTPChannel):
    """twisted.web's channel with tighter limits and proper status codes."""

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_REQUEST_LINE + MAX_HEADER_BYTES
    MAX_LENGTH = MAX_HEADER_BYTES  # any one line
    factory: _Site
    _refused = False
    _header_bytes = 0
    _header_count = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        self.factory.channels.discard(self)
        super().connectionLost(reason)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize == 0:  # a request line (or the stray empty one)
            self._header_bytes = self._header_count = 0
            if len(line) > MAX_REQUEST_LINE:
                self.refuse(414, b"URI Too Long")
                return
        else:
            self._header_bytes += len(line)
            if line and line[:1] not in b" \t":
                self._header_count += 1
            if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
                self.refuse(431, b"Request Header Fields Too Large")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:
            self.refuse(414, b"URI Too Long")
        else:
            self.refuse(431, b"Request Header Fields Too Large")

    def refuse(self, code: int, phrase: bytes) -> None:
        """Answer ``code`` and close, before any request object answers."""
        if self._refused:
            return
        self._refused = True
        body = phrase + b"\n"
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        self.loseConnection()


class _Request(http.Request):
    """One request: routed to the root resource, its body thrown away.

    twisted.web.http's Request, not twisted.web.server's: the server module
    brings Perspective Broker, XML and template machinery along (2.6 MiB of
    resident memory measured on top of the daemon), none of which a
    read-only page needs."""

    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        self.content = _Discard()
        if length is not None and length > MAX_BODY:
            self._too_large()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            self._too_large()

    def _too_large(self) -> None:
        channel = self.channel
        if isinstance(channel, _Channel):
            channel.refuse(413, b"Content Too Large")

    def process(self) -> None:
        if getattr(self.channel, "_refused", False):
            return  # already answered (413) and closing
        self.setHeader(b"Date", http.datetimeToString())
        site = self.channel.factory
        try:
            body = site.root.render(self)
        except Exception:
            site.failed("request", Failure())
            body = _text(self, 500, "Internal error: see the daemon's log")
        if isinstance(body, int):  # NOT_DONE_YET: the resource finishes it
            return
        self.write(body)
        self.finish()


class _Discard(io.BytesIO):
    """An empty request body that stays empty."""

    def write(self, data: Any) -> int:
        return len(data)


class _Site(http.HTTPFactory):
    """The connections: at most MAX_CONNECTIONS, no access log, no timer."""

    noisy = False
    protocol = _Channel  # type: ignore[assignment]

    def __init__(
        self, root: resource.Resource, clock: IReactorTime, failed: Callable[[str, Failure], None]
    ) -> None:
        super().__init__(timeout=IDLE_TIMEOUT, reactor=clock)
        self.root = root
        self.failed = failed
        self.channels: set[_Channel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= MAX_CONNECTIONS:
            return None  # refused: the connection is closed at once
        channel: Any = super().buildProtocol(addr)
        channel.requestFactory = _Request
        return channel

    def logPrefix(self) -> str:
        return "Status page"

    def startFactory(self) -> None:
        """No access log and no 1 s log-date timer (twisted.web's default)."""

    def stopFactory(self) -> None:
        pass

    def log(self, request: Any) -> None:
        pass


# --- responses --------------------------------------------------------------------


def _respond(request: Any, code: int, body: bytes, content_type: str, **headers: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Server", b"kegtwist")
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(b"Cache-Control", b"no-store")
    for name, secure in SECURITY_HEADERS.items():
        request.setHeader(name, secure)
    for key, value in headers.items():
        request.setHeader(key.replace("_", "-").encode(), value.encode())
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def _text(request: Any, code: int, message: str, **headers: str) -> bytes:
    return _respond(request, code, message.encode() + b"\n", "text/plain; charset=utf-8", **headers)


class _Root(resource.Resource):
    """Every request, whatever its path: one place decides."""

    isLeaf = True

    def __init__(self, service: StatusService) -> None:
        super().__init__()
        self.service = service
        self._static: dict[str, bytes] = {}

    def render(self, request: Any) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            return _text(
                request, 405, "Only GET and HEAD: this page changes nothing", Allow="GET, HEAD"
            )
        path = request.path
        if path == b"/":
            return self._file(request, "index.html")
        if path == b"/status.json":
            return self.service.render_document(request)
        if path == b"/events":
            return self.service.events.render(request)
        if path == b"/metrics":
            return self.service.render_metrics(request)
        if path.startswith(b"/static/"):
            name = path[len(b"/static/") :].decode("ascii", "replace")
            if name in STATIC:
                return self._file(request, name)
        return _text(request, 404, "Not found")

    def _file(self, request: Any, name: str) -> bytes:
        body = self._static.get(name)
        if body is None:
            body = (STATIC_DIR / name).read_bytes()
            self._static[name] = body
        return _respond(request, 200, body, STATIC[name])


# --- the event stream -----------------------------------------------------------


def format_event(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.json}\n\n".encode()


def _reload(last_id: int) -> bytes:
    return (
        f"id: {last_id}\nevent: reload\n"
        'data: {"reason":"events were missed: reload /status.json"}\n\n'
    ).encode()


@implementer(IPushProducer)
class _Client:
    """One event stream; paused while its connection cannot take more."""

    def __init__(self, stream: _EventStream, request: Any, last_id: int) -> None:
        self.stream = stream
        self.request = request
        self.last_id = last_id
        self.paused = False
        self.paused_at = 0.0
        self.closed = False

    def send(self, event: Event, data: bytes) -> None:
        """``data`` is ``event`` formatted (once for every client)."""
        if self.closed or self.paused or event.id <= self.last_id:
            return
        if event.id != self.last_id + 1:
            self.catch_up()  # it was paused and missed some
            return
        self.request.write(data)
        self.last_id = event.id

    def catch_up(self) -> None:
        missed = self.stream.hub.since(self.last_id)
        if missed is None:
            self.last_id = self.stream.hub.last_id
            self.request.write(_reload(self.last_id))
            return
        if missed:
            self.request.write(b"".join(format_event(e) for e in missed))
            self.last_id = missed[-1].id

    def comment(self, text: bytes) -> None:
        if not self.closed and not self.paused:
            self.request.write(b": " + text + b"\n\n")

    # IPushProducer: the HTTP channel says when the client cannot keep up.

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.paused_at = self.stream.clock.seconds()

    def resumeProducing(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.catch_up()

    def stopProducing(self) -> None:
        self.stream.forget(self)

    def abort(self) -> None:
        """Drop a client that has not read anything for too long."""
        self.stream.forget(self)
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def finish(self) -> None:
        """End the stream from our side (the service stops)."""
        if self.closed:
            return
        self.stream.forget(self)
        try:
            self.request.unregisterProducer()
            self.request.finish()
        except Exception:
            pass


class _EventStream:
    """The ``/events`` clients, the hub subscription and the heartbeat,
    the last two only while at least one client is connected."""

    def __init__(
        self,
        hub: EventHub,
        clock: IReactorTime,
        *,
        max_clients: int = MAX_EVENT_CLIENTS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.max_clients = max_clients
        self.heartbeat_seconds = heartbeat_seconds
        self.clients: set[_Client] = set()
        self.refused = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._heartbeat: LoopingCall | None = None

    def render(self, request: Any) -> bytes | int:
        if request.method == b"HEAD":
            return _respond(request, 200, b"", "text/event-stream; charset=utf-8")
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            return _text(
                request,
                503,
                f"At most {self.max_clients} event streams at once; try again later",
                Retry_After="30",
            )
        start = self._start_id(request)
        request.setResponseCode(200)
        request.setHeader(b"Server", b"kegtwist")
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        client = _Client(self, request, self.hub.last_id if start is None else start)
        self.clients.add(client)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.forget(client))
        request.write(f"retry: {RETRY_MILLIS}\n\n".encode())
        if start is not None:
            client.catch_up()
        if len(self.clients) == 1:
            self._first_client()
        return NOT_DONE_YET

    def _start_id(self, request: Any) -> int | None:
        """Where the client left off: ``Last-Event-ID``, else ``?after=``."""
        header = request.getHeader(b"last-event-id")
        if header is not None and header.strip().isdigit():
            return int(header.strip())
        after = parse_qs(request.uri.partition(b"?")[2]).get(b"after")
        if after and after[0].isdigit():
            return int(after[0])
        return None

    def _first_client(self) -> None:
        self._unsubscribe = self.hub.subscribe(self._broadcast)
        heartbeat = LoopingCall(self._beat)
        heartbeat.clock = self.clock
        heartbeat.start(self.heartbeat_seconds, now=False)
        self._heartbeat = heartbeat

    def forget(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        if not self.clients:
            self._quiet()

    def _quiet(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

    def _broadcast(self, event: Event) -> None:
        data = format_event(event)
        for client in list(self.clients):
            try:
                client.send(event, data)
            except Exception:
                client.finish()

    def _beat(self) -> None:
        now = self.clock.seconds()
        for client in list(self.clients):
            try:
                if client.paused and now - client.paused_at >= STALLED_SECONDS:
                    client.abort()  # it reads nothing: its slot is for someone else
                else:
                    client.comment(b"keepalive")
            except Exception:
                client.finish()

    def close(self) -> None:
        for client in list(self.clients):
            client.finish()
        self._quiet()


# --- the service ---------------------------------------------------------------


class StatusService(Service):
    """The status page, its JSON, its event stream and its metrics."""

    log: ClassVar[Logger] = log
    name = "status"

    def __init__(
        self,
        endpoint: str,
        document: Callable[[], dict[str, Any]],
        metrics: Callable[[], str],
        hub: EventHub,
        reactor: Any,
        *,
        clock: IReactorTime | None = None,
        max_event_clients: int = MAX_EVENT_CLIENTS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.endpoint = endpoint
        self.document = document
        self.metrics = metrics
        self.hub = hub
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.events = _EventStream(
            hub, self.clock, max_clients=max_event_clients, heartbeat_seconds=heartbeat_seconds
        )
        self.site = _Site(_Root(self), self.clock, self._failed)
        self.port: IListeningPort | None = None
        self.listen_error: str | None = None
        self._listening: defer.Deferred[Any] | None = None
        self._log_limit = RateLimiter(interval=600.0)

    # lifecycle

    def startService(self) -> None:
        super().startService()
        self.listen_error = None
        try:
            from twisted.internet.endpoints import serverFromString

            from kegtwist.listen import localhost_by_default

            endpoint = serverFromString(self.reactor, localhost_by_default(self.endpoint))
            listening: defer.Deferred[Any] = endpoint.listen(self.site)
        except Exception as e:
            listening = defer.fail(e)
        self._listening = listening
        listening.addCallbacks(self._listened, self._cannot_listen)

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        if not self.running:
            port.stopListening()
            return
        self.port = port
        self.log.info("Status page at {url}", url=self.url or self.endpoint)

    def _cannot_listen(self, failure: Failure) -> None:
        self._listening = None
        reason = failure.getErrorMessage() or type(failure.value).__name__
        if "Address already in use" in reason or "EADDRINUSE" in reason:
            reason = "the address is in use by another program"
        self.listen_error = reason
        self.log.warn(
            "Status page: cannot listen on {endpoint} ({reason}); the daemon runs on without it",
            endpoint=self.endpoint,
            reason=reason,
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.events.close()
        for channel in list(self.site.channels):
            transport = channel.transport
            if transport is not None:
                transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT/`` once listening on TCP."""
        if self.port is None:
            return None
        host = self.port.getHost()
        address = getattr(host, "host", None)
        port = getattr(host, "port", None)
        if address is None or port is None:
            return None
        if ":" in address:
            address = f"[{address}]"
        return f"http://{address}:{port}/"

    # routes

    def render_document(self, request: Any) -> bytes:
        last_id = self.hub.last_id  # before reading: what follows is in the stream
        try:
            doc = dict(self.document())
        except Exception as e:
            self._failed("document", e)
            failed = {"errors": [{"part": "document", "kind": "failed", "error": str(e)}]}
            return _respond(request, 500, json.dumps(failed).encode(), "application/json")
        doc["last_event_id"] = last_id
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        return _respond(request, 200, body, "application/json")

    def render_metrics(self, request: Any) -> bytes:
        try:
            text = self.metrics()
        except Exception as e:
            self._failed("metrics", e)
            return _text(request, 500, "metrics failed: see the daemon's log")
        return _respond(request, 200, text.encode(), METRICS_CONTENT_TYPE)

    def _failed(self, what: str, error: Exception | Failure) -> None:
        if self._log_limit.allow(what, time.monotonic()):
            failure = error if isinstance(error, Failure) else Failure(error)
            self.log.failure("Status page: the {what} failed", failure, what=what)


__all__ = [
    "DEFAULT_ENDPOINT",
    "StatusService",
    "check_endpoint",
    "format_event",
]
