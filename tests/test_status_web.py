"""The status page's HTTP side on a real twisted.web on loopback: routes,
methods, bounds, the event stream (limits, resume, heartbeat), metrics, a
port already taken; and the pure parts under it (hub, document, metrics)."""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import globalLogPublisher

from kegtwist.status.document import build_document
from kegtwist.status.hub import EventHub
from kegtwist.status.metrics import Histogram, escape_label, metrics_text
from kegtwist.status.web import MAX_EVENT_CLIENTS, StatusService, check_endpoint

DOCUMENT: dict[str, Any] = {
    "schema": 1,
    "version": "0.1.0",
    "role": "all",
    "now": 1000.0,
    "started": 900.0,
    "uptime_seconds": 100.0,
    "boards": [
        {
            "name": "kegboard",
            "device": "/dev/ttyUSB0",
            "connected": True,
            "counters": {"frames": 120, "crc_errors": 2, "framing_errors": 1},
        }
    ],
    "taps": [
        {
            "meter": "kegboard.flow0",
            "name": 'Tap "1" \\ west\nside',
            "drinks": 3,
            "volume_ml": 990.5,
        },
        {"meter": "kegboard.flow1", "name": None, "drinks": 0, "volume_ml": 0.0},
    ],
    "pours": [{"meter": "kegboard.flow0"}],
    "outbox": {"pending": 2, "uncertain": 1, "dead_letters": 1, "quarantined": 0},
    "server": {"state": "ok"},
    "redis": {"state": "down"},
    "kegnet": {"in": 10, "out": 20, "rejected": 1, "ignored": 2},
    "temperatures": [{"sensor": "kegboard.thermo-1", "celsius": 4.25}],
    "valves": [{"relay": "kegboard.relay0", "open": True}],
    "counters": {"pours_started": 4},
    "errors": [],
}


# --- a raw HTTP client ----------------------------------------------------------


