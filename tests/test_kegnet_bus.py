"""The Kegnet bus against a real redis-server: reconnects, resubscribes,
bounded queue, passwords, hostile input."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator
from typing import Any

import pytest
import pytest_twisted
from kegnetkit import Bus, until
from redisd import RedisServer, free_port

from kegtwist.bus.redis import parse_redis_url
from kegtwist.protocol import kegnet as events

pytestmark = pytest.mark.integration  # real processes, redis-server or ptys


@pytest.fixture
def buses() -> Generator[list[Bus], None, None]:
    made: list[Bus] = []
    yield made
    for b in made:
        if b.bus.running:
            b.bus.stopService()


def test_urls_and_redaction() -> None:
    t = parse_redis_url("redis://:s3cret@redis.lan:6380/2")
    assert t is not None and (t.host, t.port, t.db, t.password) == ("redis.lan", 6380, 2, "s3cret")
    assert "s3cret" not in t.redacted() and "s3cret" not in repr(t)
    assert parse_redis_url("rediss://r/0").tls  # type: ignore[union-attr]
    u = parse_redis_url("unix:///run/redis.sock?db=3")
    assert u is not None and (u.path, u.db) == ("/run/redis.sock", 3)
    assert parse_redis_url("none") is None
    with pytest.raises(ValueError) as e:
        parse_redis_url("redis://:pw@host:notaport/0")
    assert "pw" not in str(e.value)


@pytest_twisted.inlineCallbacks
def test_events_flow_between_daemons_and_echoes_are_dropped(
    redis_server: RedisServer, buses: list[Bus]
) -> Generator[Any, Any, None]:
    a, b = Bus(redis_server.url, "A"), Bus(redis_server.url, "B")
    buses += [a, b]
    yield until(lambda: a.bus.connected and b.bus.connected)
    a.bus.publish(events.MeterUpdate("kegboard.flow0", 100))
    yield until(lambda: len(b.received) == 1 and a.bus.stats.echoes == 1)
    assert b.received == [events.MeterUpdate("kegboard.flow0", 100, "A")]
    assert a.received == []


@pytest_twisted.inlineCallbacks
def test_ten_thousand_malformed_messages_are_counted_not_fatal(
    redis_server: RedisServer, buses: list[Bus]
) -> Generator[Any, Any, None]:
    listener, sender = Bus(redis_server.url, "L"), Bus(redis_server.url, "S")
    buses += [listener, sender]
    yield until(lambda: listener.bus.connected and sender.bus.connected)
    junk = [
        b"{not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"event": "MeterUpdate"}',
        b'{"event": "MeterUpdate", "data": {"meter_name": "k.flow0", "reading": "abc"}}',
        b'{"event": "MeterUpdate", "data": {"meter_name": "k.flow0", "reading": null}}',
        b'{"event": "MeterUpdate", "data": {"meter_name": "k.flow0", "reading": 1e400}}',
        b'{"event": "MeterUpdate", "data": {"meter_name": "k.flow0", "reading": "100"}}',
        b'{"event": "ThermoEvent", "data": {"sensor_name": "t", "sensor_value": "cold"}}',
    ]
    oversized = b'{"event": "MeterUpdate", "data": {"pad": "' + b"x" * 65536 + b'"}}'
    for i in range(10_000):
        # A few oversized ones: thousands would make Redis drop the
        # subscriber for its output buffer, as it should.
        sender.bus.publisher.publish("kegnet", oversized if i % 1000 == 0 else junk[i % len(junk)])
    quit_event = json.dumps({"event": "QuitEvent", "data": {}}).encode()
    sender.bus.publisher.publish("kegnet", quit_event)
    sender.bus.publish(events.MeterUpdate("k.flow0", 7))  # still listening afterwards
    yield until(lambda: listener.bus.stats.received == 10_002, seconds=30)
    stats = listener.bus.stats
    assert stats.rejected == 10_000
    assert stats.reasons["oversized"] == 10 and stats.reasons["invalid_utf8"] == 1000
    assert stats.reasons["invalid_json"] == 990 and stats.reasons["not_an_object"] == 2000
    assert stats.ignored == 1  # the QuitEvent: nothing happened
    assert listener.received == [events.MeterUpdate("k.flow0", 7, "S")]
    assert listener.bus.running and listener.bus.connected


@pytest_twisted.inlineCallbacks
def test_redis_restart_resubscribes_and_flushes_the_queue(
    redis_server: RedisServer, buses: list[Bus]
) -> Generator[Any, Any, None]:
    a, b = Bus(redis_server.url, "A"), Bus(redis_server.url, "B")
    buses += [a, b]
    yield until(lambda: a.bus.connected and b.bus.connected)
    redis_server.kill()
    yield until(lambda: not a.bus.connected and not b.bus.connected)
    a.bus.publish(events.MeterUpdate("kegboard.flow0", 500))  # queued while down
    assert len(a.bus.queue) == 1
    redis_server.start()
    yield until(lambda: a.bus.connected and b.bus.connected, seconds=20)
    # The queued event went out when the publisher came back; the
    # subscriber may have come back after it (pub/sub is lossy), so
    # publish once more and see that the subscription is live again.
    a.bus.publish(events.MeterUpdate("kegboard.flow0", 600))
    yield until(lambda: events.MeterUpdate("kegboard.flow0", 600, "A") in b.received)
    assert a.bus.queue == type(a.bus.queue)() and a.bus.stats.published >= 2


@pytest_twisted.inlineCallbacks
def test_password_and_recovery_from_a_refused_auth(
    tmp_path: Any, buses: list[Bus]
) -> Generator[Any, Any, None]:
    server = RedisServer(tmp_path, password="wrong-one").start()
    try:
        url = f"redis://:right-one@127.0.0.1:{server.port}/1"
        a = Bus(url, "A")
        buses.append(a)
        yield until(lambda: "WRONGPASS" in a.bus.last_error or "invalid" in a.bus.last_error)
        assert not a.bus.connected
        server.kill()
        server.start(password="right-one")  # the operator fixed Redis
        yield until(lambda: a.bus.connected, seconds=40)
        b = Bus(url, "B")
        buses.append(b)
        yield until(lambda: b.bus.connected)
        b.bus.publish(events.ControllerConnectedEvent("kegboard"))
        yield until(lambda: len(a.received) == 1)
    finally:
        server.kill()


@pytest_twisted.inlineCallbacks
def test_publish_while_redis_is_absent_is_bounded(buses: list[Bus]) -> Generator[Any, Any, None]:
    a = Bus(f"redis://127.0.0.1:{free_port()}/0", "A", queue_limit=10)
    buses.append(a)
    yield until(lambda: a.bus.last_error != "")
    for i in range(25):
        a.bus.publish(events.MeterUpdate("k.flow0", i))
    assert len(a.bus.queue) == 10
    assert a.bus.stats.dropped_queue_full == 15
    newest = [json.loads(m)["data"]["reading"] for m in a.bus.queue]
    assert newest == list(range(15, 25))
    yield a.stop()


def test_subscriber_handles_any_chunking_and_replies() -> None:
    """txredisapi's subscriber as the link makes it: pushes split anywhere
    reach the bus, the reply to SUBSCRIBE in between reaches its command,
    bytes that are not RESP drop the connection (without a traceback)."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from kegtwist.bus.link import _Guard
    from kegtwist.bus.redis import KegnetBus, RedisTarget

    got: list[events.Event] = []
    bus = KegnetBus(RedisTarget(), "kegnet", "me", got.append, reactor=Clock())
    protocol = bus._link(subscriber=True)._new_protocol()
    guard = _Guard(protocol)
    transport = StringTransport()
    guard.makeConnection(transport)
    subscribed = protocol.subscribe("kegnet")
    assert transport.value() == b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nkegnet\r\n"
    payload = events.encode(events.MeterUpdate("k.flow0", 42, "other"))
    push = b"*3\r\n$7\r\nmessage\r\n$6\r\nkegnet\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    stream = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nkegnet\r\n:1\r\n" + push * 3
    for i in range(len(stream)):
        guard.dataReceived(stream[i : i + 1])
    assert subscribed.result == [b"subscribe", b"kegnet", 1]
    assert got == [events.MeterUpdate("k.flow0", 42, "other")] * 3
    guard.dataReceived(b"?garbage\r\n")
    assert transport.disconnecting and guard.problem is not None
    assert guard.problem.startswith("not a Redis server?")


