"""Kegnet behind Redis 6+ ACL users: ``tap-configs/redis-users.acl``.

A real redis-server loads the shipped ACL file, with passwords added as the
README says (``>PASSWORD`` or ``#SHA256`` at the end of a user's line); the
daemons are real ``twistd -n kegbot`` processes.  What is asserted: a core
daemon pours through the ``kegbot`` user with its password in a file, never
in ``ps`` or in a log line; a ``display`` hears everything and can publish
nothing; the ``default`` user is off; and the start-up warnings of a daemon
without credentials or with its password in ``--redis-url``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from daemonkit import BIN, FAST_POURS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from kegnetkit import Bus, until
from redisd import RedisServer, free_port, redis_version, resp

from kegtwist.protocol import kegnet as events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
ACL_FILE = ROOT / "tap-configs" / "redis-users.acl"

KEGBOT_PASSWORD = "kb-7f3e9a-Secret"  # distinctive: grepped for in logs and ps
DISPLAY_PASSWORD = "disp-51c2-Secret"
ADMIN_PASSWORD = "admin-0d4b-Secret"  # a test-only user, to read ACL LOG

NO_CREDENTIALS = "no Redis credentials"
PASSWORD_IN_PS = "visible to other users of this machine (in ps)"


def needs_channel_acls() -> None:
    version = redis_version()
    if version < (6, 2):
        pytest.skip(
            f"redis-server {'.'.join(map(str, version))} cannot load redis-users.acl: "
            "channel rules (&kegnet, resetchannels) need Redis 6.2 or later"
        )


def deployed_acl(tmp_path: Path) -> Path:
    """The shipped file with passwords added as an owner adds them, plus an
    ``admin`` user of this test's own (the shipped file has none)."""
    digest = hashlib.sha256(DISPLAY_PASSWORD.encode()).hexdigest()
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user kegbot "):
            line += f" >{KEGBOT_PASSWORD}"
        elif line.startswith("user display "):
            line += f" #{digest}"
        lines.append(line)
    lines.append(f"user admin on >{ADMIN_PASSWORD} allkeys allchannels +@all")
    path = tmp_path / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    needs_channel_acls()
    server = RedisServer(tmp_path, aclfile=deployed_acl(tmp_path)).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def buses() -> Generator[list[Bus], None, None]:
    made: list[Bus] = []
    yield made
    for b in made:
        if b.bus.running:
            b.bus.stopService()


class Subscriber:
    """A raw RESP subscriber (as a display is), read without blocking."""

    def __init__(self, port: int, user: str, password: str, channel: str = "kegnet") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.sock.sendall(resp("AUTH", user, password) + resp("SUBSCRIBE", channel))
        self.data = b""
        confirmed = f"subscribe\r\n${len(channel)}\r\n{channel}\r\n:1\r\n".encode()
        deadline = time.monotonic() + 5
        while confirmed not in self.data:
            assert time.monotonic() < deadline, self.data
            self.data += self.sock.recv(65536)
        self.data = b""
        self.sock.setblocking(False)

    def read(self) -> bytes:
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except BlockingIOError:
            pass
        return self.data

    def wait_for(self, needle: bytes, seconds: float = 5.0) -> bytes:
        """Blocking (for tests with no daemon on the reactor)."""
        deadline = time.monotonic() + seconds
        while needle not in self.read():
            assert time.monotonic() < deadline, f"{needle!r} not in {self.data!r}"
            time.sleep(0.01)
        return self.data

    def close(self) -> None:
        self.sock.close()


def classic(event: str, data: dict[str, Any]) -> str:
    """A message as the classic Kegbot daemons send it: no origin."""
    return json.dumps({"event": event, "data": data}, indent=2)


def ticks_on(server: FakeKegbotServer, meter: str = "kegboard.flow0") -> int:
    return sum(d["ticks"] for d in server.drinks if d["meter_name"] == meter)


