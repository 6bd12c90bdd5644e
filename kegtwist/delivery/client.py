"""The Kegbot Server client (classic REST API, v1.3.0 as it behaves): HTTP only.

What replies mean lives in :mod:`kegtwist.protocol.server_api` (pure); this
module moves the bytes.  Our own ``HTTPClient`` with its own connection pool
(closed on stop), never treq's module-level functions and their global pool;
tests inject another request function (``treq.testing.StubTreq``).  Bodies
are form-encoded: the server ignores JSON bodies.  Every call has a timeout
on the injected clock that covers reading the body too (treq's ``timeout=``
alone does not).  The API key travels in ``X-Kegbot-Api-Key`` and appears in
no log line, exception text or repr.

**The key goes only to the configured origin.**  ``--api-url`` fixes one
origin (scheme, host, port); every request goes to a path under it, and the
key header is attached only to a URL of that origin (:func:`origin`).
Redirects are never followed: treq follows them by default
(``allow_redirects=True`` wraps the agent in a ``RedirectAgent``, which
forwards custom headers such as ours to any host, even from https to http),
so every request passes ``allow_redirects=False``.  A 3xx answer is a
``transient`` :class:`ServerError` naming its ``Location`` (without
user-info, never the key) and saying whether it pointed to another origin,
from https to http, or within the same origin (:func:`redirect_error`): the
owner fixes ``--api-url``.  Refusing even same-origin redirects keeps the
exactly-once rule simple: a drink POST is never turned into a GET or sent
twice by a redirect.

**Replies are capped at 4 MiB** (:mod:`kegtwist.delivery.http_body`): a
larger one is dropped and fails as ``unknown`` with "reply over 4 MiB": tap
sync keeps the tap table it had, and a drink POST's outcome is unknown, so
the drink is looked up before any re-send.

Network failures become ``unreachable`` (the request certainly never left)
or ``unknown`` (it may have reached the server); the kinds are described in
:mod:`kegtwist.protocol.server_api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, _WrapperException
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)

from kegtwist.delivery.http_body import MAX_REPLY_BYTES, ReplyTooLarge, read_capped, size_text
from kegtwist.protocol.server_api import (
    Controller,
    Drink,
    ErrorKind,
    FlowMeter,
    ServerError,
    ServerStatus,
    Tap,
    ThermoLog,
    TokenInfo,
    classify,
    decode_reply,
    object_of,
    objects_of,
    origin,
    parse_controller,
    parse_drink,
    parse_flow_meter,
    parse_tap,
    parse_thermo_log,
    parse_token,
    redirect_error,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_REPLY_BYTES",
    "Controller",
    "Drink",
    "ErrorKind",
    "FlowMeter",
    "KegbotServerClient",
    "ReplyTooLarge",
    "RequestFunction",
    "ServerError",
    "ServerStatus",
    "Tap",
    "ThermoLog",
    "TokenInfo",
    "classify",
    "origin",
    "read_capped",
    "redirect_error",
]

DEFAULT_TIMEOUT = 10.0
RequestFunction = Callable[..., "defer.Deferred[Any]"]
"""treq's ``HTTPClient.request`` (or ``StubTreq.request``): method, URL,
``headers=``, ``data=``, ``allow_redirects=``, ``unbuffered=``."""


# --- network failures ---------------------------------------------------------------


def _wrapped(failure_value: BaseException) -> list[BaseException]:
    """The exceptions a twisted.web wrapper (``ResponseNeverReceived`` ...)
    carries, or none."""
    reasons = getattr(failure_value, "reasons", None)
    if not isinstance(failure_value, _WrapperException) or not isinstance(reasons, list):
        return []
    return [r.value for r in reasons if isinstance(getattr(r, "value", None), BaseException)]


def _network_error(failure_value: BaseException) -> ServerError:
    if isinstance(
        failure_value,
        (
            error.ConnectError,
            error.DNSLookupError,
            error.ConnectingCancelledError,
            RequestNotSent,
        ),
    ):
        # No connection, or the connection refused the request before a
        # byte of it was written: it certainly did not reach the server.
        return ServerError("unreachable", f"cannot connect: {failure_value.__class__.__name__}")
    inner = _wrapped(failure_value)
    if isinstance(failure_value, defer.CancelledError) or any(
        isinstance(e, defer.CancelledError) for e in inner
    ):
        # Cancelled by the caller (a stop) once the request had started to
        # leave: the server may have it.
        return ServerError("unknown", "request cancelled before the answer")
    if isinstance(failure_value, defer.TimeoutError):
        return ServerError("unknown", "no answer in time")
    if isinstance(
        failure_value,
        (ResponseNeverReceived, ResponseFailed, error.ConnectionLost, error.ConnectionDone),
    ):
        return ServerError("unknown", "connection dropped before the answer")
    if inner:
        causes = ", ".join(e.__class__.__name__ for e in inner)
        return ServerError("unknown", f"{failure_value.__class__.__name__} ({causes})")
    return ServerError("unknown", f"{failure_value.__class__.__name__}: {failure_value}")


def _timed_out(result: Any, timeout: float) -> Any:
    """A call cancelled by its timeout fails as a timeout, however the
    cancelled request failed: a plain ``CancelledError`` (what ``addTimeout``
    alone converts) or, once the request has left, a ``ResponseNeverReceived``
    wrapping one.  A connection attempt that never succeeded
    (``ConnectingCancelledError``) stays what it is: certainly not sent."""
    value = result.value if isinstance(result, Failure) else None
    if isinstance(value, defer.CancelledError) or (
        value is not None and any(isinstance(e, defer.CancelledError) for e in _wrapped(value))
    ):
        raise defer.TimeoutError(timeout, "Deferred")
    return result


# --- the client --------------------------------------------------------------------


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per connection attempt


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class KegbotServerClient:
    """Typed calls to the Kegbot Server API."""

    log: ClassVar[Logger] = Logger()

    def __init__(
        self,
        reactor: Any,
        api_url: str,
        api_key: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pool: HTTPConnectionPool | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        request: RequestFunction | None = None,
    ) -> None:
        """``reactor`` times the calls (a ``task.Clock`` in tests);
        ``request`` replaces the HTTP stack (``StubTreq(...).request``).
        Nothing connects before the first call."""
        self.reactor = reactor
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.origin = origin(self.api_url)
        self._api_key = api_key
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.pool = pool if pool is not None else _QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self._send: RequestFunction = request if request is not None else self.http.request

    def __repr__(self) -> str:
        return f"<KegbotServerClient {self.api_url} key={'set' if self._api_key else 'none'}>"

    def close(self) -> defer.Deferred[None]:
        closing: defer.Deferred[None] = self.pool.closeCachedConnections()
        return closing

    # plumbing

    def _headers(self, url: str) -> dict[bytes, list[bytes]]:
        headers = {b"Accept": [b"application/json"]}
        if self._api_key and origin(url) == self.origin:
            headers[b"X-Kegbot-Api-Key"] = [self._api_key.encode()]
        return headers

    def _call(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._request(method, path, form, timeout))

    async def _request(
        self, method: str, path: str, form: dict[str, str] | None, timeout: float | None
    ) -> Any:
        url = self.api_url + path
        started = time.monotonic()

        async def exchange() -> tuple[int, str, bytes]:
            kwargs: dict[str, Any] = {"headers": self._headers(url)}
            if form is not None:
                kwargs["data"] = form  # treq form-encodes a dict
            # Never follow a redirect (the key would go along), never let
            # treq buffer the body: ours is read with a cap.
            response = await self._send(
                method, url, allow_redirects=False, unbuffered=True, **kwargs
            )
            try:
                body = await read_capped(response, self.max_reply_bytes)
            except ReplyTooLarge:
                raise ServerError(
                    "unknown",
                    f"reply over {size_text(self.max_reply_bytes)} (HTTP {response.code}); "
                    "connection dropped",
                    status=response.code,
                ) from None
            header = response.headers.getRawHeaders
            content_type = (header(b"content-type") or [b""])[0].decode("latin-1")
            if 300 <= response.code < 400:
                location = (header(b"location") or [b""])[0].decode("latin-1")
                raise redirect_error(url, response.code, location)
            return response.code, content_type, body

        d = defer.Deferred.fromCoroutine(exchange())
        d.addTimeout(
            timeout if timeout is not None else self.timeout,
            self.reactor,
            onTimeoutCancel=_timed_out,
        )
        try:
            status, content_type, body = await d
        except Exception as e:
            # A timeout is "unknown" even if it hit while connecting: we
            # cannot tell, and the safe answer costs one check.
            raised = e if isinstance(e, ServerError) else _network_error(e)
            if isinstance(e, defer.TimeoutError):
                raised = ServerError("unknown", f"no answer within {timeout or self.timeout:g} s")
            self.log.debug(
                "{method} {path}: {error}", method=method, path=path, error=raised.reason
            )
            raise raised from None
        elapsed = (time.monotonic() - started) * 1000
        self.log.debug(
            "{method} {path}: {status} in {ms:.0f} ms",
            method=method,
            path=path,
            status=status,
            ms=elapsed,
        )
        return decode_reply(status, content_type, body)

    # API

    async def version(self) -> str | None:
        doc = await self._call("GET", "version")
        obj = doc.get("object")
        value = obj.get("server_version") if isinstance(obj, dict) else None
        return value if isinstance(value, str) else None

    async def status(self) -> ServerStatus:
        doc = await self._call("GET", "status")
        obj: dict[str, Any] = doc["object"] if isinstance(doc.get("object"), dict) else {}
        site: dict[str, Any] = obj["site_info"] if isinstance(obj.get("site_info"), dict) else {}
        taps = objects_of({"objects": obj.get("taps", [])}, parse_tap)
        version = site.get("server_version")
        return ServerStatus(version if isinstance(version, str) else None, taps)

    async def taps(self) -> list[Tap]:
        return objects_of(await self._call("GET", "taps"), parse_tap)

    async def record_drink(
        self,
        meter_name: str,
        ticks: int,
        *,
        username: str | None = None,
        record_date: datetime,
        duration: int = 0,
        volume_ml: float | None = None,
        shout: str | None = None,
    ) -> Drink:
        """Record a pour at ``record_date`` (aware; sent with microseconds)."""
        if record_date.tzinfo is None:
            raise ValueError(
                "record_date must carry a UTC offset (the server answers 500 otherwise)"
            )
        if ticks < 0 or duration < 0:
            raise ValueError("ticks and duration must not be negative")
        form = {
            "ticks": str(int(ticks)),
            "duration": str(int(duration)),
            "record_date": record_date.isoformat(),
        }
        if username:
            form["username"] = username
        if volume_ml is not None:
            form["volume_ml"] = repr(float(volume_ml))
        if shout:
            form["shout"] = shout
        doc = await self._call("POST", f"taps/{quote(meter_name, safe='')}", form)
        drink: Drink = object_of(doc, parse_drink)
        return drink

    async def record_temperature(self, sensor_name: str, temp_c: float) -> ThermoLog:
        doc = await self._call(
            "POST", f"thermo-sensors/{quote(sensor_name, safe='')}", {"temp_c": repr(float(temp_c))}
        )
        log: ThermoLog = object_of(doc, parse_thermo_log)
        return log

    async def lookup_token(
        self, auth_device: str, token_value: str, *, timeout: float = 2.0
    ) -> TokenInfo:
        path = f"auth-tokens/{quote(auth_device, safe='')}/{quote(token_value, safe='')}"
        token: TokenInfo = object_of(await self._call("GET", path, timeout=timeout), parse_token)
        return token

    async def controllers(self) -> list[Controller]:
        return objects_of(await self._call("GET", "controllers"), parse_controller)

    async def create_controller(
        self, name: str, model_name: str | None = None, serial_number: str | None = None
    ) -> Controller:
        form = {"name": name}
        if model_name:
            form["model_name"] = model_name
        if serial_number:
            form["serial_number"] = serial_number
        controller: Controller = object_of(
            await self._call("POST", "controllers", form), parse_controller
        )
        return controller

    async def flow_meters(self) -> list[FlowMeter]:
        return objects_of(await self._call("GET", "flow-meters"), parse_flow_meter)

    async def create_flow_meter(
        self, controller_id: int, port_name: str, ticks_per_ml: float
    ) -> FlowMeter:
        form = {
            "controller": str(controller_id),
            "port_name": port_name,
            "ticks_per_ml": repr(float(ticks_per_ml)),
        }
        meter: FlowMeter = object_of(
            await self._call("POST", "flow-meters", form), parse_flow_meter
        )
        return meter

    async def recent_drinks(self) -> list[Drink]:
        """The newest 100 drinks, newest id first."""
        return objects_of(await self._call("GET", "drinks"), parse_drink)

    async def drink(self, drink_id: int) -> Drink:
        drink: Drink = object_of(await self._call("GET", f"drinks/{int(drink_id)}"), parse_drink)
        return drink
