"""The Kegbot Server client (classic REST API, v1.3.0 as it behaves).

Our own ``HTTPClient`` with its own connection pool (closed on stop), never
treq's module-level functions and their global pool.  Bodies are
form-encoded: the server ignores JSON bodies.  Every call has a timeout
that covers reading the body too (treq's ``timeout=`` alone does not).
The API key travels in ``X-Kegbot-Api-Key`` and appears in no log line,
exception text or repr.

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

**Replies are capped at 4 MiB** (:data:`MAX_REPLY_BYTES`).  The body is
read by our own bounded protocol (treq's buffering is off:
``unbuffered=True``); a reply that declares or sends more is dropped at
once (the connection closed, nothing more buffered) and fails as
``unknown`` with "reply over 4 MiB": tap sync keeps the tap table it had,
and a drink POST's outcome is unknown, so the drink is looked up before any
re-send.

Every failure is a :class:`ServerError` whose ``kind`` says what a caller
may do about it:

``unreachable``
    The request certainly did not reach the server (connection refused, DNS
    failure, no route).  Safe to send again.
``unknown``
    It may have reached the server but no answer came (timeout after
    connecting, connection dropped).  A drink must not simply be re-sent.
``bad_key``
    401: the key is missing, unknown, inactive or not a staff user's.
``permanent``
    The server refused this request for good: 400 (bad field, no keg on the
    tap), 404 (unknown or inactive meter, unknown token), 405, and the 500s
    v1.3.0 raises for an unknown username (``unknown_user``) or negative
    values.
``transient``
    Any other 5xx, JSON or HTML (a proxy's 502), "Setup required", a 3xx
    (redirects are not followed), and a 2xx whose body is not the JSON
    expected.  Retry later.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urljoin, urlsplit

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, _WrapperException
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

ErrorKind = Literal["unreachable", "unknown", "transient", "bad_key", "permanent"]
DEFAULT_TIMEOUT = 10.0
MAX_REPLY_BYTES = 4 * 1024 * 1024
"""No reply body is read past this; real replies are far smaller."""


class ServerError(Exception):
    """A call that did not succeed, classified (see the module docstring)."""

    def __init__(
        self,
        kind: ErrorKind,
        reason: str,
        *,
        status: int | None = None,
        code: str | None = None,
        unknown_user: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind: ErrorKind = kind
        self.reason = reason
        self.status = status
        self.code = code
        self.unknown_user = unknown_user


@dataclass(frozen=True, slots=True)
class Tap:
    id: int
    name: str
    meter_name: str
    ml_per_tick: float
    relay_name: str | None
    current_keg_id: int | None


@dataclass(frozen=True, slots=True)
class Drink:
    id: int
    ticks: int
    volume_ml: float
    time: datetime
    username: str | None  # None for guest
    keg_id: int | None
    duration: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    auth_device: str
    token_value: str
    username: str | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class Controller:
    id: int
    name: str
    model_name: str | None
    serial_number: str | None


@dataclass(frozen=True, slots=True)
class FlowMeter:
    id: int
    name: str
    port_name: str
    controller_id: int | None
    ticks_per_ml: float


@dataclass(frozen=True, slots=True)
class ThermoLog:
    id: int
    sensor_id: int | None
    temperature_c: float
    time: datetime | None


@dataclass(frozen=True, slots=True)
class ServerStatus:
    server_version: str | None
    taps: list[Tap]


# --- parsing (defensive: optional keys may be missing) -----------------------


class _Shape(ValueError):
    pass


def _get(obj: Any, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise _Shape(f"expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise _Shape(f"missing {key!r}")
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _Shape(f"{key!r} is not a number")
    if not isinstance(value, kind):
        raise _Shape(f"{key!r} has the wrong type")
    return value


def _number(obj: Any, key: str, optional: bool = False) -> float | None:
    value = _get(obj, key, (int, float), optional)
    return None if value is None else float(value)


def _datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _Shape("expected a date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Shape(f"bad date-time {value!r}") from None
    if parsed.tzinfo is None:
        raise _Shape(f"date-time without offset {value!r}")
    return parsed


def parse_tap(obj: Any) -> Tap:
    relay = _get(obj, "relay_name", str, optional=True)
    return Tap(
        id=_get(obj, "id", int),
        name=_get(obj, "name", str, optional=True) or "",
        meter_name=_get(obj, "meter_name", str),
        ml_per_tick=_number(obj, "ml_per_tick", optional=True) or 0.0,
        relay_name=relay or None,
        current_keg_id=_get(obj, "current_keg_id", int, optional=True),
    )


def parse_drink(obj: Any) -> Drink:
    user = obj.get("user") if isinstance(obj, dict) else None
    username = user.get("username") if isinstance(user, dict) else None
    if username is None:
        user_id = obj.get("user_id") if isinstance(obj, dict) else None
        username = user_id if isinstance(user_id, str) else None
    if username == "guest":
        username = None
    return Drink(
        id=_get(obj, "id", int),
        ticks=_get(obj, "ticks", int),
        volume_ml=_number(obj, "volume_ml", optional=True) or 0.0,
        time=_datetime(_get(obj, "time", str)),
        username=username,
        keg_id=_get(obj, "keg_id", int, optional=True),
        duration=_get(obj, "duration", int, optional=True) or 0,
    )


def parse_token(obj: Any) -> TokenInfo:
    return TokenInfo(
        auth_device=_get(obj, "auth_device", str),
        token_value=_get(obj, "token_value", str),
        username=_get(obj, "username", str, optional=True) or None,
        enabled=bool(_get(obj, "enabled", bool, optional=True)),
    )


def parse_controller(obj: Any) -> Controller:
    return Controller(
        id=_get(obj, "id", int),
        name=_get(obj, "name", str),
        model_name=_get(obj, "model_name", str, optional=True),
        serial_number=_get(obj, "serial_number", str, optional=True),
    )


def parse_flow_meter(obj: Any) -> FlowMeter:
    controller = obj.get("controller") if isinstance(obj, dict) else None
    controller_id = controller.get("id") if isinstance(controller, dict) else None
    return FlowMeter(
        id=_get(obj, "id", int),
        name=_get(obj, "name", str),
        port_name=_get(obj, "port_name", str),
        controller_id=controller_id if isinstance(controller_id, int) else None,
        ticks_per_ml=_number(obj, "ticks_per_ml", optional=True) or 0.0,
    )


def parse_thermo_log(obj: Any) -> ThermoLog:
    when = obj.get("time") if isinstance(obj, dict) else None
    return ThermoLog(
        id=_get(obj, "id", int),
        sensor_id=_get(obj, "sensor_id", int, optional=True),
        temperature_c=_number(obj, "temperature_c") or 0.0,
        time=_datetime(when) if when is not None else None,
    )


# --- errors -----------------------------------------------------------------------


def _flatten(message: Any) -> str:
    """``error.message`` is a string or {field: [messages]}."""
    if isinstance(message, dict):
        parts = []
        for field, problems in message.items():
            text = (
                "; ".join(str(p) for p in problems) if isinstance(problems, list) else str(problems)
            )
            parts.append(f"{field}: {text}")
        return "; ".join(parts)
    return str(message)


def classify(status: int, content_type: str, body: bytes) -> ServerError:
    """Turn a non-200 reply into a ServerError of the right kind."""
    code: str | None = None
    message = f"HTTP {status} ({content_type or 'no content type'})"
    if "json" in content_type:
        try:
            doc = json.loads(body)
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            if isinstance(err, dict):
                code = err.get("code") if isinstance(err.get("code"), str) else None
                if err.get("message") is not None:
                    message = _flatten(err["message"])
        except ValueError:
            pass
    if status == 401:
        return ServerError(
            "bad_key", f"{code or 'unauthorized'}: {message}", status=status, code=code
        )
    if status in (400, 404, 405):
        if "Setup required" in message or "Upgrade required" in message:
            return ServerError("transient", message, status=status, code=code)
        return ServerError("permanent", message, status=status, code=code)
    if status == 500 and code == "ServerError":
        if "User matching query does not exist" in message:
            return ServerError("permanent", message, status=status, code=code, unknown_user=True)
        if "CHECK constraint failed" in message:
            return ServerError("permanent", message, status=status, code=code)
    if 400 <= status < 500:
        return ServerError("permanent", message, status=status, code=code)
    return ServerError("transient", message, status=status, code=code)


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


# --- where the key may go, and how much may come back ----------------------------

Origin = tuple[str, str, int | None]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> Origin:
    """(scheme, host, port) of ``url``, the port made explicit."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "", "", None  # no origin: matches none but another unparsable URL
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _shown(url: str) -> str:
    """A URL fit for a log line: no user-info, printable, at most 200 characters."""
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            url = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    except ValueError:
        pass
    text = "".join(c if c.isprintable() else "?" for c in url)
    return text if len(text) <= 200 else text[:200] + "..."


