"""Tokens: presented, looked up, authorised (or refused) onto taps.

Rules (``docs/pour-rules.md``, "Tokens"), and the decisions taken where the
sources are silent:

* A token put on a reader is looked up on the server (``LookupToken``), for
  its tap, or for the reader's ``taps``, else every known tap.  A second
  ``present`` while the lookup runs does not ask again.
* An enabled token with a username opens every tap it names for that
  drinker.  Unknown, unassigned or disabled tokens open nothing, and a
  refusal forgets an earlier confirmation.
* Mid-pour: an anonymous pour is adopted whole (volume before the token
  does not count toward the drinker's ``max_volume_ml``); a different
  drinker's pour is split (ends ``replaced``), the first part staying with
  the first drinker; the same drinker again keeps the pour and restarts
  its idle timer.  A token on a tap being cleaned is ignored.
* Removing a captive token ends its pours and also cancels its pending
  lookup, so a late answer opens nothing.  A contactless card (not
  captive) "leaves" at once: removal is ignored, idle ends the pour.
* Server unavailable: ``offline_policy = "deny"`` opens nothing;
  ``"cached"`` opens for the drinker the server confirmed within
  ``offline_cache_seconds``.
* A reader repeating a refused token warns once a minute per token (then
  debug), not once per frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kegtwist.core.config import AuthDevice, AuthSettings, TapConfig
from kegtwist.core.inputs import TokenEvent
from kegtwist.core.model import Effect, LookupToken, Notice, PourUpdate, TokenLookupResult
from kegtwist.core.pours import Pours, TokenKey
from kegtwist.core.relays import Relays
from kegtwist.core.stats import CoreStats
from kegtwist.core.valves import Valves
from kegtwist.ratelimit import RateLimiter


@dataclass(slots=True)
class PendingLookup:
    meters: tuple[str, ...]
    device: AuthDevice


class Tokens:
    def __init__(
        self,
        auth: AuthSettings,
        stats: CoreStats,
        pours: Pours,
        valves: Valves,
        relays: Relays,
    ) -> None:
        self.auth = auth
        self.stats = stats
        self.pours = pours
        self.valves = valves
        self.relays = relays
        self.pending: dict[TokenKey, PendingLookup] = {}
        self.confirmed: dict[TokenKey, tuple[str, float]] = {}  # username, mono
        self._warnings = RateLimiter(interval=60.0, max_keys=256)

    def event(self, item: TokenEvent, taps: Mapping[str, TapConfig], out: list[Effect]) -> None:
        key = (item.auth_device, item.token_value)
        device = self.auth.device(item.auth_device)
        if item.present:
            if item.meter_name is not None:
                meters: tuple[str, ...] = (item.meter_name,)
            elif device.taps is not None:
                meters = device.taps
            else:
                meters = tuple(taps)
            if key not in self.pending:
                out.append(LookupToken(item.auth_device, item.token_value))
            self.pending[key] = PendingLookup(meters, device)
            return
        if not device.captive:
            return  # a contactless card leaves at once; idle ends the pour
        self.pending.pop(key, None)
        for meter, pour in list(self.pours.active.items()):
            if pour.token == key and pour.captive:
                self.pours.end(meter, "token_removed", out)

    def lookup_result(
        self,
        item: TokenLookupResult,
        taps: Mapping[str, TapConfig],
        mono: float,
        wall: float,
        out: list[Effect],
    ) -> None:
        key = (item.auth_device, item.token_value)
        pending = self.pending.pop(key, None)
        if pending is None:
            return  # removed meanwhile, or an answer nobody asked for
        username = self._username(item, key, mono, out)
        if username is None:
            return
        for meter in pending.meters:
            tap = taps.get(meter)
            if tap is not None:
                self._authorise(tap, username, key, pending.device, mono, wall, out)

    def _username(
        self, item: TokenLookupResult, key: TokenKey, mono: float, out: list[Effect]
    ) -> str | None:
        """Whom the token opens for, or None (with the warning why not)."""
        fields: dict[str, object] = {"device": item.auth_device, "token": item.token_value}
        warn: Literal["warn", "debug"] = (
            "warn" if self._warnings.allow(f"{key[0]}/{key[1]}", mono) else "debug"
        )
        if item.error is not None:
            self.stats.lookups_failed += 1
            fields["error"] = item.error
            cached = self.confirmed.get(key)
            auth = self.auth
            if (
                auth.offline_policy == "cached"
                and cached is not None
                and mono - cached[1] <= auth.offline_cache_seconds
            ):
                fields["username"] = cached[0]
                out.append(
                    Notice(
                        warn,
                        "Token {device}/{token}: server unavailable ({error}); opening for {username}, confirmed earlier (offline_policy cached)",
                        fields,
                    )
                )
                return cached[0]
            self.stats.tokens_denied += 1
            fields["policy"] = auth.offline_policy
            out.append(
                Notice(
                    warn,
                    "Token {device}/{token}: server unavailable ({error}); opening nothing (offline_policy {policy})",
                    fields,
                )
            )
            return None
        if item.username is None or not item.enabled:
            self.stats.tokens_denied += 1
            self.confirmed.pop(key, None)
            why = (
                "is disabled"
                if item.username is not None
                else "belongs to nobody (unknown or unassigned)"
            )
            fields["why"] = why
            out.append(Notice(warn, "Token {device}/{token} {why}; opening nothing", fields))
            return None
        self.confirmed[key] = (item.username, mono)
        return item.username

    def _authorise(
        self,
        tap: TapConfig,
        username: str,
        key: TokenKey,
        device: AuthDevice,
        mono: float,
        wall: float,
        out: list[Effect],
    ) -> None:
        if tap.meter in self.relays.cleaning:
            out.append(
                Notice(
                    "warn",
                    "Token for {username} ignored on {meter}: the tap is being cleaned",
                    {"username": username, "meter": tap.meter},
                )
            )
            return
        pour = self.pours.active.get(tap.meter)
        if pour is not None and pour.username is not None and pour.username != username:
            self.pours.end(tap.meter, "replaced", out)
            pour = None
        if pour is None:
            pour = self.pours.start(tap, mono, wall, out)
        self.pours.authorise(pour, username, key, device)
        out.append(PourUpdate(pour.snapshot(), "active"))
        if tap.relay and not pour.valve_open:
            self.valves.open_for_pour(pour, tap.relay, mono, out)
