"""What the Kegbot Server client must never do, whatever the server answers.

The API key goes only to the configured origin (a redirect is refused and
says where it pointed); no reply is read past 4 MiB (memory stays flat); a
token seen many times is looked up once.  Real twisted.web servers on
loopback, a ``task.Clock`` where the test is about time, and one real
``twistd -n kegbot`` process.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from boardkit import guard
from daemonkit import FAST_POURS, Daemon, eventually, stop, until
from fakeserver import API_KEY, FakeKegbotServer
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web import resource, server

from kegtwist.boards.simulator import PtyKegboard
from kegtwist.core import TokenLookupResult
from kegtwist.core.inputs import TokenEvent
from kegtwist.core.model import RecordDrink
from kegtwist.daemon.compose import build
from kegtwist.daemon.options import Options
from kegtwist.delivery.client import KegbotServerClient
from kegtwist.delivery.outbox import Outbox
from kegtwist.delivery.service import DeliveryService
from kegtwist.delivery.tap_sync import TapSyncService
from kegtwist.protocol.server_api import ServerError

SECRET = "kegtwist-secret-key-7c1e9a"  # must never reach another origin or the log
MIB = 1024 * 1024


def failure_of(d: defer.Deferred[Any]) -> defer.Deferred[ServerError]:
    """The ServerError ``d`` fails with (an AssertionError if it succeeds)."""

    def succeeded(result: Any) -> None:
        raise AssertionError(f"expected a ServerError, got {result!r}")

    def failed(failure: Any) -> ServerError:
        failure.trap(ServerError)
        error: ServerError = failure.value
        return error

    return guard(d.addCallbacks(succeeded, failed))


# --- loopback servers ------------------------------------------------------------------


class Recorder(resource.Resource):
    """Another origin: records every request's headers, answers empty lists."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []

    def render(self, request: Any) -> bytes:
        headers = {
            name.decode().lower(): [v.decode() for v in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"objects": [], "object": {}, "meta": {"result": "ok"}}).encode()

    def keys_seen(self) -> list[str]:
        return [k for _, _, headers in self.requests for k in headers.get("x-kegbot-api-key", [])]


class Redirector(resource.Resource):
    """Answers every request with ``status`` to ``target`` + the request's path."""

    isLeaf = True

    def __init__(self, target: str, status: int = 302) -> None:
        super().__init__()
        self.target = target
        self.status = status
        self.redirected: list[str] = []

    def render(self, request: Any) -> bytes:
        path = request.uri.decode()
        self.redirected.append(path)
        request.setResponseCode(self.status)
        request.setHeader(b"location", (self.target + path).encode())
        request.setHeader(b"content-type", b"text/html")
        return b"<a href='elsewhere'>moved</a>"


class MovedToV1(resource.Resource):
    """The same origin: ``/api/X`` answers ``status`` to the relative
    ``/api/v1/X``, which the fake Kegbot Server serves."""

    isLeaf = True

    def __init__(self, fake: FakeKegbotServer, status: int) -> None:
        super().__init__()
        self.fake = fake
        self.status = status

    def render(self, request: Any) -> bytes | int:
        path = request.uri.decode()
        if path.startswith("/api/v1/"):
            return self.fake.handle(request)
        request.setResponseCode(self.status)
        request.setHeader(b"location", ("/api/v1/" + path[len("/api/") :]).encode())
        return b""


def vm_rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Flood(resource.Resource):
    """A reply of ``total`` bytes, produced 64 KiB at a time as the socket
    takes them (so this server holds none of it), sampling RSS as it goes."""

    isLeaf = True
    chunk = b" " * (64 * 1024)

    def __init__(self, total: int, declare_length: bool) -> None:
        super().__init__()
        self.total = total
        self.declare_length = declare_length
        self.sent = 0
        self.peak_rss = 0
        self.ended: defer.Deferred[str] = defer.Deferred()

    def render(self, request: Any) -> int:
        request.setHeader(b"content-type", b"application/json")
        if self.declare_length:
            request.setHeader(b"content-length", str(self.total).encode())
        request.notifyFinish().addCallbacks(
            lambda _: self.ended.callback("finished"), lambda _: self.ended.callback("dropped")
        )
        flood = self

        class Producer:
            stopped = False

            def resumeProducing(self) -> None:
                if self.stopped:
                    return
                flood.peak_rss = max(flood.peak_rss, vm_rss())
                if flood.sent >= flood.total:
                    request.unregisterProducer()
                    request.finish()
                    return
                request.write(flood.chunk)
                flood.sent += len(flood.chunk)

            def pauseProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                self.stopped = True

        request.registerProducer(Producer(), False)
        return server.NOT_DONE_YET