# --- the bus's own judgement, on a fake clock (no Redis) -------------------


class _Recorded:
    """A bus on a Clock whose log lines are kept."""

    def __init__(self, *, core: bool = True, on_event: Any = None) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from kegtwist.bus.redis import KegnetBus, RedisTarget

        self.clock = Clock()
        self.lines: list[dict[str, Any]] = []
        self.received: list[events.Event] = []
        self.bus = KegnetBus(
            RedisTarget(),
            "kegnet",
            "me",
            on_event or self.received.append,
            reactor=self.clock,
            core=core,
        )
        self.bus.log = Logger(observer=self.lines.append)  # type: ignore[misc]

    def feed(self, raw: bytes) -> None:
        self.bus._received(b"kegnet", raw)

    def levels(self) -> list[str]:
        return [line["log_level"].name for line in self.lines]


def test_rejects_are_logged_at_most_once_per_ten_seconds_per_reason() -> None:
    r = _Recorded()
    for _ in range(500):
        r.feed(b"{not json")
        r.feed(b"[1]")
    assert r.bus.stats.rejected == 1000 and len(r.lines) == 2  # one per reason
    r.clock.advance(9.9)
    r.feed(b"{not json")
    assert len(r.lines) == 2
    r.clock.advance(0.2)
    r.feed(b"{not json")
    assert len(r.lines) == 3 and "500 more" in r.lines[-1]["more"]


