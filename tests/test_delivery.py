"""Outbox delivery against a real HTTP server on loopback: real network errors.

A refused connection, a connection dropped after the server committed, a
server that never answers, and stops that cancel requests on real
connections.  Backoff sleeps run on an injected Clock; HTTP runs on the
real reactor.  The rules themselves (every row of the README's table) are
tested in milliseconds in test_delivery_rules.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import until
from fakeserver import FakeKegbotServer
from twisted.internet import defer
from twisted.internet.task import Clock

from kegtwist.core.model import RecordDrink
from kegtwist.delivery.client import KegbotServerClient
from kegtwist.delivery.outbox import Outbox
from kegtwist.delivery.service import DeliveryService

pytestmark = pytest.mark.integration
WALL0 = 1_800_000_000.25


def drink(
    flow_id: int, ticks: int = 1000, user: str | None = "alice", meter: str = "kegboard.flow0"
) -> RecordDrink:
    end = WALL0 + flow_id
    return RecordDrink(
        flow_id, meter, ticks, ticks * 0.367, user, "core.rfid", end - 4, end, 4.0, "idle"
    )


class Rig:
    def __init__(self, tmp_path: Path, key: str = "test-key", timeout: float = 5.0) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.fake = FakeKegbotServer()
        self.fake.listen(reactor)
        self.clock = Clock()
        self.outbox = Outbox(tmp_path)
        self.outbox.open()
        self.client = KegbotServerClient(reactor, self.fake.url, key, timeout=timeout)
        self.delivery = DeliveryService(
            self.outbox, self.client, self.clock, wall=lambda: WALL0 + 60
        )
        self.delivered: list[tuple[int, int]] = []
        self.delivery.listeners.append(
            lambda item, drink_id: self.delivered.append((item.flow_id, drink_id))
        )

    def add(self, record: RecordDrink) -> None:
        self.outbox.add_drink(record)
        self.delivery.wake()

    def retry_now(self) -> None:
        self.clock.advance(200)  # past any backoff

    @defer.inlineCallbacks
    def close(self) -> Any:
        if self.delivery.running:
            yield self.delivery.stopService()
        yield self.client.close()
        yield self.fake.close()
        self.outbox.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    pytest_twisted.blockon(r.close())


def server_drinks(fake: FakeKegbotServer) -> list[tuple[int, str, str]]:
    return [(d["ticks"], d["user_id"], d["time"]) for d in fake.drinks]


@pytest_twisted.inlineCallbacks
def test_long_outage_then_recorded_once_in_order(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    port = r.fake.port.getHost().port
    yield r.fake.close()  # the server is down
    try:
        r.delivery.startService()
        for flow_id in (1, 2, 3):
            r.add(drink(flow_id, ticks=100 * flow_id))
        yield until(lambda: r.delivery.state == "down")
        for _ in range(
            8
        ):  # half an hour of backoff, capped at 3 minutes (each refusal takes 0.3 s)
            r.clock.advance(180)
            yield until(lambda: r.delivery._sleep is not None and not r.delivery._sleep.called)
        assert r.fake.drinks == []
        assert len(r.outbox) == 3
        r.fake.listen(r.reactor, port)
        r.retry_now()
        yield until(lambda: len(r.delivered) == 3)
        assert [d[0] for d in server_drinks(r.fake)] == [100, 200, 300]
        assert r.delivery.state == "ok"
    finally:
        yield r.close()


@pytest_twisted.inlineCallbacks
def test_connection_dropped_after_commit_gives_exactly_one_drink(rig: Rig) -> Any:
    rig.fake.drop_after_commit_next(1)
    rig.delivery.startService()
    rig.add(drink(1))
    yield until(lambda: rig.delivery.state == "down")
    assert len(rig.fake.drinks) == 1  # the server committed it
    rig.retry_now()
    yield until(lambda: rig.delivered)
    assert len(rig.fake.drinks) == 1
    assert rig.outbox.stats.found_on_server == 1
    assert rig.delivered == [(1, rig.fake.drinks[0]["id"])]


@pytest_twisted.inlineCallbacks
def test_hung_server_times_out_and_never_duplicates(tmp_path: Path) -> Any:
    r = Rig(tmp_path, timeout=0.3)
    try:
        r.fake.hang_next(1, method="POST")
        r.delivery.startService()
        r.add(drink(1))
        yield until(lambda: r.delivery.state == "down")
        assert r.delivery.last_error == "no answer within 0.3 s"  # not "cancelled"
        assert r.outbox.drinks()[0].uncertain
        r.retry_now()
        yield until(lambda: r.delivered)
        assert len(r.fake.drinks) == 1
        assert [q[:2] for q in r.fake.requests] == [
            ("POST", "taps/kegboard.flow0"),
            ("GET", "drinks"),  # looked up before it was sent again
            ("POST", "taps/kegboard.flow0"),
        ]
    finally:
        yield r.close()


# --- stopping: pours the stop ended are delivered, whatever came before ---------


def journal_ops(outbox: Outbox, seq: int) -> list[str]:
    import json

    records = map(json.loads, outbox.path.read_text().splitlines())
    return [r["op"] for r in records if r.get("seq") == seq]


def stop(delivery: DeliveryService) -> defer.Deferred[None]:
    """Stops; fails (rather than hanging, or being cancelled into looking
    done) unless the stop itself finishes."""
    stopping = delivery.stopService()
    return until(lambda: stopping.called)


@pytest_twisted.inlineCallbacks
def test_stop_delivers_the_first_drink_of_the_process(rig: Rig) -> Any:
    """The drink of a pour the stop itself ended is the first delivery:
    the loop has never seen the server answer (state "starting")."""
    rig.delivery.drain_seconds = 2.0
    rig.delivery.startService()
    rig.add(drink(1))  # the request leaves at once, on a new connection
    assert rig.delivery.state == "starting"
    yield stop(rig.delivery)
    assert [(d["ticks"], d["user_id"]) for d in rig.fake.drinks] == [(1000, "alice")]
    assert len(rig.outbox) == 0
    assert journal_ops(rig.outbox, 1) == ["add", "sending", "done"]


@pytest_twisted.inlineCallbacks
def test_stop_after_an_outage_tries_once_more_without_waiting_for_backoff(
    tmp_path: Path,
) -> Any:
    r = Rig(tmp_path)
    r.delivery.drain_seconds = 2.0
    port = r.fake.port.getHost().port
    yield r.fake.close()
    try:
        r.delivery.startService()
        r.add(drink(1))
        yield until(lambda: r.delivery.state == "down")
        r.fake.listen(r.reactor, port)  # back up, the loop still backing off
        yield stop(r.delivery)
        assert [d["ticks"] for d in r.fake.drinks] == [1000]
        assert len(r.outbox) == 0
    finally:
        yield r.close()


@pytest_twisted.inlineCallbacks
def test_stop_with_the_server_down_keeps_the_drink_certain_and_returns_at_once(
    tmp_path: Path,
) -> Any:
    """One more try, refused at once: no wait for the drain bound (the
    Clock never advances), and the drink is not "outcome unknown"."""
    r = Rig(tmp_path)
    r.delivery.drain_seconds = 2.0
    yield r.fake.close()
    try:
        r.delivery.startService()
        r.add(drink(1))
        yield until(lambda: r.delivery.state == "down")
        yield stop(r.delivery)
        [item] = r.outbox.drinks()
        assert not item.uncertain
    finally:
        yield r.close()


@pytest_twisted.inlineCallbacks
def test_stop_abandons_a_hung_request_at_the_drain_bound(rig: Rig) -> Any:
    """The server got the request and never answered: the drink is
    uncertain (looked up at the next start), and the stop does not wait
    for a backoff (the Clock would never end it)."""
    rig.delivery.drain_seconds = 2.0
    rig.fake.hang_next(1, method="POST")
    rig.delivery.startService()
    rig.add(drink(1))
    yield until(lambda: rig.fake.hung)
    stopping = rig.delivery.stopService()
    assert not stopping.called
    rig.clock.advance(2.0)  # the drain bound
    yield until(lambda: stopping.called)
    [item] = rig.outbox.drinks()
    assert item.uncertain
    assert journal_ops(rig.outbox, 1) == ["add", "sending", "uncertain"]


@pytest_twisted.inlineCallbacks
def test_stop_without_drain_cancels_an_in_flight_request_promptly(rig: Rig) -> Any:
    rig.fake.hang_next(1, method="POST")
    rig.delivery.startService()
    rig.add(drink(1))
    yield until(lambda: rig.fake.hung)
    yield stop(rig.delivery)
    assert rig.outbox.drinks()[0].uncertain