@pytest.fixture
def listen() -> Iterator[Callable[[resource.Resource], str]]:
    """Serves a resource on a loopback port of its own; gives its base URL."""
    from twisted.internet import reactor

    ports: list[Any] = []

    def start(root: resource.Resource) -> str:
        port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def client_for() -> Iterator[Callable[[str], KegbotServerClient]]:
    from twisted.internet import reactor

    clients: list[KegbotServerClient] = []

    def make(api_url: str) -> KegbotServerClient:
        client = KegbotServerClient(reactor, api_url, SECRET, timeout=5.0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        pytest_twisted.blockon(client.close())


def drink_now(client: KegbotServerClient) -> defer.Deferred[Any]:
    return defer.ensureDeferred(
        client.record_drink("kegboard.flow0", 300, record_date=datetime.now(UTC))
    )


# --- redirects ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_redirect_to_another_origin_is_refused_and_never_carries_the_key(
    listen: Callable[[resource.Resource], str],
    client_for: Callable[[str], KegbotServerClient],
) -> Any:
    elsewhere = Recorder()
    other = listen(elsewhere)
    first = Redirector(other)
    client = client_for(listen(first) + "/api/")

    for call in (
        lambda: defer.ensureDeferred(client.taps()),
        lambda: defer.ensureDeferred(client.lookup_token("core.rfid", "deadbeef")),
        lambda: drink_now(client),
    ):
        error = yield failure_of(call())
        assert error.kind == "transient", error
        assert error.status == 302
        assert "redirect refused" in error.reason
        assert f"{other}/api/" in error.reason  # names the Location
        assert "another origin" in error.reason
        assert SECRET not in str(error) and SECRET not in repr(error)

    assert first.redirected == [
        "/api/taps",
        "/api/auth-tokens/core.rfid/deadbeef",
        "/api/taps/kegboard.flow0",
    ]
    assert elsewhere.requests == []  # not followed at all
    assert elsewhere.keys_seen() == []


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_same_origin_redirect_is_refused_too_and_a_drink_is_never_re_sent_by_it(
    listen: Callable[[resource.Resource], str],
    client_for: Callable[[str], KegbotServerClient],
) -> Any:
    """Decision: no redirect is followed, not even within the origin (a
    302 would turn a drink POST into a GET, a 307 would send it again)."""
    fake = FakeKegbotServer(api_key=SECRET)
    for status in (302, 307):
        client = client_for(listen(MovedToV1(fake, status)) + "/api/")
        error = yield failure_of(defer.ensureDeferred(client.taps()))
        assert error.kind == "transient" and error.status == status
        assert "within the same server" in error.reason
        assert "/api/v1/taps" in error.reason
        error = yield failure_of(drink_now(client))
        assert error.kind == "transient" and "/api/v1/taps/kegboard.flow0" in error.reason
    assert fake.requests == []  # the target was never asked
    assert fake.drinks == []


def test_https_to_http_redirect_is_refused_and_the_key_stays_on_its_origin() -> None:
    """No https server on loopback here: the policy and the header guard."""
    from twisted.internet import reactor

    from kegtwist.protocol.server_api import origin, redirect_error

    error = redirect_error("https://kegbot.example/api/taps", 301, "http://kegbot.example/api/taps")
    assert error.kind == "transient" and error.status == 301
    assert "from https to http" in error.reason
    assert "http://kegbot.example/api/taps" in error.reason

    error = redirect_error("https://kegbot.example/api/taps", 302, "//other.example:8443/x")
    assert "another origin" in error.reason and "https://other.example:8443/x" in error.reason
    error = redirect_error("http://h/api/taps", 302, "http://user:pw@evil.example/x")
    assert "pw" not in error.reason and "http://evil.example/x" in error.reason
    assert "without a Location" in redirect_error("http://h/api/taps", 302, None).reason

    assert origin("https://Kegbot.Example/api/") == ("https", "kegbot.example", 443)
    assert origin("http://kegbot.example:80/api/") == origin("http://kegbot.example/x")
    client = KegbotServerClient(reactor, "https://kegbot.example/api", SECRET)
    key = b"X-Kegbot-Api-Key"
    assert client._headers("https://kegbot.example/api/taps")[key] == [SECRET.encode()]
    for elsewhere in (
        "http://kegbot.example/api/taps",  # https -> http: never in clear
        "https://kegbot.example:8443/api/taps",
        "https://other.example/api/taps",
    ):
        assert key not in client._headers(elsewhere), elsewhere
    assert SECRET not in repr(client)