class RawClient(protocol.Protocol):
    """Sends bytes as given; keeps everything it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()
        self._waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for waiter in list(self._waiters):
            if waiter[0](self.received):
                self._waiters.remove(waiter)
                waiter[1].callback(self.received)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self._waiters:
            d.errback(AssertionError(f"closed before expected data: {self.received!r}"))
        self._waiters = []
        self.closed.callback(self.received)

    def wait_for(
        self, test: Callable[[bytes], bool], timeout: float = 5.0
    ) -> defer.Deferred[bytes]:
        if test(self.received):
            return defer.succeed(self.received)
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((test, d))
        d.addTimeout(timeout, reactor)
        return d

    def close(self) -> defer.Deferred[bytes]:
        assert self.transport is not None
        self.transport.loseConnection()
        return self.closed


@defer.inlineCallbacks
def connect(port: int, data: bytes = b"") -> Iterator[Any]:
    client = RawClient()
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(lambda: client)
    )
    if data:
        client.transport.write(data)
    return client


@defer.inlineCallbacks
def exchange(port: int, data: bytes) -> Iterator[Any]:
    """Send ``data``; the whole answer once the server closes."""
    client = yield connect(port, data)
    received = yield client.closed.addTimeout(5, reactor)
    return received


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


@defer.inlineCallbacks
def get(
    port: int, path: str, method: str = "GET", headers: str = "", body: bytes = b""
) -> Iterator[Any]:
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}"
    if body:
        request += f"Content-Length: {len(body)}\r\n"
    raw = yield exchange(port, request.encode() + b"\r\n" + body)
    return parse(raw)


def sse_events(raw: bytes) -> list[dict[str, str]]:
    """The events of a stream (comments and the retry field left out)."""
    text = raw.partition(b"\r\n\r\n")[2].decode()
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            events.append(fields)
    return events


def event_ids(raw: bytes) -> list[int]:
    return [int(e["id"]) for e in sse_events(raw)]


# --- the service ---------------------------------------------------------------------


@dataclass
class Running:
    service: StatusService
    hub: EventHub
    doc: dict[str, Any] = field(default_factory=lambda: dict(DOCUMENT))

    @property
    def port(self) -> int:
        assert self.service.port is not None
        return int(self.service.port.getHost().port)


@pytest.fixture
def running() -> Iterator[Running]:
    yield from _running()


def _running(**kwargs: Any) -> Iterator[Running]:
    hub = EventHub(first_id=1, capacity=kwargs.pop("capacity", 500))
    box: list[Running] = []
    service = StatusService(
        "tcp:0:interface=127.0.0.1",
        lambda: box[0].doc,
        lambda: metrics_text(box[0].doc),
        hub,
        reactor,
        **kwargs,
    )
    run = Running(service, hub)
    box.append(run)
    service.startService()
    pytest_twisted.blockon(_until(lambda: service.port is not None))
    yield run
    pytest_twisted.blockon(service.stopService())


@defer.inlineCallbacks
def _until(test: Callable[[], bool], timeout: float = 5.0) -> Iterator[Any]:
    waited = 0.0
    while not test():
        if waited > timeout:
            raise AssertionError("timed out")
        yield task.deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


# --- routes --------------------------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_every_route_answers(running: Running) -> Iterator[Any]:
    port = running.port
    page = yield get(port, "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b'src="/static/app.js"' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]

    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        static = yield get(port, f"/static/{name}")
        assert static.status == 200 and static.headers["content-type"].startswith(kind)
        assert len(static.body) == int(static.headers["content-length"]) > 100

    for missing in ("/static/../web.py", "/static/nope.js", "/nothing", "/status.json/x"):
        answer = yield get(port, missing)
        assert answer.status == 404, missing

    running.hub.publish("pour", {"meter": "kegboard.flow0", "volume_ml": 10.0})
    status = yield get(port, "/status.json")
    assert status.status == 200 and status.headers["content-type"] == "application/json"
    assert json.loads(status.body) == {**DOCUMENT, "last_event_id": 1}
    assert status.headers["cache-control"] == "no-store"

    metrics = yield get(port, "/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_metrics(metrics.body.decode())
    assert (
        samples[
            ("kegbot_board_crc_errors_total", (("board", "kegboard"), ("device", "/dev/ttyUSB0")))
        ]
        == 2
    )

    head = yield get(port, "/status.json", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(status.body)
    head_events = yield get(port, "/events", method="HEAD")
    assert head_events.status == 200 and head_events.body == b""
    assert not running.service.events.clients


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_only_get_and_head(running: Running) -> Iterator[Any]:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        for path in ("/", "/status.json", "/events", "/metrics", "/nowhere"):
            answer = yield get(
                running.port, path, method=method, body=b"x=1" if method == "POST" else b""
            )
            assert answer.status == 405, (method, path)
            assert answer.headers["allow"] == "GET, HEAD"
    assert not running.service.events.clients


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_request_bounds(running: Running) -> Iterator[Any]:
    port = running.port
    long_path = yield exchange(port, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parse(long_path).status == 414
    very_long = yield exchange(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert parse(very_long).status == 414
    many = "".join(f"X-H{i}: v\r\n" for i in range(60))
    too_many = yield get(port, "/status.json", headers=many)
    assert too_many.status == 431
    big = "".join(f"X-Big{i}: {'v' * 3000}\r\n" for i in range(4))
    too_big = yield get(port, "/status.json", headers=big)
    assert too_big.status == 431
    one_long_line = yield get(port, "/status.json", headers=f"X-Long: {'v' * 9000}\r\n")
    assert one_long_line.status == 431
    body = yield exchange(
        port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000
    )
    assert parse(body).status == 413
    # Within the bounds, all is normal.
    fine = yield get(port, "/status.json", headers="".join(f"X-H{i}: v\r\n" for i in range(20)))
    assert fine.status == 200
    assert len(running.service.site.channels) <= 1


# --- the event stream ---------------------------------------------------------------


def sse_request(last_id: int | None = None, after: int | None = None) -> bytes:
    path = "/events" + (f"?after={after}" if after is not None else "")
    header = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    return f"GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n".encode()


def has_events(count: int) -> Callable[[bytes], bool]:
    return lambda raw: len(sse_events(raw)) >= count


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_event_stream_resumes_without_a_gap(running: Running) -> Iterator[Any]:
    hub = running.hub
    for i in range(5):
        hub.publish("pour", {"meter": "kegboard.flow0", "phase": "progress", "volume_ml": 10.0 * i})

    client = yield connect(running.port, sse_request(last_id=2))
    raw = yield client.wait_for(has_events(3))
    head = parse(raw)
    assert head.status == 200 and head.headers["content-type"].startswith("text/event-stream")
    assert event_ids(raw) == [3, 4, 5]
    assert json.loads(sse_events(raw)[0]["data"]) == {
        "meter": "kegboard.flow0",
        "phase": "progress",
        "volume_ml": 20.0,
    }
    hub.publish("drink", {"meter": "kegboard.flow0", "flow_id": 7, "volume_ml": 40.0})
    raw = yield client.wait_for(has_events(4))
    assert event_ids(raw) == [3, 4, 5, 6]
    assert sse_events(raw)[-1]["event"] == "drink"
    yield client.close()

    # ?after= (the page's first connection) works the same; a header wins.
    client = yield connect(running.port, sse_request(after=4))
    raw = yield client.wait_for(has_events(2))
    assert event_ids(raw) == [5, 6]
    yield client.close()

    # A new client without an id gets what happens from now on only.
    client = yield connect(running.port, sse_request())
    yield client.wait_for(lambda raw: b"retry:" in raw)
    hub.publish("valve", {"relay": "kegboard.relay0", "open": True})
    raw = yield client.wait_for(has_events(1))
    assert event_ids(raw) == [7]
    yield client.close()
    yield _until(lambda: not running.service.events.clients)


@pytest.fixture
def small_ring() -> Iterator[Running]:
    yield from _running(capacity=3)


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_event_stream_says_reload_when_events_were_lost(small_ring: Running) -> Iterator[Any]:
    hub = small_ring.hub
    for i in range(6):
        hub.publish("pour", {"meter": "m", "volume_ml": float(i)})
    assert hub.since(2) is None and [e.id for e in hub.since(3) or []] == [4, 5, 6]
    client = yield connect(small_ring.port, sse_request(last_id=1))
    raw = yield client.wait_for(has_events(1))
    [reload] = sse_events(raw)
    assert reload["event"] == "reload" and reload["id"] == "6"
    hub.publish("pour", {"meter": "m", "volume_ml": 7.0})
    raw = yield client.wait_for(has_events(2))
    assert event_ids(raw) == [6, 7]
    yield client.close()
    # An id from another run of the daemon (above the newest): reload too.
    client = yield connect(small_ring.port, sse_request(last_id=10**15))
    raw = yield client.wait_for(has_events(1))
    assert [e["event"] for e in sse_events(raw)] == ["reload"]
    yield client.close()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_the_21st_event_client_is_refused(running: Running) -> Iterator[Any]:
    clients = []
    for _ in range(MAX_EVENT_CLIENTS):
        client = yield connect(running.port, sse_request())
        yield client.wait_for(lambda raw: b"retry:" in raw)
        clients.append(client)
    assert len(running.service.events.clients) == 20
    refused = yield exchange(running.port, sse_request())
    answer = parse(refused)
    assert answer.status == 503 and answer.headers["retry-after"] == "30"
    # The page and the JSON still answer meanwhile.
    status = yield get(running.port, "/status.json")
    assert status.status == 200
    # One leaves: one more may come.
    yield clients.pop().close()
    yield _until(lambda: len(running.service.events.clients) == 19)
    client = yield connect(running.port, sse_request())
    yield client.wait_for(lambda raw: b"retry:" in raw)
    clients.append(client)
    running.hub.publish("board", {"board": "kegboard", "connected": False})
    for client in clients:
        raw = yield client.wait_for(has_events(1))
        assert sse_events(raw)[0]["event"] == "board"
    for client in clients:
        yield client.close()
    yield _until(lambda: not running.service.events.clients)


@pytest.fixture
def clocked() -> Iterator[tuple[Running, task.Clock]]:
    clock = task.Clock()
    for run in _running(clock=clock):
        yield run, clock


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_heartbeat_runs_only_while_a_client_is_connected(
    clocked: tuple[Running, task.Clock],
) -> Iterator[Any]:
    running, clock = clocked
    assert clock.getDelayedCalls() == []  # listening, nobody connected: no timer
    assert running.service.site._logDateTimeCall is None  # twisted.web's own 1 s timer
    status = yield get(running.port, "/status.json")
    assert status.status == 200
    yield _until(lambda: not running.service.site.channels)
    assert clock.getDelayedCalls() == []

    client = yield connect(running.port, sse_request())
    yield client.wait_for(lambda raw: b"retry:" in raw)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [15.0]
    clock.advance(15)
    yield client.wait_for(lambda raw: raw.count(b": keepalive\n\n") == 1)
    clock.advance(15)
    yield client.wait_for(lambda raw: raw.count(b": keepalive\n\n") == 2)
    assert running.hub.listeners == 1
    yield client.close()
    yield _until(lambda: not running.service.events.clients)
    assert clock.getDelayedCalls() == []
    assert running.hub.listeners == 0


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_slow_client_is_paused_and_catches_up(running: Running) -> Iterator[Any]:
    client = yield connect(running.port, sse_request())
    yield client.wait_for(lambda raw: b"retry:" in raw)
    [sse] = running.service.events.clients
    sse.pauseProducing()  # what the channel does when the socket buffer is full
    for i in range(3):
        running.hub.publish("pour", {"meter": "m", "volume_ml": float(i)})
    yield task.deferLater(reactor, 0.05, lambda: None)
    assert sse_events(client.received) == []
    sse.resumeProducing()
    raw = yield client.wait_for(has_events(3))
    assert event_ids(raw) == [1, 2, 3]
    yield client.close()


# --- the port taken ----------------------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_taken_port_logs_one_line_and_the_service_runs_on() -> Iterator[Any]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = StatusService(
            f"tcp:{port}:interface=127.0.0.1", dict, str, EventHub(first_id=1), reactor
        )
        assert service.port is None  # nothing listens before startService
        service.startService()
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert service.running and service.port is None
        assert service.listen_error == "the address is in use by another program"
        ours = [e for e in events if str(e.get("log_namespace")).startswith("kegtwist.status")]
        assert len(ours) == 1
        assert len([e for e in events if str(port) in _text(e)]) == 1
        assert ours[0]["log_level"].name == "warn"
        assert _text(ours[0]) == (
            f"Status page: cannot listen on tcp:{port}:interface=127.0.0.1 (the address is in "
            "use by another program); the daemon runs on without it"
        )
        yield service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
        taken.close()


def _text(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


def test_endpoint_strings() -> None:
    for good in (
        "none",
        "tcp:8010:interface=127.0.0.1",
        "tcp:port=8010",
        "tcp6:8010",
        "unix:/run/k.sock",
    ):
        assert check_endpoint(good) == good
    for bad in ("", "8010", "tcp:", "tcp:http", "tcp:70000", "ssl:8010", "unix:"):
        with pytest.raises(ValueError):
            check_endpoint(bad)


# --- metrics --------------------------------------------------------------------------------

_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.eE+-]+|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict little parser of the text format: every line must fit."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helped
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram") and name not in types
            assert name in helped
            types[name] = kind
            continue
        match = _LINE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE"
        if types[family] == "counter":
            assert name.endswith("_total")
        labels = tuple((k, _unescape(v)) for k, v in _LABEL.findall(match["labels"] or ""))
        key = (name, labels)
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(match["value"].replace("Inf", "inf"))
    return samples


def test_metrics_are_valid_exposition_with_escaped_labels() -> None:
    latency = Histogram("kegbot_delivery_latency_seconds", "Pour end to recorded.\nSecond line")
    for seconds in (0.05, 0.3, 0.3, 4.0, 100000.0):
        latency.observe(seconds)
    text = metrics_text(DOCUMENT, [latency])
    samples = parse_metrics(text)
    tap = ("kegbot_drinks_total", (("meter", "kegboard.flow0"), ("tap", 'Tap "1" \\ west\nside')))
    assert samples[tap] == 3
    assert 'tap="Tap \\"1\\" \\\\ west\\nside"' in text
    assert samples[("kegbot_poured_milliliters_total", tap[1])] == 990.5
    assert samples[("kegbot_pours_in_progress", ())] == 1
    assert samples[("kegbot_outbox_pending", ())] == 2
    assert samples[("kegbot_outbox_dead_letters", ())] == 1
    assert samples[("kegbot_kegnet_messages_in_total", ())] == 10
    assert samples[("kegbot_kegnet_messages_out_total", ())] == 20
    assert samples[("kegbot_kegnet_messages_rejected_total", ())] == 1
    assert samples[("kegbot_server_up", ())] == 1
    assert samples[("kegbot_redis_up", ())] == 0
    assert samples[("kegbot_temperature_celsius", (("sensor", "kegboard.thermo-1"),))] == 4.25
    assert "# HELP kegbot_delivery_latency_seconds Pour end to recorded.\\nSecond line" in text
    buckets = [
        (dict(labels)["le"], value)
        for (name, labels), value in samples.items()
        if name == "kegbot_delivery_latency_seconds_bucket"
    ]
    assert buckets[0] == ("0.1", 1) and buckets[-1] == ("+Inf", 5)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert dict(buckets)["0.25"] == 1 and dict(buckets)["0.5"] == 3 and dict(buckets)["5"] == 4
    assert samples[("kegbot_delivery_latency_seconds_count", ())] == 5
    assert math.isclose(samples[("kegbot_delivery_latency_seconds_sum", ())], 100004.65)
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    # A document of a kegboard-role daemon (no core, no server): still valid.
    parse_metrics(metrics_text({"role": "kegboard", "taps": None, "outbox": None, "errors": []}))


# --- hub, feed and document ---------------------------------------------------------


def test_hub_ids_ring_and_memory() -> None:
    now = [100.0]
    hub = EventHub(capacity=4, wall=lambda: now[0])
    first = hub.last_id + 1
    assert first == 100000  # the wall clock in ms: the next run's ids are above
    assert hub.since(hub.last_id) == []
    ids = [hub.publish("temperature", {"sensor": "t", "celsius": 4.0 + i}) for i in range(6)]
    assert ids == list(range(first, first + 6))
    assert [e.id for e in hub.since(ids[1]) or []] == ids[2:]
    assert hub.since(ids[0]) is None and hub.since(ids[-1] + 1) is None
    assert hub.memory.temperatures["t"] == {"celsius": 9.0, "at": 100.0}
    with pytest.raises(ValueError):
        hub.publish("beer", {})
    assert json.loads(hub.since(ids[-2])[0].json) == {"sensor": "t", "celsius": 9.0}  # type: ignore[index]
    hub.publish("temperature", {"sensor": "t", "celsius": float("nan")})
    assert hub.since(ids[-1])[0].json == '{"sensor":"t","celsius":null}'  # type: ignore[index]

    hub.publish("server", {"state": "down", "error": "refused"})
    now[0] = 200.0
    hub.publish("server", {"state": "down", "error": "timeout"})
    assert (hub.memory.states["server"].since, hub.memory.states["server"].error) == (
        100.0,
        "timeout",
    )
    hub.publish("drink", {"flow_id": 1, "meter": "m", "volume_ml": 300.0, "state": "logged"})
    hub.publish("drink", {"flow_id": 1, "meter": "m", "volume_ml": 300.0, "drink_id": 9})
    assert hub.memory.totals["m"] == [1, 300.0]
    assert next(iter(hub.memory.tap_drinks["m"]))["drink_id"] == 9


@dataclass
class _Stats:
    frames: int = 5
    crc_errors: int = 1
    framing_errors: int = 0


class _Link:
    device = "/dev/ttyACM0"
    state = "named"
    name = "kegboard"
    hello = None
    stats = _Stats()


class _Boards:
    links = {"/dev/ttyACM0": _Link()}
    boards = {"kegboard": _Link()}
    relay_states = {"kegboard.relay0": False}


class _Exploding:
    @property
    def core(self) -> Any:
        raise RuntimeError("boom")

    listeners: list[Any] = []


class _Daemon:
    role = "all"
    boards = _Boards()
    core = _Exploding()
    outbox = None
    delivery = None
    tap_sync = None
    bus = None
    bridge = None


def test_the_document_never_raises_and_says_what_failed() -> None:
    hub = EventHub(first_id=1, wall=lambda: 50.0)
    hub.publish(
        "board",
        {
            "board": "kegboard-2",
            "device": "/dev/ttyUSB1",
            "connected": False,
            "reason": "unplugged",
        },
    )
    doc = build_document(_Daemon(), 100.0, 40.0, hub=hub)
    json.dumps(doc, allow_nan=False)
    assert doc["uptime_seconds"] == 60.0 and doc["role"] == "all"
    assert [(b["name"], b["connected"]) for b in doc["boards"]] == [
        ("kegboard", True),
        ("kegboard-2", False),
    ]
    assert doc["boards"][0]["counters"]["crc_errors"] == 1
    gone = doc["boards"][1]
    assert (gone["since"], gone["reason"], gone["device"]) == (50.0, "unplugged", "/dev/ttyUSB1")
    assert doc["taps"] is None and doc["outbox"] is None
    errors = {e["part"]: e for e in doc["errors"]}
    assert errors["taps"]["kind"] == "failed" and "boom" in errors["taps"]["error"]
    assert errors["outbox"]["kind"] == "absent"
    assert errors["server"]["kind"] == "absent" and errors["redis"]["kind"] == "absent"
    assert doc["valves"] is None or isinstance(doc["valves"], list)
    # Anything at all as a daemon: still a document.
    assert build_document(object(), 1.0, 0.0)["errors"]


def test_a_composed_daemon_documents_and_feeds(tmp_path: Path) -> None:
    """The readers against the real parts of a composed (not started) daemon."""
    from kegtwist.core import PourSnapshot, PourUpdate, RecordDrink, SetRelay
    from kegtwist.core.inputs import BoardConnected, BoardGone
    from kegtwist.daemon.compose import build
    from kegtwist.daemon.options import Options

    options = Options()
    options.parseOptions(
        [
            "--kegboard",
            "none",
            "--redis-url",
            "none",
            "--api-url",
            "http://user:secret@127.0.0.1:9/api/",
            "--state-dir",
            str(tmp_path),
        ]
    )
    daemon = build(options, reactor)
    # The composition gave the status feed to the core, delivery and boards.
    [status] = [c for c in daemon if c.name == "status"]
    hub = status.hub
    since = hub.last_id
    feed_of = [f for f in daemon.core.listeners if getattr(f, "__name__", "") == "core_effect"]
    assert len(feed_of) == 1
    feed = feed_of[0].__self__
    assert feed.drink_recorded in daemon.delivery.listeners
    snap = PourSnapshot(5, "kegboard.flow0", "alice", "core.rfid", 100, 37.0, 1.0, 2.0, 1.0)
    for effect in (
        PourUpdate(snap, "active"),
        PourUpdate(snap, "active"),
        SetRelay("kegboard.relay0", True, "pour"),
        SetRelay("kegboard.relay0", True, "refresh"),
        PourUpdate(snap, "completed", "idle", True),
        RecordDrink(5, "kegboard.flow0", 100, 37.0, "alice", "core.rfid", 1.0, 2.0, 1.0, "idle"),
    ):
        feed.core_effect(effect)
    daemon.boards.sink(BoardConnected("kegboard", "/dev/ttyUSB0", 18))
    daemon.boards.sink(BoardGone("kegboard", "/dev/ttyUSB0", "no hello for 30 s"))
    kinds = [(e.kind, e.data.get("phase")) for e in hub.since(since) or []]
    assert kinds == [
        ("pour", "start"),
        ("pour", "progress"),
        ("valve", None),
        ("pour", "end"),
        ("drink", None),
        ("board", None),
        ("board", None),
    ]
    assert feed.errors == 0
    doc = build_document(daemon, 100.0, 90.0, hub=hub)
    json.dumps(doc, allow_nan=False)
    failed = [e for e in doc["errors"] if e["kind"] == "failed"]
    assert failed == []
    assert doc["server"]["url"] == "http://127.0.0.1:9/api/"  # never the password
    assert doc["server"]["state"] == "starting"
    assert doc["outbox"]["pending"] == 0 and doc["pours"] == []
    assert doc["drinks"][0]["flow_id"] == 5
    assert [(b["name"], b["connected"], b["reason"]) for b in doc["boards"]] == [
        ("kegboard", False, "no hello for 30 s")
    ]


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_client_that_reads_nothing_for_a_minute_is_dropped(
    clocked: tuple[Running, task.Clock],
) -> Iterator[Any]:
    running, clock = clocked
    client = yield connect(running.port, sse_request())
    yield client.wait_for(lambda raw: b"retry:" in raw)
    [sse] = running.service.events.clients
    sse.pauseProducing()
    clock.advance(45)
    assert running.service.events.clients == {sse}
    clock.advance(15)
    yield client.closed.addTimeout(5, reactor)
    assert not running.service.events.clients
    assert clock.getDelayedCalls() == []
