"""The status page in a real headless browser (Chromium through its
driver, driven by selenium): served by StatusService, fed by an EventHub
this test drives.  A pour's volume rises on the page as progress events
arrive and ends at the drink's volume; the page fits a phone's width.

Needs ``chromium`` and ``chromium-driver`` (Debian; ``.ci/run`` installs
them) and the ``selenium`` package (the ``test`` extra); without them it is
skipped, saying what is missing.  Nothing is downloaded at run time: the
browser and the driver are the system's.  The screenshot goes to the
test's tmp dir; with KEGTWIST_UPDATE_SCREENSHOT=1 also to ``docs/status-page.png``.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from kegtwist.status.hub import EventHub
from kegtwist.status.metrics import metrics_text
from kegtwist.status.web import StatusService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "status-page.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
METER = "kegboard.flow0"
VOLUME = f'.volume[data-meter="{METER}"]'


def _browser() -> tuple[str, str]:
    """The system's browser and driver, or a skip that says what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium chromium-driver)")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    if driver is None:
        pytest.skip("no chromedriver (apt-get install chromium-driver)")
    return browser, driver


def _start_driver(browser: str, driver: str, profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch anything
    options = webdriver.ChromeOptions()
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1100,860"):
        options.add_argument(flag)
    options.binary_location = browser
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


NOW = time.time()
DOCUMENT: dict[str, Any] = {
    "schema": 1,
    "version": "0.1.0",
    "role": "all",
    "now": NOW,
    "started": NOW - 3 * 3600,
    "uptime_seconds": 3 * 3600.0,
    "boards": [
        {
            "name": "kegboard",
            "device": "/dev/ttyUSB0",
            "connected": True,
            "remote": False,
            "seen": True,
            "firmware": 18,
            "serial": None,
            "since": NOW - 3 * 3600,
            "reason": None,
            "counters": {"frames": 48211, "crc_errors": 0, "framing_errors": 0},
        }
    ],
    "ports": [],
    "taps": [
        {
            "meter": METER,
            "name": "Pale Ale",
            "relay": "kegboard.relay0",
            "ml_per_tick": 0.367,
            "source": "server",
            "keg": 12,
            "pouring": False,
            "drinks": 1,
            "volume_ml": 473.0,
            "last_drinks": [
                {
                    "flow_id": 1,
                    "meter": METER,
                    "username": "bob",
                    "volume_ml": 473.0,
                    "ended": NOW - 1500,
                }
            ],
        },
        {
            "meter": "kegboard.flow1",
            "name": "Oatmeal Stout",
            "relay": "kegboard.relay1",
            "ml_per_tick": 0.185,
            "source": "server",
            "keg": 13,
            "pouring": False,
            "drinks": 2,
            "volume_ml": 700.0,
            "last_drinks": [
                {
                    "flow_id": 3,
                    "meter": "kegboard.flow1",
                    "username": None,
                    "volume_ml": 350.0,
                    "ended": NOW - 240,
                },
                {
                    "flow_id": 2,
                    "meter": "kegboard.flow1",
                    "username": "carol",
                    "volume_ml": 350.0,
                    "ended": NOW - 3000,
                },
            ],
        },
    ],
    "pours": [],
    "valves": [
        {"relay": "kegboard.relay0", "meter": METER, "open": False},
        {"relay": "kegboard.relay1", "meter": "kegboard.flow1", "open": False},
    ],
    "temperatures": [
        {
            "sensor": "kegboard.thermo-28aa01",
            "celsius": 3.8,
            "at": NOW - 180,
            "age_seconds": 180.0,
            "lost": False,
        }
    ],
    "drinks": [
        {
            "flow_id": 3,
            "meter": "kegboard.flow1",
            "username": None,
            "volume_ml": 350.0,
            "ended": NOW - 240,
        },
        {"flow_id": 1, "meter": METER, "username": "bob", "volume_ml": 473.0, "ended": NOW - 1500},
        {
            "flow_id": 2,
            "meter": "kegboard.flow1",
            "username": "carol",
            "volume_ml": 350.0,
            "ended": NOW - 3000,
        },
    ],
    "untapped": {"ticks": 0, "meters": [], "held": []},
    "outbox": {
        "pending": 0,
        "drinks": 0,
        "temperatures": 0,
        "uncertain": 0,
        "dead_letters": 0,
        "dead": [],
        "quarantined": 0,
        "not_in_outbox": 0,
        "disk_error": None,
    },
    "server": {
        "url": "http://kegbot.local/api/",
        "state": "ok",
        "since": NOW - 10000,
        "last_error": None,
    },
    "redis": {
        "url": "redis://localhost:6379/0",
        "channel": "kegnet",
        "state": "connected",
        "queued": 0,
    },
    "kegnet": {"in": 12, "out": 3140, "rejected": 0, "ignored": 0},
    "counters": {},
    "errors": [],
}


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Any, StatusService, EventHub, dict[str, Any]]]:
    browser, driver_path = _browser()
    hub = EventHub(first_id=1)
    doc = copy.deepcopy(DOCUMENT)
    service = StatusService(
        "tcp:0:interface=127.0.0.1", lambda: doc, lambda: metrics_text(doc), hub, reactor
    )
    service.startService()
    try:
        driver = pytest_twisted.blockon(
            threads.deferToThread(_start_driver, browser, driver_path, tmp_path / "profile")
        )
    except Exception as e:  # a browser that cannot start here: say why
        pytest_twisted.blockon(service.stopService())
        pytest.skip(f"the headless browser did not start: {str(e).splitlines()[0]}")
    yield driver, service, hub, doc
    pytest_twisted.blockon(threads.deferToThread(driver.quit))
    pytest_twisted.blockon(service.stopService())