def test_quit_event_from_the_wire_changes_nothing() -> None:
    r = _Recorded()
    for name in ("QuitEvent", "StartedEvent", "Ping", "SyncEvent"):
        r.feed(json.dumps({"event": name, "data": {}}).encode())
    assert r.received == [] and r.bus.stats.ignored == 4 and r.bus.stats.rejected == 0
    assert r.bus.stats.reasons == {"internal_event": 4}
    assert r.levels() == ["warn"]  # said once (rate-limited), acted on never


def test_own_echoes_are_dropped_and_counted() -> None:
    r = _Recorded()
    r.feed(events.encode(events.MeterUpdate("k.flow0", 5, "me")))
    r.feed(events.encode(events.MeterUpdate("k.flow0", 6, "someone")))
    r.feed(events.encode(events.MeterUpdate("k.flow0", 7)))  # a classic daemon: no origin
    assert [e.reading for e in r.received] == [6, 7]  # type: ignore[union-attr]
    assert r.bus.stats.echoes == 1 and r.lines == []


def test_a_failing_handler_is_logged_not_raised() -> None:
    def boom(event: events.Event) -> None:
        raise RuntimeError("handler bug")

    r = _Recorded(on_event=boom)
    for i in range(100):
        r.feed(events.encode(events.MeterUpdate("k.flow0", i)))
    assert r.bus.stats.handler_errors == 100 and r.bus.stats.decoded == 100
    assert r.levels() == ["critical"]  # log.failure, once in 10 s, with the traceback
    r.clock.advance(11)
    r.feed(events.encode(events.MeterUpdate("k.flow0", 1)))
    assert len(r.lines) == 2 and "99 more" in r.lines[-1]["more"]


def test_a_second_core_on_the_channel_is_an_error_once_per_origin() -> None:
    r = _Recorded()
    flow = events.FlowUpdate(1, "k.flow0", "active", None, 1.0, 2.0, 10, 3.0, "other-core")
    for _ in range(3):
        r.feed(events.encode(flow))
    r.feed(events.encode(dataclasses.replace(flow, origin="third-core")))
    assert r.levels() == ["error", "error"] and r.bus.stats.foreign_cores == 2
    assert len(r.received) == 4  # still handed on: a display may want it
    kegboard = _Recorded(core=False)  # a kegboard-only daemon expects a core
    kegboard.feed(events.encode(flow))
    assert kegboard.lines == [] and kegboard.bus.stats.foreign_cores == 0


