"""The Kegnet bus against a real redis-server: reconnects, resubscribes,
bounded queue, passwords, hostile input."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest
import pytest_twisted
from kegnetkit import Bus, until
from redisd import RedisServer, free_port

from kegtwist import events
from kegtwist.kegnet import parse_redis_url


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
    assert stats.reasons["oversized"] == 10 and stats.reasons["invalid_json"] >= 1000
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


def test_subscriber_reader_handles_any_chunking_and_replies() -> None:
    """The subscriber's own RESP reader: pushes split anywhere, replies to
    SUBSCRIBE in between, garbage drops the connection."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from kegtwist.kegnet import KegnetBus, RedisTarget, _Link

    got: list[events.Event] = []
    bus = KegnetBus(RedisTarget(), "kegnet", "me", got.append, reactor=Clock())
    protocol = _Link(bus, subscriber=True)._make_protocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    payload = events.encode(events.MeterUpdate("k.flow0", 42, "other"))
    push = b"*3\r\n$7\r\nmessage\r\n$6\r\nkegnet\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    stream = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nkegnet\r\n:1\r\n" + push * 3
    for i in range(len(stream)):
        protocol.dataReceived(stream[i : i + 1])
    assert got == [events.MeterUpdate("k.flow0", 42, "other")] * 3
    protocol.dataReceived(b"?garbage\r\n")
    assert transport.disconnecting
