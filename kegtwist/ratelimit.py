"""At most ``burst`` events per key per interval, counting the rest.

One helper for every log line (and every input) that the outside world can
trigger at will: rejected Kegnet messages, events ignored at the Kegnet
trust boundary, rejected Kegboard frames.  A log call asks :meth:`allow`;
when it may log it adds :func:`suppressed_note` of :meth:`take_suppressed`,
so the next line says how many were held back.

Pure: the time is an argument (any clock, as long as it is one clock).
Bounded: at most ``max_keys`` keys are tracked (the oldest is forgotten);
callers key by fixed reasons, never by names from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    interval: float
    burst: int = 1
    max_keys: int = 64
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        """True for the first ``burst`` calls per ``interval`` (from the
        first allowed one); False for the rest, which are counted."""
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval or now < window[0]:
            if window is None and len(self._windows) >= self.max_keys:
                oldest = next(iter(self._windows))
                del self._windows[oldest]
                self._suppressed.pop(oldest, None)
            self._windows[key] = (now, 1)
            return True
        start, count = window
        if count < self.burst:
            self._windows[key] = (start, count + 1)
            return True
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False

    def take_suppressed(self, key: str) -> int:
        """How many were refused since the last call for ``key`` (and reset)."""
        return self._suppressed.pop(key, 0)

    def note(self, key: str) -> str:
        """:func:`suppressed_note` of :meth:`take_suppressed`."""
        return suppressed_note(self.take_suppressed(key))


def suppressed_note(count: int) -> str:
    """`` (and N more like it since the last line)``, or nothing."""
    if not count:
        return ""
    return f" (and {count} more like it since the last line)"