# --- the 4 MiB cap -----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
@pytest_twisted.inlineCallbacks
def test_reply_over_4_mib_is_dropped_and_memory_stays_flat(
    declared: bool,
    listen: Callable[[resource.Resource], str],
    client_for: Callable[[str], KegbotServerClient],
) -> Any:
    flood = Flood(64 * MIB, declare_length=declared)
    client = client_for(listen(flood) + "/api/")
    gc.collect()
    before = vm_rss()
    error = yield failure_of(defer.ensureDeferred(client.taps()))
    after = vm_rss()
    grown = max(flood.peak_rss, after) - before
    assert grown < 20 * MIB, f"RSS grew by {grown / MIB:.1f} MiB ({error})"
    assert error.kind == "unknown", error
    assert "reply over 4 MiB" in error.reason
    assert (yield guard(flood.ended)) == "dropped"  # the connection was closed on it
    assert flood.sent < 32 * MIB, flood.sent


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_tap_table_stays_when_get_taps_answers_over_4_mib(
    fake_server: FakeKegbotServer, tmp_path: Path
) -> Any:
    from twisted.internet import reactor

    client = KegbotServerClient(reactor, fake_server.url, API_KEY)
    clock = Clock()
    changes: list[Any] = []
    sync = TapSyncService(client, changes.append, (), clock)
    try:
        sync.startService()
        yield until(lambda: sync.reachable is True)
        known = sync.taps
        assert [t.meter for t in known] == ["kegboard.flow0", "kegboard.flow1"]
        # A valid JSON tap list with no taps, padded past the cap.
        padded = b'{"objects": [], "meta": {"result": "ok"}, "pad": "' + b"x" * (5 * MIB) + b'"}'
        fake_server.fail_next(status=200, body=padded, content_type="application/json")
        clock.advance(60)
        yield until(lambda: sync.reachable is False)
        assert sync.taps == known
        assert len(changes) == 1  # only the first table was ever fed
    finally:
        yield sync.stopService()
        yield client.close()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_drink_post_answered_over_4_mib_is_looked_up_before_it_is_sent_again(
    fake_server: FakeKegbotServer, tmp_path: Path
) -> Any:
    from twisted.internet import reactor

    client = KegbotServerClient(reactor, fake_server.url, API_KEY)
    clock = Clock()
    outbox = Outbox(tmp_path)
    outbox.open()
    delivery = DeliveryService(outbox, client, clock, wall=lambda: 1_800_000_060.0)
    try:
        fake_server.fail_next(
            status=200,
            body=b'{"object": {}, "pad": "' + b"x" * (5 * MIB) + b'"}',
            content_type="application/json",
            method="POST",
            path="taps/",
        )
        delivery.startService()
        end = 1_800_000_001.25
        outbox.add_drink(
            RecordDrink(1, "kegboard.flow0", 300, 110.0, None, None, end - 4, end, 4.0, "idle")
        )
        delivery.wake()
        yield until(lambda: delivery.state == "down")
        assert delivery.last_error is not None and "reply over 4 MiB" in delivery.last_error
        clock.advance(200)  # past the backoff
        yield until(lambda: len(outbox) == 0)
        asked = [(method, path) for method, path, _, _ in fake_server.requests]
        assert asked == [
            ("POST", "taps/kegboard.flow0"),
            ("GET", "drinks"),  # outcome unknown: looked up first
            ("POST", "taps/kegboard.flow0"),
        ]
        assert len(fake_server.drinks) == 1
    finally:
        yield delivery.stopService()
        yield client.close()
        outbox.close()


# --- token lookups -------------------------------------------------------------------------


def test_600_presentations_make_one_lookup_reused_for_2_s() -> None:
    from kegtwist.delivery.token_lookup import SharedLookups

    clock = Clock()
    asked: list[tuple[str, str, defer.Deferred[TokenLookupResult]]] = []

    def resolver(device: str, value: str) -> defer.Deferred[TokenLookupResult]:
        d: defer.Deferred[TokenLookupResult] = defer.Deferred()
        asked.append((device, value, d))
        return d

    lookups = SharedLookups(resolver, clock)
    answers: list[TokenLookupResult] = []
    for _ in range(600):
        lookups("core.rfid", "0badc0de").addCallback(answers.append)
        clock.advance(0.001)
    assert len(asked) == 1 and answers == []  # in flight: shared

    nobody = TokenLookupResult("core.rfid", "0badc0de", None, False)
    asked[0][2].callback(nobody)
    answered_at = clock.seconds()
    assert answers == [nobody] * 600

    for _ in range(199):  # seen again within 2 s of the answer: no request
        clock.advance(0.01)
        lookups("core.rfid", "0badc0de").addCallback(answers.append)
    assert len(asked) == 1 and len(answers) == 799 and answers[-1] is nobody

    lookups("core.onewire", "0badc0de")  # another token: its own lookup
    assert len(asked) == 2

    clock.advance(answered_at + 2.0 - clock.seconds())  # 2 s after the answer: asked again
    late = lookups("core.rfid", "0badc0de")
    assert len(asked) == 3 and not late.called
    alice = TokenLookupResult("core.rfid", "0badc0de", "alice", True)
    asked[2][2].callback(alice)
    assert late.result is alice