def test_an_event_that_cannot_be_encoded_is_counted_not_raised() -> None:
    r = _Recorded()
    r.bus.publish(events.FlowUpdate(1, "k.flow0", "active", None, 1e300, 2.0, 1, 1.0))
    r.bus.publish(events.ThermoEvent("t", float("nan")))
    assert r.bus.stats.encode_failed == 2 and len(r.bus.queue) == 0
    r.bus.publish(events.ThermoEvent("t", 4.5))
    assert len(r.bus.queue) == 1  # not connected: queued


def test_queue_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        _Recorded().bus.__init__(  # type: ignore[misc]
            parse_redis_url("redis://h"), "kegnet", "me", print, queue_limit=0
        )


def test_more_urls() -> None:
    t = parse_redis_url("redis://user:p%40ss@[::1]:7000/1")
    assert t is not None and (t.username, t.password, t.host, t.port) == (
        "user",
        "p@ss",
        "::1",
        7000,
    )
    assert t.redacted() == "redis://user:***@[::1]:7000/1"
    assert parse_redis_url("redis://h?db=4").db == 4  # type: ignore[union-attr]
    for bad in (
        "http://h",
        "localhost:6379",
        "unix://",
        "redis://h/-1",
        "redis://h:0",
        "redis://[::1",
    ):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


# --- more against a real redis-server --------------------------------------


@pytest_twisted.inlineCallbacks
def test_events_held_back_by_the_in_flight_bound_still_go_out_in_order(
    redis_server: RedisServer, buses: list[Bus]
) -> Generator[Any, Any, None]:
    a, b = Bus(redis_server.url, "A", queue_limit=5), Bus(redis_server.url, "B")
    buses += [a, b]
    yield until(lambda: a.bus.connected and b.bus.connected)
    for i in range(9):
        a.bus.publish(events.MeterUpdate("k.flow0", i))
    assert a.bus.in_flight == 5 and len(a.bus.queue) == 4  # sent 5, 4 wait for replies
    yield until(lambda: len(b.received) == 9)
    assert [e.reading for e in b.received] == list(range(9))  # type: ignore[union-attr]
    assert a.bus.stats.dropped_queue_full == 0 and a.bus.in_flight == 0


@pytest_twisted.inlineCallbacks
def test_a_hung_redis_is_noticed_and_survived(
    redis_server: RedisServer, buses: list[Bus]
) -> Generator[Any, Any, None]:
    """SIGSTOP: connections stay open, nothing answers (as a dead host or a
    NAT that forgot us). PING finds out; after SIGCONT all comes back."""
    import os
    import signal

    a = Bus(redis_server.url, "A", reply_timeout=0.3, health_interval=0.2)
    b = Bus(redis_server.url, "B")
    buses += [a, b]
    yield until(lambda: a.bus.connected and b.bus.connected)
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        yield until(lambda: not a.bus.connected and a.bus.stats.health_failures >= 1)
        assert "no answer" in a.bus.last_error
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    yield until(lambda: a.bus.connected, seconds=15)
    b.bus.publish(events.ControllerConnectedEvent("kegboard"))
    yield until(lambda: events.ControllerConnectedEvent("kegboard", "B") in a.received)


