"""Prometheus metrics in the text exposition format (version 0.0.4).

Written directly from the status document (no client library: see
``docs/status.md`` for what prometheus-client would cost): ``HELP`` and
``TYPE`` once per family, label values escaped (backslash, double quote,
newline), counters ending in ``_total``.  :class:`Histogram` is the one
thing the document does not hold: the daemon feeds it observations
(:meth:`Histogram.observe`), e.g. the delivery latency, from the end of a
pour to the Kegbot Server recording it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{escape_label(str(value))}"' for name, value in labels.items())
    return "{" + inner + "}"


class Exposition:
    """Families of samples, written in the order they were declared."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name not in self._families:
            self._families[name] = (kind, help_text, [])

    def sample(
        self,
        name: str,
        value: Any,
        labels: Mapping[str, str] | None = None,
        *,
        family: str | None = None,
    ) -> None:
        """One sample; a value that is not a number (None: unknown) is left out."""
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            return
        self._families[family or name][2].append(
            f"{name}{_labels(labels or {})} {format_value(value)}"
        )

    def lines(self, name: str, lines: Iterable[str]) -> None:
        self._families[name][2].extend(lines)

    def text(self) -> str:
        out = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


class Histogram:
    """A Prometheus histogram: cumulative buckets, ``_sum`` and ``_count``."""

    def __init__(
        self, name: str, help_text: str, buckets: Iterable[float] = DELIVERY_BUCKETS
    ) -> None:
        bounds = sorted(float(b) for b in buckets if math.isfinite(b))
        if not bounds:
            raise ValueError("a histogram needs at least one finite bucket")
        self.name = name
        self.help = help_text
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        value = float(seconds)
        if math.isnan(value):
            return
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def write(self, out: Exposition) -> None:
        out.family(self.name, "histogram", self.help)
        lines = []
        running = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += n
            le = "+Inf" if math.isinf(bound) else format_value(bound)
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{self.name}_sum {format_value(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        out.lines(self.name, lines)


def delivery_latency() -> Histogram:
    """The histogram :meth:`kegtwist.status.feed.StatusFeed.drink_recorded` feeds."""
    return Histogram(
        "kegbot_delivery_latency_seconds",
        "Seconds from the end of a pour to the Kegbot Server recording its drink.",
    )


def metrics_text(document: Mapping[str, Any], histograms: Iterable[Histogram] = ()) -> str:
    """The exposition of one status document (and the histograms)."""
    out = Exposition()
    doc = document

    out.family("kegbot_info", "gauge", "The daemon's version and role (always 1).")
    out.sample("kegbot_info", 1, {"version": str(doc.get("version")), "role": str(doc.get("role"))})
    out.family("kegbot_start_time_seconds", "gauge", "When the daemon started (Unix time).")
    out.sample("kegbot_start_time_seconds", doc.get("started"))
    out.family("kegbot_uptime_seconds", "gauge", "Seconds since the daemon started.")
    out.sample("kegbot_uptime_seconds", doc.get("uptime_seconds"))

    taps = doc.get("taps") or []
    out.family("kegbot_drinks_total", "counter", "Drinks per tap since the daemon started.")
    out.family(
        "kegbot_poured_milliliters_total",
        "counter",
        "Volume of the drinks per tap since the daemon started, in mL.",
    )
    for tap in taps:
        labels = {"meter": str(tap.get("meter")), "tap": str(tap.get("name") or "")}
        out.sample("kegbot_drinks_total", tap.get("drinks"), labels)
        out.sample("kegbot_poured_milliliters_total", tap.get("volume_ml"), labels)

    pours = doc.get("pours")
    out.family("kegbot_pours_in_progress", "gauge", "Pours in progress now.")
    out.sample("kegbot_pours_in_progress", len(pours) if isinstance(pours, list) else None)

    out.family("kegbot_board_connected", "gauge", "1 if the board is connected, 0 if gone.")
    out.family("kegbot_board_frames_total", "counter", "KBSP frames decoded since the port opened.")
    out.family("kegbot_board_crc_errors_total", "counter", "Frames with a bad CRC.")
    out.family("kegbot_board_framing_errors_total", "counter", "Frames with bad framing.")
    for board in doc.get("boards") or []:
        board_label = {"board": str(board.get("name"))}
        out.sample("kegbot_board_connected", bool(board.get("connected")), board_label)
        counters = board.get("counters") or {}
        labels = {**board_label, "device": str(board.get("device") or "")}
        out.sample("kegbot_board_frames_total", counters.get("frames"), labels)
        out.sample("kegbot_board_crc_errors_total", counters.get("crc_errors"), labels)
        out.sample("kegbot_board_framing_errors_total", counters.get("framing_errors"), labels)

    outbox = doc.get("outbox") or {}
    out.family("kegbot_outbox_pending", "gauge", "Drinks and temperatures waiting for the server.")
    out.sample("kegbot_outbox_pending", outbox.get("pending"))
    out.family("kegbot_outbox_uncertain", "gauge", "Drinks whose last send had no answer.")
    out.sample("kegbot_outbox_uncertain", outbox.get("uncertain"))
    out.family("kegbot_outbox_dead_letters", "gauge", "Drinks the server refused for good.")
    out.sample("kegbot_outbox_dead_letters", outbox.get("dead_letters"))
    out.family("kegbot_outbox_quarantined", "gauge", "Journal records set aside, all time.")
    out.sample("kegbot_outbox_quarantined", outbox.get("quarantined"))

    untapped = doc.get("untapped") or {}
    out.family("kegbot_held_drinks", "gauge", "Drinks waiting for a tap for their meter.")
    held = untapped.get("held")
    out.sample("kegbot_held_drinks", len(held) if isinstance(held, list) else None)
    out.family("kegbot_untapped_ticks_total", "counter", "Ticks on meters with no tap.")
    out.sample("kegbot_untapped_ticks_total", untapped.get("ticks"))

    kegnet = doc.get("kegnet") or {}
    for direction, help_text in (
        ("in", "Kegnet messages received."),
        ("out", "Kegnet messages published."),
        ("rejected", "Kegnet messages rejected (invalid, too large)."),
        ("ignored", "Kegnet messages ignored."),
    ):
        family = f"kegbot_kegnet_messages_{direction}_total"
        out.family(family, "counter", help_text)
        out.sample(family, kegnet.get(direction))

    server = doc.get("server")
    out.family("kegbot_server_up", "gauge", "1 if the Kegbot Server answers.")
    if isinstance(server, Mapping):
        out.sample("kegbot_server_up", server.get("state") == "ok")
    redis = doc.get("redis")
    out.family("kegbot_redis_up", "gauge", "1 if connected to Redis (Kegnet).")
    if isinstance(redis, Mapping):
        out.sample("kegbot_redis_up", redis.get("state") == "connected")

    out.family("kegbot_temperature_celsius", "gauge", "The last temperature of each sensor.")
    for row in doc.get("temperatures") or []:
        out.sample("kegbot_temperature_celsius", row.get("celsius"), {"sensor": str(row["sensor"])})
    out.family("kegbot_valve_open", "gauge", "1 if the valve is open.")
    for row in doc.get("valves") or []:
        out.sample("kegbot_valve_open", row.get("open"), {"relay": str(row["relay"])})

    counters = doc.get("counters") or {}
    for key, help_text in (
        ("pours_started", "Pours started."),
        ("pours_not_recorded", "Pours too small to record."),
        ("ghost_pours", "Pours ended by the ghost-pour guard."),
        ("garbage_readings", "Meter readings discarded as garbage."),
        ("tokens_denied", "Tokens that opened nothing."),
    ):
        family = f"kegbot_{key}_total"
        out.family(family, "counter", help_text)
        out.sample(family, counters.get(key))

    errors = doc.get("errors") or []
    out.family("kegbot_status_errors", "gauge", "Parts of the status that failed to read.")
    out.sample("kegbot_status_errors", sum(1 for e in errors if e.get("kind") == "failed"))

    for histogram in histograms:
        histogram.write(out)
    return out.text()
