"""Taps from the Kegbot Server, merged with the config file; new boards
registered on the server.

The server's tap list is fetched at start and every 60 s (every 10 s while
pours are active or drinks wait for a tap, as the classic core did).
``[[taps]]`` entries in the config file win over the server's for the same
meter, and the log says so.  A server that cannot be reached leaves the last
known table in place.  The last list the server gave is kept in the state
dir (``taps.json``) and used from the first moment of the next start, so a
restart with the server down still knows its taps: a board reporting the
ticks poured while the daemon was down finds them.

A board the core has not seen before gets its controller and its ``flow0``
and ``flow1`` meters created on the server if they are missing (the API
refuses duplicates, so it lists first).  Registration failures are retried
at the next refresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kegtwist.core import TapConfig, TapsChanged
from kegtwist.delivery.client import KegbotServerClient, ServerError, Tap
from kegtwist.durable import write_atomic

REFRESH_SECONDS = 60.0
ACTIVE_REFRESH_SECONDS = 10.0
DEFAULT_TICKS_PER_ML = 2.724  # the server's default meter calibration
BOARD_METERS = ("flow0", "flow1")


def server_tap(tap: Tap) -> TapConfig | None:
    """A server tap the core can use: it needs a meter and a calibration."""
    if tap.meter_name.startswith("unknown.") or "." not in tap.meter_name or tap.ml_per_tick <= 0:
        return None
    return TapConfig(tap.meter_name, tap.ml_per_tick, tap.relay_name or None, tap.name)


def usable_taps(server_taps: list[Tap]) -> tuple[TapConfig, ...]:
    found = (server_tap(tap) for tap in server_taps)
    return tuple(sorted((t for t in found if t is not None), key=lambda t: t.meter))


def merge_taps(
    file_taps: tuple[TapConfig, ...], server_taps: Iterable[TapConfig]
) -> tuple[tuple[TapConfig, ...], list[tuple[TapConfig, TapConfig]]]:
    """The tap table, and the (file, server) pairs where the file won."""
    by_meter: dict[str, TapConfig] = {t.meter: t for t in server_taps}
    overridden = []
    for mine in file_taps:
        server = by_meter.get(mine.meter)
        if server is not None and (server.ml_per_tick, server.relay) != (
            mine.ml_per_tick,
            mine.relay,
        ):
            overridden.append((mine, server))
        by_meter[mine.meter] = mine
    return tuple(by_meter[m] for m in sorted(by_meter)), overridden


def load_tap_cache(path: Path) -> tuple[TapConfig, ...] | None:
    """The server's taps as last received; None if never (or unreadable)."""
    try:
        data = json.loads(path.read_bytes())
        return tuple(
            TapConfig(
                str(t["meter"]), float(t["ml_per_tick"]), t.get("relay") or None, t.get("name")
            )
            for t in data["taps"]
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        TapSyncService.log.warn(
            "Ignoring the tap cache {path}: {error}", path=str(path), error=repr(e)
        )
        return None


def save_tap_cache(path: Path, taps: tuple[TapConfig, ...]) -> None:
    """Atomically (tmp, fsync, rename): a torn cache would be no cache."""
    rows: list[dict[str, Any]] = [
        {"meter": t.meter, "ml_per_tick": t.ml_per_tick, "relay": t.relay, "name": t.name}
        for t in taps
    ]
    write_atomic(path, json.dumps({"version": 1, "taps": rows}, indent=1).encode())


class TapSyncService(Service):
    log: ClassVar[Logger] = Logger()
    name = "taps"

    def __init__(
        self,
        client: KegbotServerClient,
        feed: Callable[[TapsChanged], None],
        file_taps: tuple[TapConfig, ...],
        clock: IReactorTime,
        *,
        pours_active: Callable[[], bool] = lambda: False,
        cache_path: Path | None = None,
    ) -> None:
        self.client = client
        self.feed = feed
        self.file_taps = file_taps
        self.clock = clock
        self.pours_active = pours_active
        self.cache_path = cache_path
        self.server_taps: tuple[TapConfig, ...] | None = None
        self.taps: tuple[TapConfig, ...] = file_taps
        self.reachable: bool | None = None
        self._boards_to_register: set[str] = set()
        self._call: IDelayedCall | None = None
        self._running: defer.Deferred[None] | None = None
        self._warned: set[tuple[str, float, str | None]] = set()

    def startService(self) -> None:
        super().startService()
        if self.cache_path is not None:
            cached = load_tap_cache(self.cache_path)
            if cached is not None:
                self.server_taps = cached
                self.log.info(
                    "Using the {count} tap(s) the Kegbot Server gave last time until it answers",
                    count=len(cached),
                )
                self._apply(cached)
        self._refresh()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        running, self._running = self._running, None
        if running is not None and not running.called:
            running.cancel()
            return running.addErrback(lambda f: f.trap(defer.CancelledError))
        return defer.succeed(None)

    def register_board(self, board: str) -> None:
        """A board appeared: make sure the server knows it (soon)."""
        self._boards_to_register.add(board)
        if self._running is None and self.running:
            self._refresh()

    def _refresh(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._running = defer.Deferred.fromCoroutine(self._sync())
        self._running.addBoth(self._schedule)

    def _schedule(self, _: object) -> None:
        self._running = None
        if self.running:
            delay = ACTIVE_REFRESH_SECONDS if self.pours_active() else REFRESH_SECONDS
            self._call = self.clock.callLater(delay, self._refresh)

    async def _sync(self) -> None:
        try:
            server_taps = await self.client.taps()
        except ServerError as e:
            if self.reachable is not False:
                self.log.warn(
                    "Waiting for the Kegbot Server at {url} ({reason}); using the {count} tap(s) "
                    "known, drinks wait in the outbox. Set --api-url (or $KEGBOT_API_URL), "
                    "or --api-url none",
                    url=self.client.api_url,
                    reason=e.reason,
                    count=len(self.taps),
                )
            self.reachable = False
            return
        self.reachable = True
        usable = usable_taps(server_taps)
        if usable != self.server_taps:
            self.server_taps = usable
            if self.cache_path is not None:
                try:
                    save_tap_cache(self.cache_path, usable)
                except OSError as e:
                    self.log.warn(
                        "Cannot keep the tap list in {path}: {error}",
                        path=str(self.cache_path),
                        error=e,
                    )
        self._apply(usable)
        for board in sorted(self._boards_to_register):
            try:
                await self._register(board)
            except ServerError as e:
                self.log.warn(
                    "Cannot register board {board} on the server yet: {reason}",
                    board=board,
                    reason=e.reason,
                )
            else:
                self._boards_to_register.discard(board)

    def _apply(self, server_taps: tuple[TapConfig, ...]) -> None:
        """Merge with the file's taps; tell the core if the table changed."""
        taps, overridden = merge_taps(self.file_taps, server_taps)
        for mine, theirs in overridden:
            key = (mine.meter, theirs.ml_per_tick, theirs.relay)
            if key not in self._warned:
                self._warned.add(key)
                self.log.warn(
                    "Tap {meter}: the config file (ml_per_tick {mine}, relay {my_relay}) overrides the "
                    "server (ml_per_tick {theirs}, relay {their_relay}); drinks are posted with "
                    "the file's volume",
                    meter=mine.meter,
                    mine=mine.ml_per_tick,
                    my_relay=mine.relay,
                    theirs=theirs.ml_per_tick,
                    their_relay=theirs.relay,
                )
        if taps != self.taps:
            self.taps = taps
            self.log.info("Taps: {taps}", taps=", ".join(t.meter for t in taps) or "none")
            self.feed(TapsChanged(taps))

    async def _register(self, board: str) -> None:
        controllers = await self.client.controllers()
        controller = next((c for c in controllers if c.name == board), None)
        if controller is None:
            controller = await self.client.create_controller(board, model_name="kegboard")
            self.log.info("Registered controller {board} on the Kegbot Server", board=board)
        meters = {m.name for m in await self.client.flow_meters()}
        for port in BOARD_METERS:
            if f"{board}.{port}" not in meters:
                await self.client.create_flow_meter(controller.id, port, DEFAULT_TICKS_PER_ML)
                self.log.info(
                    "Registered flow meter {board}.{port} on the Kegbot Server; connect it to a tap there",
                    board=board,
                    port=port,
                )
