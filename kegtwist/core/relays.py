"""The valves the core holds open: what it commanded, so it can close them.

Pure bookkeeping shared by pours (an authorised pour's valve), tokens and
valves (a valve opened by hand for cleaning); the rules are in
:mod:`kegtwist.core.valves`.  ``open`` holds every relay the core commanded
on and has not closed since: each is closed at shutdown.  ``cleaning`` maps
a tap's meter to its relay while an operator has it open by hand.
"""

from __future__ import annotations

from kegtwist.core.model import Effect, SetRelay


class Relays:
    def __init__(self) -> None:
        self.open: set[str] = set()
        self.cleaning: dict[str, str] = {}  # meter -> relay opened by hand

    def turn_on(self, relay: str, reason: str, out: list[Effect]) -> None:
        self.open.add(relay)
        out.append(SetRelay(relay, True, reason))

    def turn_off(self, relay: str, reason: str, out: list[Effect]) -> None:
        self.open.discard(relay)
        out.append(SetRelay(relay, False, reason))

    def close_all(self, reason: str, out: list[Effect]) -> None:
        """Close every relay still open (in name order)."""
        for relay in sorted(self.open):
            out.append(SetRelay(relay, False, reason))
        self.open.clear()