def config(tmp_path: Path) -> str:
    path = tmp_path / "kegbot.toml"
    path.write_text(FAST_POURS)
    return str(path)


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(password + "\n")  # as `echo` writes it: the newline is no part of it
    path.chmod(0o600)
    return path


def lines_with(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.log.splitlines() if text in line]


# --- the shipped file ------------------------------------------------------------


def test_the_shipped_acl_file_grants_exactly_what_kegnet_needs() -> None:
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        assert line.startswith("user "), line  # Redis ACL files allow no comments
        _, name, *rules = line.split()
        users[name] = set(rules)
    common = {"resetpass", "resetkeys", "resetchannels", "-@all"}
    assert users == {
        "default": {"off"} | common,
        "kegbot": {"on", "&kegnet", "+publish", "+subscribe", "+ping"} | common,
        "display": {"on", "&kegnet", "+subscribe", "+ping"} | common,
    }


def test_the_shipped_acl_file_as_is_lets_nobody_in(tmp_path: Path) -> None:
    """Shipped without passwords: until the owner adds them, no one logs in."""
    needs_channel_acls()
    server = RedisServer(tmp_path, aclfile=ACL_FILE).start()
    try:
        for user in ("default", "kegbot", "display"):
            reply = server.command_as(user, "", "PING")
            assert reply.startswith(b"-WRONGPASS"), (user, reply)
        assert server.command_as(None, None, "PUBLISH", "kegnet", "{}").startswith(b"-NOAUTH")
    finally:
        server.kill()


# --- (a) daemons through the kegbot user -------------------------------------------


@pytest_twisted.inlineCallbacks
def test_core_daemon_pours_through_the_kegbot_user_with_its_password_in_a_file(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    acl_redis: RedisServer,
    buses: list[Bus],
) -> Any:
    port = acl_redis.port
    display = Subscriber(port, "display", DISPLAY_PASSWORD)
    try:
        daemon = daemons(
            "--role", "core",
            "--redis-url", f"redis://kegbot@127.0.0.1:{port}/0",
            "--redis-password-file", str(password_file(tmp_path, KEGBOT_PASSWORD)),
            "--config", config(tmp_path), "--log-level", "debug",
            "--api-url", fake_server.url, "--api-key", API_KEY,
        )  # fmt: skip
        yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
        yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "the server's taps", daemon)
        cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
        assert b"--redis-password-file" in cmdline
        assert KEGBOT_PASSWORD.encode() not in cmdline

        # A classic kegboard daemon, logged in as kegbot: its JSON, no origin ...
        for event, data in [
            ("ControllerConnectedEvent", {"controller_name": "kegboard"}),
            ("MeterUpdate", {"meter_name": "kegboard.flow0", "reading": 1000}),
        ]:
            reply = acl_redis.command_as(
                "kegbot", KEGBOT_PASSWORD, "PUBLISH", "kegnet", classic(event, data)
            )
            assert reply in (b":1\r\n", b":2\r\n"), reply  # the daemon (and the display)
        # ... then a kegtwist publisher with the password in its URL.
        publisher = Bus(f"redis://kegbot:{KEGBOT_PASSWORD}@127.0.0.1:{port}/0", "remote-kegboard")
        buses.append(publisher)
        yield until(lambda: publisher.bus.connected)
        for reading in range(1010, 1260, 10):
            publisher.bus.publish(events.MeterUpdate("kegboard.flow0", reading))
        yield eventually(lambda: ticks_on(fake_server) == 250, "a 250-tick drink", daemon)

        # What the core publishes reaches the display and the kegbot users.
        yield eventually(lambda: b"DrinkCreatedEvent" in display.read(), "the display", daemon)
        assert b"FlowUpdate" in display.data
        assert any(isinstance(e, events.FlowUpdate) for e in publisher.received)
        assert publisher.bus.stats.publish_failed == 0

        # Redis refused nothing any of them sent (AUTH, SUBSCRIBE, PUBLISH).
        assert acl_redis.command_as("admin", ADMIN_PASSWORD, "ACL", "LOG") == b"*0\r\n"
        yield stop(daemon)
        assert daemon.proc.returncode == 0, daemon.log
        assert KEGBOT_PASSWORD not in daemon.log
        assert not lines_with(daemon, NO_CREDENTIALS) and not lines_with(daemon, PASSWORD_IN_PS)
    finally:
        display.close()