def test_a_failed_lookup_is_shared_and_a_cancelled_caller_leaves_the_others() -> None:
    from kegtwist.delivery.token_lookup import SharedLookups

    clock = Clock()
    pending: list[defer.Deferred[TokenLookupResult]] = []

    def resolver(device: str, value: str) -> defer.Deferred[TokenLookupResult]:
        pending.append(defer.Deferred())
        return pending[-1]

    lookups = SharedLookups(resolver, clock)
    first, second = lookups("d", "v"), lookups("d", "v")
    first.cancel()
    first.addErrback(lambda f: f.trap(defer.CancelledError))
    errors: list[str] = []
    second.addErrback(lambda f: errors.append(f.getErrorMessage()))
    pending[0].errback(RuntimeError("resolver bug"))
    assert errors == ["resolver bug"] and len(pending) == 1
    again: list[str] = []
    lookups("d", "v").addErrback(lambda f: again.append(f.getErrorMessage()))
    assert again == ["resolver bug"] and len(pending) == 1


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_a_flood_of_one_token_asks_the_server_once_per_2_s(
    fake_server: FakeKegbotServer, tmp_path: Path
) -> Any:
    """The daemon as built: 600 frames of a token nobody owns, each one
    after the previous was answered (a reader repeating it)."""
    from twisted.internet import reactor

    options = Options()
    options.parseOptions(
        ["--kegboard", "none", "--state-dir", str(tmp_path), "--api-url", fake_server.url,
         "--api-key", API_KEY, "--redis-url", "none"]
    )  # fmt: skip
    clock = Clock()
    daemon = build(options, reactor, clock=clock, monotonic=clock.seconds)
    assert daemon.core is not None
    core = daemon.core.core
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("Token {device}/{token}") and event.get(
            "log_level"
        ) in (LogLevel.warn, LogLevel.error):
            warnings.append(event["log_format"])

    def lookups() -> int:
        return sum(1 for r in fake_server.requests if r[1].startswith("auth-tokens/"))

    globalLogPublisher.addObserver(observe)
    daemon.startService()
    try:
        for _ in range(600):
            daemon.core.feed(TokenEvent("core.rfid", "0badc0de", True))
            yield until(lambda: not core.pending)
            clock.advance(0.001)
        assert lookups() == 1
        clock.advance(2.0)
        daemon.core.feed(TokenEvent("core.rfid", "0badc0de", True))
        yield until(lambda: not core.pending)
        assert lookups() == 2
        # One warning a minute for a reader repeating a refused token.
        assert len(warnings) == 1, warnings
    finally:
        globalLogPublisher.removeObserver(observe)
        yield daemon.stopService()


# --- the daemon as owners run it ------------------------------------------------------------


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_daemon_behind_a_redirect_never_sends_the_key_elsewhere_and_says_why(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    pty_board: PtyKegboard,
    listen: Callable[[resource.Resource], str],
) -> Any:
    elsewhere = Recorder()
    other = listen(elsewhere)
    first = listen(Redirector(other))
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS + '\n[[taps]]\nmeter = "kegboard.flow0"\nml_per_tick = 0.3671\n')
    daemon = daemons(
        "--config", str(config), "--kegboard", pty_board.path,
        "--api-url", first + "/api/", "--api-key", SECRET,
    )  # fmt: skip
    yield eventually(lambda: f"connected on {pty_board.path}" in daemon.log, "the board", daemon)
    pty_board.write(pty_board.board.token("core.rfid", bytes.fromhex("efbeadde"), True))
    pty_board.pour("flow0", 0)
    pty_board.pour("flow0", 300)

    def told() -> bool:
        log = daemon.log
        return bool(elsewhere.requests) or (
            "Waiting for the Kegbot Server" in log  # tap sync: GET taps
            and "Token core.rfid/deadbeef: server unavailable (redirect refused" in log
            and "Kegbot Server unavailable (redirect refused" in log  # the drink POST
        )

    yield eventually(told, "the redirects refused", daemon)
    assert elsewhere.keys_seen() == []
    assert elsewhere.requests == []
    log = daemon.log
    assert f"redirect refused: HTTP 302 to {other}/api/taps" in log
    assert f"{other}/api/auth-tokens/core.rfid/deadbeef" in log
    assert SECRET not in log
    assert len(daemon.journal()) >= 1  # the drink waits in the outbox
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert SECRET not in daemon.log