def _wait(driver: Any, test: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(driver, timeout, 0.05, ignored).until(test)
    except TimeoutException:
        page = driver.find_element("tag name", "body").text
        raise AssertionError(f"the page did not get there; it shows:\n{page}") from None


def _shown(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, VOLUME).text)


def _screenshot(driver: Any, path: Path) -> None:
    """The whole page, as tall as it is (beyond the window)."""
    import base64

    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def _in_thread(call: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(call, *args)


@pytest_twisted.inlineCallbacks
def test_the_page_shows_a_pour_rising_and_its_drink(
    page: tuple[Any, StatusService, EventHub, dict[str, Any]], tmp_path: Path
) -> Iterator[Any]:
    from selenium.webdriver.common.by import By

    driver, service, hub, doc = page
    assert service.url is not None
    yield _in_thread(driver.get, service.url)
    yield _in_thread(_wait, driver, lambda d: d.find_elements(By.CSS_SELECTOR, VOLUME))
    assert (yield _in_thread(_shown, driver)) == "473"  # bob's last drink
    yield _in_thread(_wait, driver, lambda d: "live" in d.find_element(By.ID, "health-stream").text)

    started = time.time()
    pour: dict[str, Any] = {
        "flow_id": 4,
        "meter": METER,
        "username": "alice",
        "ticks": 0,
        "volume_ml": 0.0,
        "started": started,
        "last_tick": started,
        "duration_seconds": 0.0,
    }

    def publish_pour(phase: str, volume: float) -> None:
        pour.update(
            phase=phase, volume_ml=volume, ticks=round(volume / 0.367), last_tick=time.time()
        )
        hub.publish("pour", pour)
        doc["pours"] = [] if phase == "end" else [dict(pour, tap="Pale Ale", valve_open=True)]

    publish_pour("start", 0.0)
    hub.publish(
        "valve", {"relay": "kegboard.relay0", "open": True, "reason": "pour", "source": "command"}
    )
    yield _in_thread(
        _wait,
        driver,
        lambda d: (
            "valve open"
            in d.find_element(By.CSS_SELECTOR, f'.tap[data-meter="{METER}"] .valve').text
        ),
    )

    seen = []
    for volume in (55.1, 110.2, 165.4, 220.6, 275.7, 330.4):
        publish_pour("progress", volume)
        expected = str(round(volume))
        yield _in_thread(_wait, driver, lambda d, expected=expected: _shown(d) == expected)
        seen.append(int((yield _in_thread(_shown, driver))))
        if volume == 220.6:
            what = yield _in_thread(
                lambda: (
                    driver.find_element(By.CSS_SELECTOR, f'.tap[data-meter="{METER}"] .what').text
                )
            )
            assert what.startswith("pouring · alice")
            yield _in_thread(_screenshot, driver, tmp_path / "status-page.png")
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # it rose, every time

    publish_pour("end", 330.4)
    hub.publish(
        "valve",
        {"relay": "kegboard.relay0", "open": False, "reason": "pour_end", "source": "command"},
    )
    hub.publish(
        "drink",
        {
            "state": "logged",
            "flow_id": 4,
            "meter": METER,
            "username": "alice",
            "ticks": 900,
            "volume_ml": 330.4,
            "started": started,
            "ended": time.time(),
            "drink_id": None,
        },
    )
    yield _in_thread(
        _wait,
        driver,
        lambda d: (
            "last drink · alice"
            in d.find_element(By.CSS_SELECTOR, f'.tap[data-meter="{METER}"] .what').text
        ),
    )
    assert (yield _in_thread(_shown, driver)) == "330"
    first = yield _in_thread(lambda: driver.find_element(By.CSS_SELECTOR, "#drinks li").text)
    assert first.startswith("alice · Pale Ale") and "330 mL" in first

    shot = tmp_path / "status-page.png"
    assert shot.stat().st_size > 10_000
    if os.environ.get("KEGTWIST_UPDATE_SCREENSHOT"):
        # Only on request: a test run must not change files in the checkout.
        shutil.copyfile(shot, SCREENSHOT)

    # Readable on a phone: nothing wider than the screen.
    yield _in_thread(driver.set_window_size, 390, 844)
    overflow = yield _in_thread(
        driver.execute_script,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
    )
    assert overflow <= 0
    yield _in_thread(driver.save_screenshot, str(tmp_path / "status-page-phone.png"))
    logs = yield _in_thread(lambda: driver.get_log("browser"))
    assert [entry for entry in logs if entry.get("level") == "SEVERE"] == []


@pytest_twisted.inlineCallbacks
def test_the_page_reloads_when_it_missed_events(
    page: tuple[Any, StatusService, EventHub, dict[str, Any]],
) -> Iterator[Any]:
    """A stream that cannot resume without a gap makes the page reload the
    document; a board that goes is shown gone."""
    from selenium.webdriver.common.by import By

    driver, service, hub, doc = page
    assert service.url is not None
    yield _in_thread(driver.get, service.url)
    yield _in_thread(_wait, driver, lambda d: "live" in d.find_element(By.ID, "health-stream").text)
    hub.publish(
        "board",
        {"board": "kegboard", "device": "/dev/ttyUSB0", "connected": False, "reason": "unplugged"},
    )
    yield _in_thread(_wait, driver, lambda d: "gone" in d.find_element(By.ID, "health-boards").text)
    # The daemon "restarts": a new hub whose ids are far above the page's.
    doc["boards"][0].update(connected=False, reason="unplugged", since=time.time())
    doc["taps"][0]["last_drinks"] = [
        {"flow_id": 9, "meter": METER, "username": "dave", "volume_ml": 250.0, "ended": time.time()}
    ]
    for client in list(service.events.clients):
        client.finish()  # the browser reconnects with its Last-Event-ID...
    service.events.hub = service.hub = new = EventHub(first_id=10**6)
    new.publish("temperature", {"sensor": "kegboard.thermo-28aa01", "celsius": 4.0})
    # ... which the new hub cannot resume: reload, and the new document shows.
    yield _in_thread(_wait, driver, lambda d: _shown(d) == "250", 20.0)
    yield task.deferLater(reactor, 0, lambda: None)