@pytest_twisted.inlineCallbacks
def test_a_server_that_never_answers_does_not_hang_start_or_stop(
    buses: list[Bus],
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        port = silent.getHost().port
        a = Bus(f"redis://:pw@127.0.0.1:{port}/2", "A", reply_timeout=0.2)
        buses.append(a)
        yield until(lambda: "no answer" in a.bus.last_error)
        assert not a.bus.connected
        a.bus.publish(events.MeterUpdate("k.flow0", 1))
        assert len(a.bus.queue) == 1
        started = reactor.seconds()
        yield a.stop()
        assert reactor.seconds() - started < 2
    finally:
        yield silent.stopListening()


@pytest_twisted.inlineCallbacks
def test_an_unanswered_publish_drops_the_connection(
    buses: list[Bus],
) -> Generator[Any, Any, None]:
    """No AUTH, no SELECT: the publisher is up as soon as it connects; a
    PUBLISH without an answer in time counts as failed and the publisher
    connects again."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        a = Bus(f"redis://127.0.0.1:{silent.getHost().port}/0", "A", reply_timeout=0.2)
        buses.append(a)
        yield until(lambda: a.bus.publisher is not None)
        a.bus.publish(events.MeterUpdate("k.flow0", 1))
        assert a.bus.in_flight == 1
        yield until(lambda: a.bus.stats.publish_failed == 1 and a.bus.stats.connects >= 2)
        assert a.bus.in_flight == 0 and not a.bus.connected  # SUBSCRIBE never answered
        yield a.stop()
    finally:
        yield silent.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_server_that_is_not_redis_is_retried_quietly(
    buses: list[Bus],
) -> Generator[Any, Any, None]:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogPublisher

    class Http(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    lines: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(lines.append)
    web = reactor.listenTCP(0, Factory.forProtocol(Http), interface="127.0.0.1")
    try:
        a = Bus(f"redis://:pw@127.0.0.1:{web.getHost().port}/0", "A")
        buses.append(a)
        yield until(lambda: "not a Redis server?" in a.bus.last_error)
        assert not a.bus.connected
        yield a.stop()
    finally:
        globalLogPublisher.removeObserver(lines.append)
        yield web.stopListening()
    assert not [line for line in lines if line.get("log_failure") or line.get("isError")]


@pytest_twisted.inlineCallbacks
def test_auth_with_a_user_name(tmp_path: Any, buses: list[Bus]) -> Generator[Any, Any, None]:
    server = RedisServer(tmp_path, password="pw").start()
    try:
        a = Bus(f"redis://default:pw@127.0.0.1:{server.port}/3", "A")
        b = Bus(f"redis://:pw@127.0.0.1:{server.port}/3", "B")
        buses += [a, b]
        yield until(lambda: a.bus.connected and b.bus.connected)
        a.bus.publish(events.SetRelayOutputEvent("kegboard.relay0", "enabled"))
        yield until(lambda: len(b.received) == 1)
    finally:
        server.kill()


@pytest_twisted.inlineCallbacks
def test_unix_socket(tmp_path: Any, buses: list[Bus]) -> Generator[Any, Any, None]:
    import subprocess

    from redisd import redis_binary

    sock = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [redis_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield until(sock.exists)
        a, b = Bus(f"unix://{sock}?db=5", "A"), Bus(f"unix://{sock}?db=5", "B")
        buses += [a, b]
        yield until(lambda: a.bus.connected and b.bus.connected)
        a.bus.publish(events.ThermoEvent("kegboard.thermo-1", 4.5))
        yield until(lambda: b.received == [events.ThermoEvent("kegboard.thermo-1", 4.5, "A")])
    finally:
        process.kill()
        process.wait(5)


def test_foreign_origins_are_remembered_up_to_a_bound_then_rate_limited() -> None:
    from kegtwist.bus.redis import MAX_FOREIGN_ORIGINS

    r = _Recorded()
    flow = events.FlowUpdate(1, "k.flow0", "active", None, 1.0, 2.0, 10, 3.0)
    for i in range(10_000):
        r.feed(events.encode(dataclasses.replace(flow, origin=f"core-{i}")))
    assert len(r.bus._foreign_origins) == MAX_FOREIGN_ORIGINS
    assert r.levels() == ["error"] * (MAX_FOREIGN_ORIGINS + 1)  # then one per 10 s
    r.clock.advance(10)
    r.feed(events.encode(dataclasses.replace(flow, origin="one-more")))
    assert len(r.lines) == MAX_FOREIGN_ORIGINS + 2
    assert "9991 more" in r.lines[-1]["more"]


def test_the_rate_limiter_is_pure_and_bounded() -> None:
    from kegtwist.ratelimit import RateLimiter, suppressed_note

    limit = RateLimiter(60.0, burst=2, max_keys=3)
    assert [limit.allow("a", t) for t in (0, 1, 2, 59)] == [True, True, False, False]
    assert limit.note("a") == suppressed_note(2) == " (and 2 more like it since the last line)"
    assert limit.take_suppressed("a") == 0
    assert limit.allow("a", 60) and limit.allow("a", 61) and not limit.allow("a", 62)
    assert limit.allow("a", 30)  # the clock went back: a new window
    for key in ("b", "c", "d"):
        assert limit.allow(key, 100)
    assert len(limit._windows) == 3  # "a" forgotten, not grown
