"""Every row of the README's "every drink exactly once" table, in milliseconds.

The policy alone (pure), then the delivery loop carrying it out: the real
client, outbox and ``DeliveryService`` on a ``task.Clock``, talking real
HTTP (treq, twisted.web) to the fake Kegbot Server in memory through
``treq.testing.StubTreq``; a refused connection is injected in front of it.
No sockets, no sleeps: time moves only when a test advances the clock.
Real network errors on loopback stay in test_delivery.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakeserver import API_KEY, FakeKegbotServer
from treq.testing import StubTreq
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web import resource

from kegtwist.backoff import Backoff
from kegtwist.core.model import RecordDrink, RecordTemperature
from kegtwist.delivery import policy
from kegtwist.delivery.client import KegbotServerClient
from kegtwist.delivery.outbox import DrinkItem, Outbox, record_date
from kegtwist.delivery.policy import Action
from kegtwist.delivery.service import DeliveryService
from kegtwist.delivery.tap_sync import TapSyncService
from kegtwist.protocol.server_api import (
    Drink,
    ServerError,
    classify,
    matches,
    redirect_error,
)

WALL0 = 1_800_000_000.25
URL = "http://kegbot.test/api/"
MIB = 1024 * 1024


# --- the policy alone ------------------------------------------------------------------


def json_error(code: str, message: Any) -> bytes:
    import json

    return json.dumps({"error": {"code": code, "message": message}}).encode()


JSON = "application/json"
HTML = "text/html"
REFUSALS = [
    # (what the server answers, a drink with a drinker, a guest pour, a temperature)
    pytest.param(
        classify(401, JSON, json_error("BadApiKeyError", "API key does not exist")),
        Action.RETRY_CERTAIN, Action.RETRY_CERTAIN, Action.RETRY, id="401",
    ),
    pytest.param(
        classify(404, JSON, json_error("NotFoundError", "Meter is inactive")),
        Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="404 inactive meter",
    ),
    pytest.param(
        classify(400, JSON, json_error("BadRequestError", "No active keg at this tap")),
        Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="400 no keg",
    ),
    pytest.param(
        classify(400, JSON, json_error("BadRequestError", "Temperature out of bounds")),
        Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="400 temperature",
    ),
    pytest.param(
        classify(405, HTML, b""), Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="405"
    ),
    pytest.param(
        classify(418, JSON, b"{}"), Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="4xx"
    ),
    pytest.param(
        classify(500, JSON, json_error("ServerError", "CHECK constraint failed: ticks")),
        Action.DEAD_LETTER, Action.DEAD_LETTER, Action.DROP, id="500 negative ticks",
    ),
    pytest.param(
        classify(
            500,
            JSON,
            json_error(
                "ServerError", "An internal error occurred: User matching query does not exist."
            ),
        ),
        Action.GUEST_REPOST, Action.DEAD_LETTER, Action.DROP, id="500 unknown user",
    ),
    pytest.param(
        classify(400, JSON, json_error("BadRequestError", "Setup required")),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="400 setup required",
    ),
    pytest.param(
        classify(500, HTML, b"<h1>Server Error (500)</h1>"),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="500 html",
    ),
    pytest.param(
        classify(502, HTML, b"Bad Gateway"),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="502 proxy",
    ),
    pytest.param(
        redirect_error(URL + "taps/k.flow0", 302, "https://elsewhere.example/api/taps/k.flow0"),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="redirect",
    ),
    pytest.param(
        ServerError("unknown", "reply over 4 MiB (HTTP 200); connection dropped", status=200),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="reply over 4 MiB",
    ),
    pytest.param(
        ServerError("unknown", "no answer within 10 s"),
        Action.RETRY_UNCERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY, id="timeout",
    ),
    pytest.param(
        ServerError("unreachable", "cannot connect: ConnectionRefusedError"),
        Action.RETRY_CERTAIN, Action.RETRY_CERTAIN, Action.RETRY, id="connection refused",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("refusal", "drinker", "guest", "temperature"), REFUSALS)
def test_policy_for_each_refusal(
    refusal: ServerError, drinker: Action, guest: Action, temperature: Action
) -> None:
    decision = policy.drink_failed(refusal, "alice")
    assert decision.action is drinker
    assert policy.drink_failed(refusal, None).action is guest
    assert policy.temperature_failed(refusal).action is temperature
    # What is decided carries the server's words, and the status for the journal.
    assert (decision.reason, decision.status) == (refusal.reason, refusal.status)
    assert decision.backs_off == (drinker in (Action.RETRY_CERTAIN, Action.RETRY_UNCERTAIN))
    assert policy.health(refusal) == ("bad_key" if refusal.status == 401 else "down")


def test_policy_before_sending() -> None:
    assert policy.before_drink(uncertain=True).action is Action.LOOK_UP
    assert policy.before_drink(uncertain=False).action is Action.SEND
    stale = policy.before_temperature(301.0)
    assert (stale.action, stale.reason, stale.backs_off) == (Action.DROP, "stale: 301 s old", False)
    assert policy.before_temperature(300.0).action is Action.SEND  # 5 min: still sent
    assert policy.before_temperature(30.0, stale_after=10.0).action is Action.DROP


def test_match_rule_needs_time_ticks_and_drinker() -> None:
    item = DrinkItem(
        1, 1, "kegboard.flow0", 500, 100.0, "alice", None, WALL0, WALL0, 0.0, "idle",
        record_date(WALL0),
    )  # fmt: skip
    when = datetime.fromisoformat(record_date(WALL0))
    assert matches(item, Drink(7, 500, 100.0, when, "alice", 1, 0))
    assert matches(item, Drink(7, 500, 1.0, when.astimezone(), "alice", None, 9))  # same instant
    assert not matches(item, Drink(7, 501, 100.0, when, "alice", 1, 0))
    assert not matches(item, Drink(7, 500, 100.0, when, None, 1, 0))
    assert not matches(item, Drink(7, 500, 100.0, when + timedelta(microseconds=1), "alice", 1, 0))
    guest = DrinkItem(**{**item.__dict__, "username": None})
    assert matches(guest, Drink(7, 500, 100.0, when, None, 1, 0))
    assert not matches(guest, Drink(7, 500, 100.0, when, "alice", 1, 0))


# --- the loop carrying it out, over StubTreq ----------------------------------------------


class Api(resource.Resource):
    """The fake Kegbot Server as a resource; ``moved`` answers every request
    with a redirect instead (a proxy upgrading http, a moved server)."""

    isLeaf = True

    def __init__(self, fake: FakeKegbotServer) -> None:
        super().__init__()
        self.fake = fake
        self.moved: tuple[int, str] | None = None
        self.redirected = 0

    def render(self, request: Any) -> bytes | int:
        if self.moved is not None:
            self.redirected += 1
            status, location = self.moved
            request.setResponseCode(status)
            request.setHeader(b"location", location.encode())
            return b"<a href='elsewhere'>moved</a>"
        return self.fake.handle(request)


class Network:
    """What the client is given instead of its HTTP stack: StubTreq over
    ``api``, with connections that can be refused (the request never left)."""

    def __init__(self, api: Api) -> None:
        self.stub = StubTreq(api)
        self.refusing = False
        self.refused = 0

    def request(self, method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
        if self.refusing:
            self.refused += 1
            return defer.fail(error.ConnectionRefusedError("kegbot.test:80"))
        d: defer.Deferred[Any] = self.stub.request(method, url, **kwargs)
        return d


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.fake = FakeKegbotServer()  # never listens: StubTreq calls it in memory
        self.api = Api(self.fake)
        self.net = Network(self.api)
        self.clock = Clock()
        self.outbox = Outbox(tmp_path, fsync=False)
        self.outbox.open()
        self.client = KegbotServerClient(self.clock, URL, API_KEY, request=self.net.request)
        # The backoff without its jitter: 1, 2, 4 ... s exactly.
        backoff = Backoff(initial=1.0, factor=2.0, maximum=180.0, jitter=0.5, uniform=max)
        self.delivery = DeliveryService(
            self.outbox,
            self.client,
            self.clock,
            wall=lambda: WALL0 + self.clock.seconds(),
            backoff=backoff,
        )
        self.delivered: list[tuple[int, int]] = []
        self.delivery.listeners.append(lambda item, id: self.delivered.append((item.flow_id, id)))
        self.delivery.startService()

    def add(self, flow_id: int, ticks: int = 1000, user: str | None = "alice", **kw: Any) -> None:
        end = WALL0 + flow_id
        meter = kw.pop("meter", "kegboard.flow0")
        self.outbox.add_drink(
            RecordDrink(flow_id, meter, ticks, ticks * 0.367, user, None, end - 4, end, 4.0, "idle")
        )
        self.delivery.wake()

    def temperature(self, celsius: float, age: float = 0.0, sensor: str = "k.thermo-1") -> None:
        wall = WALL0 + self.clock.seconds() - age
        self.outbox.add_temperature(RecordTemperature(sensor, celsius, wall))
        self.delivery.wake()

    def asked(self) -> list[tuple[str, str]]:
        """What reached the server, in order."""
        return [(method, path) for method, path, _form, _ctype in self.fake.requests]

    def ops(self, seq: int = 1) -> list[str]:
        import json

        records = map(json.loads, self.outbox.path.read_text().splitlines())
        return [r["op"] for r in records if r.get("seq") == seq]

    def close(self) -> None:
        stopping = self.delivery.stopService()
        assert stopping.called
        self.outbox.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def logged() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error):
            events.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_nothing_connects_or_is_scheduled_before_it_starts(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    client = KegbotServerClient(reactor, URL, API_KEY)
    DeliveryService(Outbox(tmp_path / "state"), client, reactor)
    TapSyncService(client, lambda _: None, (), reactor)
    assert reactor.tcpClients == [] and reactor.getDelayedCalls() == []
    assert not (tmp_path / "state").exists()


POST = ("POST", "taps/kegboard.flow0")
LOOKUP = ("GET", "drinks")


def test_recorded_at_its_true_time_to_the_microsecond(rig: Rig) -> None:
    rig.fake.clock_offset = timedelta(hours=1)  # the server's clock does not matter
    rig.add(1)
    assert rig.asked() == [POST]
    [drink] = rig.fake.drinks
    assert datetime.fromisoformat(drink["time"]).timestamp() == WALL0 + 1
    assert rig.fake.requests[0][2]["record_date"] == "2027-01-15T08:00:01.250000+00:00"
    assert rig.fake.requests[0][3].startswith("application/x-www-form-urlencoded")
    assert rig.delivered == [(1, drink["id"])] and len(rig.outbox) == 0
    assert rig.ops() == ["add", "sending", "done"]


def test_cannot_connect_stays_queued_certain_and_retries_with_backoff(
    rig: Rig, logged: list[tuple[str, str]]
) -> None:
    rig.net.refusing = True
    rig.add(1)
    assert rig.delivery.state == "down" and rig.net.refused == 1
    [item] = rig.outbox.drinks()
    assert not item.uncertain  # it never left: no lookup needed
    assert rig.ops() == ["add", "sending", "certain"]
    for delay in (1, 2, 4, 8):  # 1 s doubling
        rig.clock.advance(delay - 0.001)
        refused = rig.net.refused
        rig.clock.advance(0.001)
        assert rig.net.refused == refused + 1
    assert [t for _, t in logged if "Kegbot Server unavailable" in t] == [
        "Kegbot Server unavailable (cannot connect: ConnectionRefusedError); "
        "1 item(s) wait in the outbox, retrying with backoff"
    ]  # once, not at every retry
    rig.net.refusing = False
    rig.clock.advance(16)
    assert rig.asked() == [POST]  # no lookup: it was certain
    assert len(rig.fake.drinks) == 1 and rig.delivery.state == "ok"


def test_backoff_is_capped_at_3_minutes(rig: Rig) -> None:
    rig.net.refusing = True
    rig.add(1)
    for _ in range(12):
        rig.clock.advance(180)
    refused = rig.net.refused
    rig.clock.advance(179.999)
    assert rig.net.refused == refused
    rig.clock.advance(0.001)
    assert rig.net.refused == refused + 1


def test_timeout_is_looked_up_before_it_is_sent_again(rig: Rig) -> None:
    rig.fake.hang_next(1, method="POST")  # the server takes it and never answers
    rig.add(1)
    rig.clock.advance(9.999)
    assert rig.delivery.state == "starting" and len(rig.outbox) == 1
    rig.clock.advance(0.001)  # the 10 s timeout
    assert rig.delivery.state == "down"
    assert rig.delivery.last_error == "no answer within 10 s"
    assert rig.outbox.drinks()[0].uncertain
    assert rig.ops() == ["add", "sending", "uncertain"]
    rig.clock.advance(1)
    assert rig.asked() == [POST, LOOKUP, POST]  # not found: sent again
    assert len(rig.fake.drinks) == 1 and len(rig.outbox) == 0


def test_dropped_after_commit_is_found_and_not_sent_again(rig: Rig) -> None:
    rig.fake.drop_after_commit_next(1)
    rig.add(1)
    assert rig.delivery.last_error == "connection dropped before the answer"
    assert len(rig.fake.drinks) == 1 and rig.outbox.drinks()[0].uncertain
    rig.clock.advance(1)
    assert rig.asked() == [POST, LOOKUP]
    assert len(rig.fake.drinks) == 1 and len(rig.outbox) == 0
    assert rig.delivered == [(1, rig.fake.drinks[0]["id"])]
    assert rig.outbox.stats.found_on_server == 1
    assert rig.ops() == ["add", "sending", "uncertain", "done"]


@pytest.mark.parametrize(
    ("status", "body", "ctype", "reason"),
    [
        (502, b"<h1>Bad Gateway</h1>", HTML, "HTTP 502 (text/html)"),
        (500, b"<h1>Server Error (500)</h1>", HTML, "HTTP 500 (text/html)"),
        (200, b"<html>a captive portal</html>", HTML, "unexpected reply: not JSON (text/html)"),
        (200, b'{"object": {"id": 5}}', JSON, "unexpected reply: missing 'ticks'"),
        (400, json_error("BadRequestError", "Setup required"), JSON, "Setup required"),
    ],
    ids=["502 proxy", "500 html", "odd 200", "odd json", "setup required"],
)
def test_an_answer_that_proves_nothing_is_looked_up_before_any_resend(
    rig: Rig, status: int, body: bytes, ctype: str, reason: str
) -> None:
    rig.fake.fail_next(1, status, body, ctype, method="POST")
    rig.add(1)
    assert rig.delivery.state == "down" and rig.delivery.last_error == reason
    assert rig.outbox.drinks()[0].uncertain
    rig.clock.advance(1)
    assert rig.asked() == [POST, LOOKUP, POST]
    assert len(rig.fake.drinks) == 1


def test_bad_key_keeps_everything_and_says_so_once(rig: Rig, logged: list[tuple[str, str]]) -> None:
    rig.fake.api_key = "another-key"
    rig.add(1)
    rig.add(2)
    assert rig.delivery.state == "bad_key"
    for delay in (1, 2, 4):
        rig.clock.advance(delay)
    assert rig.asked() == [POST] * 4  # the first drink, retried; no lookup: nothing stored
    assert not any(item.uncertain for item in rig.outbox.drinks())
    assert len(rig.outbox) == 2 and rig.fake.drinks == []
    [said] = [t for level, t in logged if level == "error"]
    assert "refused the API key" in said and "BadApiKeyError" in said
    assert "Nothing is lost" in said and API_KEY not in said
    rig.fake.api_key = API_KEY  # the owner fixed the server's side
    rig.clock.advance(8)
    assert [d["ticks"] for d in rig.fake.drinks] == [1000, 1000] and len(rig.outbox) == 0
    assert rig.delivery.state == "ok"


@pytest.mark.parametrize(
    ("setup", "status", "reason"),
    [
        ("unknown meter", 404, "FlowMeter matching query does not exist."),
        ("inactive meter", 404, "Meter is inactive"),
        ("no keg", 400, "No active keg at this tap"),
    ],
)
def test_refused_for_good_is_a_dead_letter_and_the_next_drink_goes_on(
    rig: Rig, logged: list[tuple[str, str]], setup: str, status: int, reason: str
) -> None:
    meter = "kegboard.flow1"
    if setup == "unknown meter":
        meter = "kegboard.flow9"
    elif setup == "inactive meter":
        del rig.fake.taps[meter]
    else:
        rig.fake.taps[meter]["keg"] = None
    rig.add(1, meter=meter)
    rig.add(2)
    # No backoff: the clock never moved, and the next drink is recorded.
    assert [d["ticks"] for d in rig.fake.drinks] == [1000]
    assert rig.delivered == [(2, 1)] and len(rig.outbox) == 0
    [letter] = rig.outbox.dead.values()
    assert (letter.item.flow_id, letter.status, letter.reason) == (1, status, reason)
    assert rig.ops(1) == ["add", "sending", "dead"]
    assert rig.outbox.stats.drinks_dead == 1
    [said] = [t for level, t in logged if level == "error"]
    assert f"Server refused the drink for flow 1 on {meter} (1000 ticks): {reason}" in said


def test_unknown_drinker_is_reposted_as_a_guest_pour(rig: Rig) -> None:
    rig.add(1, user="mallory")
    assert rig.asked() == [POST, POST]  # at once, no backoff
    assert [f.get("username") for _, _, f, _ in rig.fake.requests] == ["mallory", None]
    assert [(d["user_id"], d["ticks"]) for d in rig.fake.drinks] == [("guest", 1000)]
    [note] = rig.outbox.dead.values()
    assert note.item.username == "mallory" and note.status == 500
    assert note.reason.endswith("User matching query does not exist. (re-posted as a guest pour)")
    assert rig.ops(1) == ["add", "sending", "guest", "sending", "done"]
    assert len(rig.outbox) == 0 and rig.delivered == [(1, 1)]


def test_redirect_is_refused_logged_with_its_location_and_looked_up_before_resend(
    rig: Rig, logged: list[tuple[str, str]]
) -> None:
    rig.api.moved = (301, "https://kegbot.example/api/taps/kegboard.flow0")
    rig.add(1)
    assert rig.api.redirected == 1  # not followed
    assert rig.outbox.drinks()[0].uncertain
    [said] = [t for _, t in logged]
    assert "redirect refused: HTTP 301 to https://kegbot.example/api/taps/kegboard.flow0" in said
    assert "set --api-url" in said and API_KEY not in said
    rig.clock.advance(1)
    assert rig.api.redirected == 2  # the lookup, refused the same way; logged once
    assert len(logged) == 1
    rig.api.moved = None
    rig.clock.advance(2)
    assert rig.asked() == [LOOKUP, POST]
    assert len(rig.fake.drinks) == 1 and len(rig.outbox) == 0


def test_reply_over_4_mib_is_dropped_and_the_drink_looked_up_before_resend(rig: Rig) -> None:
    big = b'{"object": {}, "pad": "' + b"x" * (4 * MIB) + b'"}'
    rig.fake.fail_next(1, 200, big, JSON, method="POST")
    rig.add(1)
    assert rig.delivery.last_error == "reply over 4 MiB (HTTP 200); connection dropped"
    assert rig.outbox.drinks()[0].uncertain
    rig.clock.advance(1)
    assert rig.asked() == [POST, LOOKUP, POST]
    assert len(rig.fake.drinks) == 1


def test_tap_list_over_4_mib_keeps_the_last_tap_table(rig: Rig) -> None:
    changes: list[Any] = []
    sync = TapSyncService(rig.client, changes.append, (), rig.clock)
    sync.startService()
    try:
        known = sync.taps
        assert [t.meter for t in known] == ["kegboard.flow0", "kegboard.flow1"]
        padded = b'{"objects": [], "pad": "' + b"x" * (4 * MIB) + b'"}'
        rig.fake.fail_next(1, 200, padded, JSON, method="GET", path="taps")
        rig.clock.advance(60)
        assert sync.reachable is False and sync.taps == known and len(changes) == 1
    finally:
        sync.stopService()


def test_temperature_refused_is_dropped_and_counted(rig: Rig) -> None:
    rig.temperature(95.0)  # out of bounds: 400
    rig.temperature(4.5, sensor="k.thermo-2")
    assert [t["temperature_c"] for t in rig.fake.thermo.values()] == [4.5]
    assert rig.outbox.stats.temperatures_dropped == 1 and len(rig.outbox) == 0
    assert rig.delivery.state == "ok"  # a refusal is not an outage


def test_temperature_older_than_5_minutes_is_dropped_unsent(rig: Rig) -> None:
    rig.temperature(3.0, age=301.0)
    rig.temperature(4.0, age=299.0, sensor="k.thermo-2")
    assert rig.asked() == [("POST", "thermo-sensors/k.thermo-2")]
    assert [t["temperature_c"] for t in rig.fake.thermo.values()] == [4.0]
    assert rig.ops(1) == ["add", "drop"] and rig.outbox.stats.temperatures_dropped == 1


def test_temperature_waits_out_an_outage_until_it_is_too_old(rig: Rig) -> None:
    rig.net.refusing = True
    rig.temperature(4.0)
    for delay in (1, 2, 4, 8, 16, 32, 64, 128):
        rig.clock.advance(delay)
    assert rig.net.refused == 9 and len(rig.outbox) == 1  # 255 s old: retried, not dropped
    rig.net.refusing = False
    rig.clock.advance(180)  # 435 s old: the server would date it now
    assert rig.fake.requests == [] and rig.net.refused == 9 and len(rig.outbox) == 0
    assert rig.outbox.stats.temperatures_dropped == 1
