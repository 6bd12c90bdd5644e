"""What delivery does about each outcome: the exactly-once rules as a pure policy.

No Twisted, no I/O, no clock.  Given an item's state and what the server
(or the network) said (a :class:`~kegtwist.protocol.server_api.ServerError`:
its kind, status, ``unknown_user``), the functions below say what to do;
:class:`~kegtwist.delivery.service.DeliveryService` does it (journals the
step, sends, waits out the backoff).  README "Kegbot Server: every drink
exactly once" is this table:

| item | the server (or the network) says | action |
|---|---|---|
| drink, uncertain | (before sending) | LOOK_UP: found, delivered; not found, SEND |
| drink, certain | (before sending) | SEND (journaled ``sending`` first) |
| drink | ``unreachable``: refused, DNS | RETRY_CERTAIN |
| drink | ``bad_key``: 401 | RETRY_CERTAIN (logged loudly, once) |
| drink | ``unknown``: timeout, dropped, reply over 4 MiB | RETRY_UNCERTAIN |
| drink | ``transient``: 5xx, HTML, a 3xx, an odd 2xx | RETRY_UNCERTAIN |
| drink with a drinker | ``permanent``, unknown user (500) | GUEST_REPOST |
| drink | other ``permanent``: 400, 404, 405, 4xx, CHECK | DEAD_LETTER, the server's reason |
| temperature over 5 min old | (before sending) | DROP, ``stale: N s old`` |
| temperature | ``permanent``: out of bounds ... | DROP, the server's reason |
| temperature | anything else | RETRY |

``RETRY_CERTAIN``: the request surely did nothing; the drink stays queued,
not uncertain, and is sent again after the backoff (1 s doubling to 3 min,
with jitter, forever).  ``RETRY_UNCERTAIN``: the server may have recorded
it; the drink is marked uncertain, so after the backoff it is looked up
before any re-send.  ``GUEST_REPOST`` and ``DEAD_LETTER`` move on to the
next item at once.  :func:`health` says what the failure means for the
server's state (down, or a refused key, logged loudly once).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from kegtwist.protocol.server_api import ServerError, matches

__all__ = [
    "STALE_TEMPERATURE_SECONDS",
    "Action",
    "Decision",
    "before_drink",
    "before_temperature",
    "drink_failed",
    "health",
    "matches",
    "temperature_failed",
]

STALE_TEMPERATURE_SECONDS = 300.0
"""The server stamps a temperature with its own clock: a late one would be
misdated, so it is dropped unsent."""


class Action(enum.Enum):
    SEND = "send it now"
    LOOK_UP = "look it up on the server before any re-send"
    RETRY_CERTAIN = "keep it queued, certainly not recorded; retry after the backoff"
    RETRY_UNCERTAIN = "mark it uncertain (looked up before any re-send); retry after the backoff"
    GUEST_REPOST = "keep a dead-letter note, re-post it as a guest pour"
    DEAD_LETTER = "move it to the dead letters with the server's reason"
    RETRY = "retry after the backoff"
    DROP = "drop it, counted"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""  # why, for a dead letter, a guest re-post or a drop
    status: int | None = None  # the HTTP status that decided it, if any

    @property
    def backs_off(self) -> bool:
        """The loop waits out the backoff, then tries the same item again."""
        return self.action in (Action.RETRY_CERTAIN, Action.RETRY_UNCERTAIN, Action.RETRY)


def before_drink(uncertain: bool) -> Decision:
    """An uncertain drink (a request whose outcome is unknown, or a crash
    after ``sending``) is never simply re-sent."""
    return Decision(Action.LOOK_UP if uncertain else Action.SEND)


def drink_failed(error: ServerError, username: str | None) -> Decision:
    """A drink POST failed with ``error``; ``username``: its drinker (None
    for a guest pour)."""
    if error.kind in ("unreachable", "bad_key"):
        return Decision(Action.RETRY_CERTAIN, error.reason, error.status)
    if error.kind == "permanent":
        if error.unknown_user and username:
            return Decision(Action.GUEST_REPOST, error.reason, error.status)
        return Decision(Action.DEAD_LETTER, error.reason, error.status)
    return Decision(Action.RETRY_UNCERTAIN, error.reason, error.status)


def before_temperature(
    age_seconds: float, stale_after: float = STALE_TEMPERATURE_SECONDS
) -> Decision:
    if age_seconds > stale_after:
        return Decision(Action.DROP, f"stale: {age_seconds:.0f} s old")
    return Decision(Action.SEND)


def temperature_failed(error: ServerError) -> Decision:
    """Temperatures are best effort: a refusal drops one, anything else is retried."""
    if error.kind == "permanent":
        return Decision(Action.DROP, error.reason, error.status)
    return Decision(Action.RETRY, error.reason, error.status)


def health(error: ServerError) -> Literal["down", "bad_key"]:
    """The delivery state a failure puts the server in."""
    return "bad_key" if error.kind == "bad_key" else "down"
