"""A Kegbot Server on loopback that behaves as docs/kegbot-server-api.md
describes (v1.3.0), with switches for faults.

Real HTTP (twisted.web on 127.0.0.1), so the client under test runs its
real treq/Agent code.  Seeded like the facts' test installation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.web import resource, server

API_KEY = "test-key"


@dataclass
class Fault:
    kind: str  # fail, hang, drop
    count: int
    method: str | None = None
    path: str | None = None
    status: int = 500
    body: bytes = b""
    content_type: str = "text/html"


@dataclass
class FakeKegbotServer:
    api_key: str = API_KEY
    clock_offset: timedelta = timedelta(0)
    users: set[str] = field(default_factory=lambda: {"alice", "bob"})
    taps: dict[str, dict[str, Any]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    controllers: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    drinks: list[dict[str, Any]] = field(default_factory=list)
    thermo: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    hung: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.controllers[1] = {"id": 1, "name": "kegboard", "model_name": "kegboard"}
        self.meters["kegboard.flow0"] = {
            "id": 1,
            "port_name": "flow0",
            "controller": 1,
            "ticks_per_ml": 2.724,
        }
        self.meters["kegboard.flow1"] = {
            "id": 2,
            "port_name": "flow1",
            "controller": 1,
            "ticks_per_ml": 5.4,
        }
        self.taps["kegboard.flow0"] = {
            "id": 1,
            "name": "Main Tap",
            "relay_name": "kegboard.relay0",
            "keg": 1,
        }
        self.taps["kegboard.flow1"] = {"id": 2, "name": "Second Tap", "relay_name": "", "keg": 2}
        self.add_token("core.rfid", "deadbeef", "alice")
        self.add_token("core.onewire", "0000111122223333", "alice")
        self.add_token("core.rfid", "cafef00d", "alice", enabled=False)
        self.add_token("core.rfid", "0badc0de", None)
        self.port: Any = None

    # setup helpers

    def add_token(
        self, device: str, value: str, username: str | None, enabled: bool = True
    ) -> None:
        self.tokens[(device, value)] = {
            "username": username,
            "enabled": enabled,
            "id": len(self.tokens) + 1,
        }

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    # faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        body: bytes = b"<h1>Server Error (500)</h1>",
        content_type: str = "text/html",
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.faults.append(Fault("fail", n, method, path, status, body, content_type))

    def hang_next(self, n: int = 1, method: str | None = None, path: str | None = None) -> None:
        self.faults.append(Fault("hang", n, method, path))

    def drop_after_commit_next(self, n: int = 1) -> None:
        self.faults.append(Fault("drop", n, "POST", "taps/"))

    def _fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if (
                fault.count > 0
                and (fault.method in (None, method))
                and (fault.path is None or path.startswith(fault.path))
            ):
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    # lifecycle

    def listen(self, reactor: Any, port: int = 0) -> Any:
        self.port = reactor.listenTCP(port, server.Site(_Root(self)), interface="127.0.0.1")
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/api/"

    def close(self) -> defer.Deferred[Any]:
        for request in self.hung:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        self.hung.clear()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    # views

    def handle(self, request: Any) -> bytes | int:
        method = request.method.decode()
        raw_path = request.path.decode()
        path = raw_path.split("/api/", 1)[-1]
        if path.startswith("v1/"):
            path = path[3:]
        path = unquote(path.rstrip("/"))
        ctype = request.getHeader("content-type") or ""
        form = (
            {k.decode(): v[0].decode() for k, v in request.args.items()}
            if "json" not in ctype
            else {}
        )
        self.requests.append((method, path, form, ctype))
        fault = self._fault(method, path)
        if fault is not None and fault.kind == "fail":
            request.setResponseCode(fault.status)
            request.setHeader("content-type", fault.content_type)
            return fault.body
        if fault is not None and fault.kind == "hang":
            self.hung.append(request)
            return server.NOT_DONE_YET
        try:
            status, body = self.route(method, path, form, request)
        except _Error as e:
            status, body = (
                e.status,
                {"error": {"code": e.code, "message": e.message}, "meta": {"result": "error"}},
            )
        if fault is not None and fault.kind == "drop":
            request.channel.transport.abortConnection()  # committed, never answered
            return server.NOT_DONE_YET
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return json.dumps(body, indent=2).encode()

    def _key(self, request: Any) -> None:
        key = request.getHeader("x-kegbot-api-key")
        if key is None:
            raise _Error(401, "NoAuthTokenError", 'The parameter "api_key" is required')
        if key != self.api_key:
            raise _Error(401, "BadApiKeyError", "API key does not exist")

    def route(self, method: str, path: str, form: dict[str, str], request: Any) -> tuple[int, Any]:
        parts = path.split("/")
        if path == "version":
            return 200, {"object": {"server_version": "1.3.0"}, "meta": {"result": "ok"}}
        if parts[0] == "taps" and len(parts) == 1 and method == "GET":
            return 200, {
                "objects": [self.tap_json(m) for m in sorted(self.taps)],
                "meta": {"result": "ok"},
            }
        if parts[0] == "taps" and len(parts) == 2:
            meter = parts[1]
            if meter not in self.meters:
                raise _Error(404, "NotFoundError", "FlowMeter matching query does not exist.")
            if meter not in self.taps:
                raise _Error(404, "NotFoundError", "Meter is inactive")
            if method == "GET":
                return 200, {"object": self.tap_json(meter), "meta": {"result": "ok"}}
            self._key(request)
            return 200, {"object": self.record_drink(meter, form), "meta": {"result": "ok"}}
        if path == "drinks":
            newest = sorted(self.drinks, key=lambda d: -d["id"])[:100]
            return 200, {"objects": newest, "meta": {"result": "ok"}}
        if parts[0] == "thermo-sensors" and len(parts) == 2 and method == "POST":
            try:
                temp = float(form["temp_c"])
            except (KeyError, ValueError):
                raise _Error(400, "BadRequestError", {"temp_c": ["Enter a number."]}) from None
            if not -20 <= temp <= 80:
                raise _Error(400, "BadRequestError", "Temperature out of bounds")
            minute = self.now().replace(second=0, microsecond=0)
            key = (parts[1], int(minute.timestamp()))
            log = self.thermo.setdefault(key, {"id": len(self.thermo) + 1, "sensor_id": 1})
            log.update(temperature_c=temp, time=minute.isoformat())
            return 200, {"object": log, "meta": {"result": "ok"}}
        if parts[0] == "auth-tokens" and len(parts) == 3:
            self._key(request)
            token = self.tokens.get((parts[1], parts[2]))
            if token is None:
                raise _Error(
                    404, "NotFoundError", "No AuthenticationToken matches the given query."
                )
            obj = {
                "id": token["id"],
                "auth_device": parts[1],
                "token_value": parts[2],
                "enabled": token["enabled"],
            }
            if token["username"]:
                obj["username"] = token["username"]
            return 200, {"object": obj, "meta": {"result": "ok"}}
        if path == "controllers":
            self._key(request)
            if method == "POST":
                if any(c["name"] == form.get("name") for c in self.controllers.values()):
                    raise _Error(
                        400,
                        "BadRequestError",
                        {"name": ["Controller with this Name already exists."]},
                    )
                cid = max(self.controllers) + 1
                self.controllers[cid] = {
                    "id": cid,
                    "name": form["name"],
                    "model_name": form.get("model_name", ""),
                }
                return 200, {"object": self.controllers[cid], "meta": {"result": "ok"}}
            return 200, {"objects": list(self.controllers.values()), "meta": {"result": "ok"}}
        if path == "flow-meters":
            self._key(request)
            if method == "POST":
                controller = self.controllers.get(int(form.get("controller", "0") or 0))
                if controller is None:
                    raise _Error(400, "BadRequestError", {"controller": ["Select a valid choice."]})
                name = f"{controller['name']}.{form['port_name']}"
                if name in self.meters:
                    raise _Error(400, "BadRequestError", "The request was incomplete or malformed.")
                self.meters[name] = {
                    "id": len(self.meters) + 1,
                    "port_name": form["port_name"],
                    "controller": controller["id"],
                    "ticks_per_ml": float(form["ticks_per_ml"]),
                }
                return 200, {"object": self.meter_json(name), "meta": {"result": "ok"}}
            return 200, {
                "objects": [self.meter_json(n) for n in self.meters],
                "meta": {"result": "ok"},
            }
        raise _Error(404, "NotFoundError", "unknown path")

    def meter_json(self, name: str) -> dict[str, Any]:
        m = self.meters[name]
        return {
            "id": m["id"],
            "name": name,
            "port_name": m["port_name"],
            "ticks_per_ml": m["ticks_per_ml"],
            "controller": self.controllers[m["controller"]],
        }

    def tap_json(self, meter: str) -> dict[str, Any]:
        tap = self.taps[meter]
        obj = {
            "id": tap["id"],
            "name": tap["name"],
            "meter_name": meter,
            "relay_name": tap["relay_name"],
            "ml_per_tick": 1 / self.meters[meter]["ticks_per_ml"],
        }
        if tap.get("keg") is not None:
            obj["current_keg_id"] = tap["keg"]
        return obj

    def record_drink(self, meter: str, form: dict[str, str]) -> dict[str, Any]:
        if "ticks" not in form:
            raise _Error(400, "BadRequestError", {"ticks": ["This field is required."]})
        try:
            ticks = int(form["ticks"])
            duration = int(form.get("duration", "0") or 0)
        except ValueError:
            raise _Error(400, "BadRequestError", {"ticks": ["Enter a whole number."]}) from None
        if ticks < 0:
            raise _Error(
                500, "ServerError", "An internal error occurred: CHECK constraint failed: ticks"
            )
        if self.taps[meter].get("keg") is None:
            raise _Error(400, "BadRequestError", "No active keg at this tap")
        username = form.get("username") or "guest"
        if username != "guest" and username not in self.users:
            raise _Error(
                500,
                "ServerError",
                "An internal error occurred: User matching query does not exist.",
            )
        when = self.now()
        if "record_date" in form:
            try:
                when = datetime.fromisoformat(form["record_date"])
            except ValueError:
                raise _Error(
                    400, "BadRequestError", f"Invalid isoformat string: {form['record_date']!r}"
                ) from None
            if when.tzinfo is None:
                raise _Error(
                    500,
                    "ServerError",
                    "An internal error occurred: can't compare offset-naive and offset-aware datetimes",
                )
        elif "pour_time" in form and "now" in form:
            when = self.now() - timedelta(seconds=int(form["now"]) - int(form["pour_time"]))
        drink = {
            "id": len(self.drinks) + 1,
            "ticks": ticks,
            "volume_ml": float(form["volume_ml"])
            if "volume_ml" in form
            else ticks / self.meters[meter]["ticks_per_ml"],
            "session_id": 1,
            "time": when.astimezone(UTC).isoformat(),
            "duration": duration,
            "keg_id": self.taps[meter]["keg"],
            "user_id": username,
            "user": {"username": username},
            "meter_name": meter,
        }
        self.drinks.append(drink)
        return drink


class _Error(Exception):
    def __init__(self, status: int, code: str, message: Any) -> None:
        self.status, self.code, self.message = status, code, message


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeKegbotServer) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Any) -> bytes | int:
        return self.fake.handle(request)
