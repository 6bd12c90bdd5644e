"""The Kegbot Server REST API (classic ``/api/``, v1.3.0 as it behaves) as data.

Pure: no Twisted, no treq, no I/O, no clock.  What a reply means, what a
refusal is worth, and the rule by which a drink on the server is known to
be ours (docs/kegbot-server-api.md says why each rule is what it is).  The
HTTP client (:mod:`kegtwist.delivery.client`) moves bytes and calls these.

Every failure is a :class:`ServerError` whose ``kind`` says what a caller
may do about it:

``unreachable``
    The request certainly did not reach the server (connection refused, DNS
    failure, no route).  Safe to send again.
``unknown``
    It may have reached the server but no answer came (timeout after
    connecting, connection dropped, a reply over the size cap).  A drink
    must not simply be re-sent.
``bad_key``
    401: the key is missing, unknown, inactive or not a staff user's.
``permanent``
    The server refused this request for good: 400 (bad field, no keg on the
    tap), 404 (unknown or inactive meter, unknown token), 405, and the 500s
    v1.3.0 raises for an unknown username (``unknown_user``) or negative
    values.
``transient``
    Any other 5xx, JSON or HTML (a proxy's 502), "Setup required", a 3xx
    (redirects are not followed: :func:`redirect_error`), and a 2xx whose
    body is not the JSON expected.  Retry later.

What delivery does about each kind is :mod:`kegtwist.delivery.policy`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

ErrorKind = Literal["unreachable", "unknown", "transient", "bad_key", "permanent"]
T = TypeVar("T")


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


# --- what the server answers ---------------------------------------------------------


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


class BadShape(ValueError):
    """A reply object without a field it needs, or with a wrong type."""


def _get(obj: Any, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise BadShape(f"expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise BadShape(f"missing {key!r}")
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise BadShape(f"{key!r} is not a number")
    if not isinstance(value, kind):
        raise BadShape(f"{key!r} has the wrong type")
    return value


def _number(obj: Any, key: str, optional: bool = False) -> float | None:
    value = _get(obj, key, (int, float), optional)
    return None if value is None else float(value)


def _datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadShape("expected a date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadShape(f"bad date-time {value!r}") from None
    if parsed.tzinfo is None:
        raise BadShape(f"date-time without offset {value!r}")
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


def object_of(doc: Any, parse: Callable[[Any], T]) -> T:
    """``{"object": {...}}`` parsed; an odd shape is ``transient``."""
    try:
        return parse(doc["object"])
    except (KeyError, TypeError, BadShape) as e:
        raise ServerError("transient", f"unexpected reply: {e}") from None


def objects_of(doc: Any, parse: Callable[[Any], T]) -> list[T]:
    """``{"objects": [...]}`` parsed; an odd shape is ``transient``."""
    try:
        items = doc["objects"]
        if not isinstance(items, list):
            raise BadShape("'objects' is not a list")
        return [parse(item) for item in items]
    except (KeyError, TypeError, BadShape) as e:
        raise ServerError("transient", f"unexpected reply: {e}") from None


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


def decode_reply(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """The JSON object of a reply that is not a redirect; anything else
    raises the :class:`ServerError` it is worth (:func:`classify`)."""
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


# --- where the key may go ------------------------------------------------------------

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


def shown_url(url: str) -> str:
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
    """The answer to a 3xx: never followed (a redirect-following client
    would forward the key to any host, and a followed POST could turn into
    a GET or be sent twice), and the reason says where it pointed so the
    owner can fix ``--api-url``.

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
    where = shown_url(target)
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


# --- exactly once: which drink on the server is ours ----------------------------------


def record_date(wall: float) -> str:
    """The instant a drink is recorded at: ISO 8601, microseconds, +00:00.

    The server stores it exactly; with ticks and drinker it identifies the
    pour on the server (:func:`matches`).
    """
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds")


class DrinkKey(Protocol):
    """What identifies a pour on the server (an outbox ``DrinkItem`` has it)."""

    @property
    def record_date(self) -> str: ...
    @property
    def ticks(self) -> int: ...
    @property
    def username(self) -> str | None: ...


def matches(item: DrinkKey, drink: Drink) -> bool:
    """Is ``drink`` on the server the one ``item`` describes?  The same time
    to the microsecond, the same ticks and the same drinker (guest for
    none): two real pours cannot share all three; ticks alone are never
    trusted."""
    return (
        drink.time == datetime.fromisoformat(item.record_date)
        and drink.ticks == item.ticks
        and (drink.username or None) == (item.username or None)
    )