@pytest_twisted.inlineCallbacks
def test_a_wrong_password_file_is_refused_and_never_logged(
    tmp_path: Path, daemons: Callable[..., Daemon], acl_redis: RedisServer
) -> Any:
    wrong = "not-the-kb-Secret"
    daemon = daemons(
        "--role", "core", "--api-url", "none", "--log-level", "debug",
        "--redis-url", f"redis://kegbot@127.0.0.1:{acl_redis.port}/0",
        "--redis-password-file", str(password_file(tmp_path, wrong)),
    )  # fmt: skip
    yield eventually(lambda: "WRONGPASS" in daemon.log, "the refusal", daemon)
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
    assert wrong not in daemon.log


@pytest.mark.parametrize("problem", ["missing", "a directory", "empty"])
def test_an_unusable_password_file_stops_start_up_with_one_line(
    tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "redis-password"
    if problem == "a directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text(" \n")
    result = subprocess.run(
        [
            str(BIN / "twistd"), "-n", "--pidfile=", "kegbot", "--role", "core",
            "--api-url", "none", "--state-dir", str(tmp_path / "state"),
            "--redis-url", f"redis://kegbot@127.0.0.1:{free_port()}/0",
            "--redis-password-file", str(path),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1, output
    assert len(output) == 1, output
    assert "--redis-password-file" in output[0] and str(path) in output[0], output


# --- (b) a display hears, and cannot speak ------------------------------------------


def test_display_user_receives_events_and_cannot_publish(acl_redis: RedisServer) -> None:
    display = Subscriber(acl_redis.port, "display", DISPLAY_PASSWORD)
    listener = Subscriber(acl_redis.port, "kegbot", KEGBOT_PASSWORD)  # as a core listens
    try:
        real = classic("MeterUpdate", {"meter_name": "kegboard.flow0", "reading": 1010})
        assert (
            acl_redis.command_as("kegbot", KEGBOT_PASSWORD, "PUBLISH", "kegnet", real) == b":2\r\n"
        )
        display.wait_for(b'"reading": 1010')

        fake = classic("MeterUpdate", {"meter_name": "kegboard.flow0", "reading": 99999})
        refused = {
            "PUBLISH": ("PUBLISH", "kegnet", fake),
            "SUBSCRIBE elsewhere": ("SUBSCRIBE", "other"),
            "PSUBSCRIBE": ("PSUBSCRIBE", "*"),
            "SET": ("SET", "k", "v"),
            "CONFIG": ("CONFIG", "GET", "requirepass"),
            "ACL": ("ACL", "LIST"),
        }
        for what, command in refused.items():
            reply = acl_redis.command_as("display", DISPLAY_PASSWORD, *command)
            assert reply.startswith(b"-NOPERM"), (what, reply)
        assert acl_redis.command_as("display", DISPLAY_PASSWORD, "PING") == b"+PONG\r\n"

        # The faked pour reached no one: a marker published after it is all that arrives.
        marker = classic("ControllerConnectedEvent", {"controller_name": "marker"})
        acl_redis.command_as("kegbot", KEGBOT_PASSWORD, "PUBLISH", "kegnet", marker)
        listener.wait_for(b'"marker"')
        assert b"99999" not in listener.data and b"99999" not in display.read()
    finally:
        display.close()
        listener.close()


def test_kegbot_user_is_held_to_the_kegnet_channel(acl_redis: RedisServer) -> None:
    for command in [
        ("PUBLISH", "other", "{}"),
        ("SUBSCRIBE", "other"),
        ("PSUBSCRIBE", "*"),
        ("SET", "k", "v"),
        ("KEYS", "*"),
        ("CONFIG", "GET", "requirepass"),
        ("FLUSHALL",),
    ]:
        reply = acl_redis.command_as("kegbot", KEGBOT_PASSWORD, *command)
        assert reply.startswith(b"-NOPERM"), (command, reply)
    assert acl_redis.command_as("kegbot", KEGBOT_PASSWORD, "PING") == b"+PONG\r\n"


# --- (c) the default user is off ----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_default_user_cannot_connect_or_publish(acl_redis: RedisServer, buses: list[Bus]) -> Any:
    for command in [("PING",), ("PUBLISH", "kegnet", "{}"), ("SUBSCRIBE", "kegnet")]:
        reply = acl_redis.command_as(None, None, *command)
        assert reply.startswith(b"-NOAUTH"), (command, reply)
    for user in (None, "default"):  # requirepass-style AUTH logs in as default
        reply = acl_redis.command_as(user, KEGBOT_PASSWORD, "PING")
        assert reply.startswith(b"-WRONGPASS"), (user, reply)

    listener = Subscriber(acl_redis.port, "display", DISPLAY_PASSWORD)
    try:
        anonymous = Bus(f"redis://127.0.0.1:{acl_redis.port}/0", "anonymous")
        buses.append(anonymous)
        yield until(lambda: "NOAUTH" in anonymous.bus.last_error)
        anonymous.bus.publish(events.MeterUpdate("kegboard.flow0", 99999))
        yield until(lambda: anonymous.bus.stats.publish_failed == 1)
        assert not anonymous.bus.connected and anonymous.bus.stats.published == 0
        assert b"99999" not in listener.read()
    finally:
        listener.close()


# --- (d) start-up warnings ------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_daemon_without_credentials_says_so_once(
    daemons: Callable[..., Daemon], redis_server: RedisServer
) -> Any:
    daemon = daemons("--role", "core", "--api-url", "none", "--redis-url", redis_server.url)
    yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
    redis_server.kill()  # a reconnect is no new start: no second warning
    redis_server.start()
    yield eventually(lambda: daemon.log.count("Kegnet: connected") == 2, "a reconnect", daemon)
    yield stop(daemon)
    warnings = lines_with(daemon, NO_CREDENTIALS)
    assert len(warnings) == 1, daemon.log
    assert "anyone who can reach Redis" in warnings[0]
    assert '"Kegnet security"' in warnings[0]
    assert not lines_with(daemon, PASSWORD_IN_PS)


@pytest_twisted.inlineCallbacks
def test_a_password_in_the_redis_url_is_warned_about_once_and_never_shown(
    tmp_path: Path, daemons: Callable[..., Daemon]
) -> Any:
    secret = "url-pw-93ab-Secret"
    server = RedisServer(tmp_path, password=secret).start()
    try:
        daemon = daemons(
            "--role", "core", "--api-url", "none", "--log-level", "debug",
            "--redis-url", f"redis://:{secret}@127.0.0.1:{server.port}/0",
        )  # fmt: skip
        yield eventually(lambda: "Kegnet: connected" in daemon.log, "Redis", daemon)
        server.kill()  # back with another password: a refusal, logged without ours
        server.start(password="changed-" + secret[::-1])
        yield eventually(lambda: "WRONGPASS" in daemon.log, "the refusal", daemon)
        yield stop(daemon)
    finally:
        server.kill()
    warnings = lines_with(daemon, PASSWORD_IN_PS)
    assert len(warnings) == 1, daemon.log
    assert "--redis-password-file" in warnings[0]
    assert secret not in daemon.log
    assert not lines_with(daemon, NO_CREDENTIALS)
