"""The status endpoint of the daemon as owners run it (``twistd -n kegbot``):
the README's demo pour watched in a real browser, and the page, the
document and the metrics hammered at 100 requests/s while a pour is timed
and recorded exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from daemonkit import FAST_POURS, Daemon, eventually, stop
from fakeserver import API_KEY, FakeKegbotServer
from redisd import free_port
from twisted.internet import defer, task, threads

from kegtwist.boards.simulator import PtyKegboard

pytestmark = pytest.mark.integration

ENDPOINTS = ("/status.json", "/metrics", "/", "/static/app.js", "/static/style.css")


def status_tool(port: int) -> subprocess.CompletedProcess[str]:
    """``kegbot-status URL`` as an owner's cron job runs it."""
    tool = Path(sys.executable).parent / "kegbot-status"
    return subprocess.run(
        [str(tool), f"http://127.0.0.1:{port}/status.json"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        body: bytes = reply.read()
        return body


def test_the_demo_pour_rises_on_the_page_and_ends_at_the_drinks_volume(
    tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    """The README's first command with the page open: the number shown for
    the simulated tap rises during the pour and ends at the drink's volume."""
    from test_status_browser import _browser, _start_driver

    browser, driver_path = _browser()
    port = free_port()
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    daemon = daemons(
        "--config", str(config), "--simulate", "1", "--kegboard", "none",
        "--status", f"tcp:{port}",
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while f"tcp:{port}" not in daemon.log and "Status page" not in daemon.log:
        assert daemon.proc.poll() is None, daemon.log
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.05)
    driver = _start_driver(browser, driver_path, tmp_path / "profile")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        selector = '.volume[data-meter="simulated-kegboard.flow0"]'
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while "Drink: flow" not in daemon.log:
            assert time.monotonic() < deadline, daemon.log
            for element in driver.find_elements("css selector", selector):
                shown = element.get_attribute("data-ml")
                if shown and (not seen or float(shown) != seen[-1]):
                    seen.append(float(shown))
            time.sleep(0.05)
        time.sleep(0.5)  # the drink's event reaches the page
        final = float(driver.find_element("css selector", selector).get_attribute("data-ml"))
        driver.save_screenshot(str(tmp_path / "demo-pour.png"))
    finally:
        driver.quit()
    document = json.loads(get(port, "/status.json"))
    assert len([v for v in seen if 0 < v < 330]) >= 2, seen  # it rose while pouring
    assert seen == sorted(seen), seen
    assert final == pytest.approx(899 / 2.724, abs=0.05), (final, seen)
    assert "899 ticks, 330.0 mL" in daemon.log
    assert document["boards"][0]["name"] == "simulated-kegboard"


@pytest_twisted.inlineCallbacks
def test_100_requests_a_second_never_disturb_a_pour(
    tmp_path: Path,
    daemons: Callable[..., Daemon],
    fake_server: FakeKegbotServer,
    pty_board: PtyKegboard,
) -> Any:
    """Every endpoint, 100 requests/s and five open event streams, while a
    300-tick pour runs 2 s: the drink has every tick and its duration."""
    from twisted.internet import reactor

    port = free_port()
    config = tmp_path / "kegbot.toml"
    config.write_text(FAST_POURS)
    daemon = daemons(
        "--config", str(config), "--kegboard", pty_board.path, "--status", f"tcp:{port}",
        "--api-url", fake_server.url, "--api-key", API_KEY,
    )  # fmt: skip
    yield eventually(
        lambda: f"connected on {pty_board.path}" in daemon.log, "the board's hello", daemon
    )
    yield eventually(lambda: "Taps: kegboard.flow0" in daemon.log, "taps", daemon)
    base = f"http://127.0.0.1:{port}"
    streams = [treq.get(base + "/events", unbuffered=True) for _ in range(5)]
    answered: list[int] = []
    failed: list[str] = []

    def one(i: int) -> None:
        d = treq.get(base + ENDPOINTS[i % len(ENDPOINTS)], timeout=5)
        d.addCallback(lambda r: treq.content(r).addCallback(lambda _: answered.append(r.code)))
        d.addErrback(lambda f: failed.append(f.getErrorMessage()))

    sent = [0]

    def fire() -> None:
        one(sent[0])
        sent[0] += 1

    load = task.LoopingCall(fire)
    load.clock = reactor
    load.start(0.01)
    try:
        pty_board.pour("flow0", 0)  # the baseline
        for _ in range(20):  # 15 ticks every 100 ms: 300 ticks over 1.9 s
            yield task.deferLater(reactor, 0.1, lambda: None)
            pty_board.pour("flow0", 15)
        yield eventually(lambda: bool(fake_server.drinks), "the drink", daemon)
    finally:
        load.stop()
    yield eventually(lambda: len(answered) + len(failed) >= sent[0] - 5, "answers", daemon)
    for stream in streams:
        stream.cancel()
    yield defer.DeferredList(streams, consumeErrors=True)
    [drink] = fake_server.drinks
    assert drink["ticks"] == 300
    assert drink["duration"] == 2, drink  # 1.9 s from first to last tick, rounded
    assert sent[0] >= 200 and not failed, (sent[0], failed[:3])
    assert set(answered) == {200}
    # What an owner's cron job sees: all healthy, exit 0, then the board
    # unplugged: exit 1 and the reason.
    healthy = yield threads.deferToThread(status_tool, port)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "kegboard" in healthy.stdout
    pty_board.close()
    yield eventually(lambda: "gone" in daemon.log, "the board gone", daemon)
    gone = yield threads.deferToThread(status_tool, port)
    assert gone.returncode == 1 and "ATTENTION" in gone.stdout, gone.stdout
    yield stop(daemon)
    assert daemon.proc.returncode == 0, daemon.log