def redirect_error(request_url: str, status: int, location: str | None) -> ServerError:
    """The answer to a 3xx: never followed (the module docstring says why),
    and the reason says where it pointed so the owner can fix ``--api-url``.

    From https to http, to another origin, or within the same one: all
    refused; only the wording differs."""
    if not location:
        reason = f"HTTP {status} without a Location (redirects are not followed)"
        return ServerError("transient", reason, status=status)
    try:
        target = urljoin(request_url, location.strip())
    except ValueError:  # not even a URL: refused all the same
        target = location
    mine, theirs = origin(request_url), origin(target)
    where = _shown(target)
    if mine[0] == "https" and theirs[0] != "https":
        why = "from https to http: the API key never leaves https"
    elif theirs != mine:
        scheme, host, port = mine
        why = f"to another origin: the API key goes only to {scheme}://{host}:{port}"
    else:
        why = "within the same server, but redirects are not followed"
    return ServerError(
        "transient",
        f"redirect refused: HTTP {status} to {where} ({why}); set --api-url to the "
        "address the Kegbot Server answers on",
        status=status,
    )


class ReplyTooLarge(Exception):
    """A reply body over the cap (the connection is dropped)."""


class _CappedBody(Protocol):
    """Collects a reply body of at most ``limit`` bytes.

    Past the limit (or when the reply declares more) it drops the
    connection and fails with :class:`ReplyTooLarge`; it never holds more
    than ``limit`` bytes.  Cancelling (the call's timeout) drops the
    connection too, so a slow body stops arriving."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit = limit
        self.declared = declared
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self._drop())

    def connectionMade(self) -> None:
        if self.declared is not None and self.declared > self.limit:
            self._overflow()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._overflow()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)
        self.chunks = []

    def _overflow(self) -> None:
        self.chunks = []
        self._drop()
        if not self.done.called:
            self.done.errback(ReplyTooLarge())

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def read_capped(response: IResponse, limit: int = MAX_REPLY_BYTES) -> defer.Deferred[bytes]:
    """The body of ``response``, or :class:`ReplyTooLarge` past ``limit`` bytes."""
    length = response.length
    collector = _CappedBody(limit, None if length is UNKNOWN_LENGTH else int(length))
    response.deliverBody(collector)
    return collector.done


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


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
    ) -> None:
        self.reactor = reactor
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.origin = origin(self.api_url)
        self._api_key = api_key
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self.pool = pool if pool is not None else _QuietPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

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
            response = await self.http.request(
                method, url, allow_redirects=False, unbuffered=True, **kwargs
            )
            try:
                body = await read_capped(response, self.max_reply_bytes)
            except ReplyTooLarge:
                raise ServerError(
                    "unknown",
                    f"reply over {_size(self.max_reply_bytes)} (HTTP {response.code}); "
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
        d.addTimeout(timeout if timeout is not None else self.timeout, self.reactor)
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
        if status != 200:
            raise classify(status, content_type, body)
        try:
            doc = json.loads(body)
        except ValueError:
            raise ServerError(
                "transient", f"unexpected reply: not JSON ({content_type})", status=status
            ) from None
        if not isinstance(doc, dict):
            raise ServerError("transient", "unexpected reply: not a JSON object", status=status)
        return doc

    @staticmethod
    def _object(doc: Any, parse: Any) -> Any:
        try:
            return parse(doc["object"])
        except (KeyError, TypeError, _Shape) as e:
            raise ServerError("transient", f"unexpected reply: {e}") from None

    @staticmethod
    def _objects(doc: Any, parse: Any) -> list[Any]:
        try:
            items = doc["objects"]
            if not isinstance(items, list):
                raise _Shape("'objects' is not a list")
            return [parse(item) for item in items]
        except (KeyError, TypeError, _Shape) as e:
            raise ServerError("transient", f"unexpected reply: {e}") from None

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
        taps = self._objects({"objects": obj.get("taps", [])}, parse_tap)
        version = site.get("server_version")
        return ServerStatus(version if isinstance(version, str) else None, taps)

    async def taps(self) -> list[Tap]:
        return self._objects(await self._call("GET", "taps"), parse_tap)

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
        drink: Drink = self._object(doc, parse_drink)
        return drink

    async def record_temperature(self, sensor_name: str, temp_c: float) -> ThermoLog:
        doc = await self._call(
            "POST", f"thermo-sensors/{quote(sensor_name, safe='')}", {"temp_c": repr(float(temp_c))}
        )
        log: ThermoLog = self._object(doc, parse_thermo_log)
        return log

    async def lookup_token(
        self, auth_device: str, token_value: str, *, timeout: float = 2.0
    ) -> TokenInfo:
        path = f"auth-tokens/{quote(auth_device, safe='')}/{quote(token_value, safe='')}"
        token: TokenInfo = self._object(await self._call("GET", path, timeout=timeout), parse_token)
        return token

    async def controllers(self) -> list[Controller]:
        return self._objects(await self._call("GET", "controllers"), parse_controller)

    async def create_controller(
        self, name: str, model_name: str | None = None, serial_number: str | None = None
    ) -> Controller:
        form = {"name": name}
        if model_name:
            form["model_name"] = model_name
        if serial_number:
            form["serial_number"] = serial_number
        controller: Controller = self._object(
            await self._call("POST", "controllers", form), parse_controller
        )
        return controller

    async def flow_meters(self) -> list[FlowMeter]:
        return self._objects(await self._call("GET", "flow-meters"), parse_flow_meter)

    async def create_flow_meter(
        self, controller_id: int, port_name: str, ticks_per_ml: float
    ) -> FlowMeter:
        form = {
            "controller": str(controller_id),
            "port_name": port_name,
            "ticks_per_ml": repr(float(ticks_per_ml)),
        }
        meter: FlowMeter = self._object(
            await self._call("POST", "flow-meters", form), parse_flow_meter
        )
        return meter

    async def recent_drinks(self) -> list[Drink]:
        """The newest 100 drinks, newest id first."""
        return self._objects(await self._call("GET", "drinks"), parse_drink)

    async def drink(self, drink_id: int) -> Drink:
        drink: Drink = self._object(await self._call("GET", f"drinks/{int(drink_id)}"), parse_drink)
        return drink
