"""kegbot-status: the running daemon in a few lines, for people and for cron.

    kegbot-status [URL] [--timeout SECONDS] [--json] [--quiet]

Reads the status document of a running daemon (default
``http://127.0.0.1:8010/status.json``, the daemon's ``--status``
endpoint), prints a short summary (boards, taps, pours, outbox, health)
and exits with:

* 0: all is well;
* 1: something needs attention, each reason on a line starting with
  ``ATTENTION:`` (a board gone, the Kegbot Server unreachable for over 10
  minutes or refusing the API key, dead letters, drinks the disk has not
  taken, a part of the status that could not be read);
* 2: the status could not be read (the daemon is not running, or runs
  without ``--status``).

``--quiet`` prints only the reasons (nothing when all is well), for cron
mail.  :func:`summary` and :func:`attention` work on a document wherever it
comes from (the manhole's ``status()`` uses them).  Standard library only:
it starts fast and imports nothing of the daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "http://127.0.0.1:8010/status.json"
SERVER_DOWN_SECONDS = 600.0
"""The Kegbot Server down this long (drinks wait in the outbox) needs attention."""
BOARD_GRACE_SECONDS = 60.0
"""Boards known from an earlier run get this long after start to say hello."""
MAX_BYTES = 4 << 20
EXIT_OK, EXIT_ATTENTION, EXIT_UNREADABLE = 0, 1, 2

Doc = Mapping[str, Any]


# --- judging a document ----------------------------------------------------------


def attention(document: Doc) -> list[str]:
    """What needs a person, one sentence each; empty when all is well."""
    now = _number(document.get("now"))
    uptime = _number(document.get("uptime_seconds")) or 0.0
    reasons: list[str] = []
    for board in _list(document.get("boards")):
        if board.get("connected"):
            continue
        if board.get("seen") is False:
            if uptime > BOARD_GRACE_SECONDS:
                reasons.append(
                    f"board {board.get('name')} has not connected since the daemon started "
                    f"{_duration(uptime)} ago (it is in local_boards.json; remove it there if "
                    "it moved for good)"
                )
            continue
        since = _number(board.get("since"))
        when = f" since {_clock(since)}" if since is not None else ""
        why = f" ({board['reason']})" if board.get("reason") else ""
        reasons.append(f"board {board.get('name')} is gone{when}{why}")
    server = document.get("server")
    if isinstance(server, Mapping):
        state = server.get("state")
        since = _number(server.get("since"))
        last = f" (last error: {server['last_error']})" if server.get("last_error") else ""
        if state == "bad_key":
            reasons.append(f"the Kegbot Server refuses the API key{last}")
        elif state == "down" and since is not None and now is not None:
            down = now - since
            if down > SERVER_DOWN_SECONDS:
                reasons.append(
                    f"the Kegbot Server has been unreachable for {_duration(down)}{last}; "
                    "drinks wait in the outbox"
                )
    outbox = document.get("outbox")
    if isinstance(outbox, Mapping):
        dead = outbox.get("dead_letters") or 0
        if dead:
            reasons.append(
                f"{dead} dead letter(s): drinks the Kegbot Server refused "
                "(kegbot-outbox dead, or dead_letters() in the manhole)"
            )
        waiting = outbox.get("not_in_outbox") or 0
        if outbox.get("disk_error") or waiting:
            reasons.append(
                f"{waiting} drink(s) wait in memory for the disk"
                + (f": {outbox['disk_error']}" if outbox.get("disk_error") else "")
            )
    for error in _list(document.get("errors")):
        if error.get("kind") == "failed":
            reasons.append(
                f"the status of {error.get('part')} could not be read: {error.get('error')}"
            )
    return reasons


def summary(document: Doc) -> str:
    """A screen for a person: boards, taps, pours, outbox, health."""
    doc = document
    lines = [
        f"kegtwist {doc.get('version') or '?'} (role {doc.get('role') or '?'}), "
        f"up {_duration(_number(doc.get('uptime_seconds')) or 0.0)}"
    ]
    boards = doc.get("boards")
    if boards is None:
        lines.append("Boards: none here (they report over Kegnet)")
    elif not boards:
        lines.append("Boards: none connected")
    else:
        lines.append("Boards:")
        for board in _list(boards):
            lines.append(f"  {_board(board)}")
    for port in _list(doc.get("ports")):
        if port.get("board") is None:
            lines.append(f"  port {port.get('device')}: {port.get('state')}, no board named yet")
    taps = doc.get("taps")
    if taps is not None:
        lines.append(f"Taps ({len(_list(taps))}):" if taps else "Taps: none known")
        for tap in _list(taps):
            lines.append(f"  {_tap(tap)}")
    pours = doc.get("pours")
    if pours is not None:
        lines.append(
            f"Pours in progress: {len(_list(pours))}" if pours else "Pours in progress: none"
        )
        for pour in _list(pours):
            valve = ", valve open" if pour.get("valve_open") else ""
            lines.append(
                f"  {pour.get('tap') or pour.get('meter')}: {pour.get('username') or 'guest'}, "
                f"{pour.get('ticks')} ticks, {_ml(pour.get('volume_ml'))}, "
                f"since {_clock(_number(pour.get('started')))}{valve}"
            )
    untapped = doc.get("untapped")
    if isinstance(untapped, Mapping) and untapped.get("held"):
        held = _list(untapped.get("held"))
        lines.append(
            f"Drinks waiting for a tap ({len(held)}): "
            + ", ".join(
                f"flow {h.get('flow_id')} on {h.get('meter')} ({h.get('ticks')} ticks)"
                for h in held
            )
        )
    temperatures = _list(doc.get("temperatures"))
    if temperatures:
        lines.append(
            "Temperatures: "
            + ", ".join(
                f"{t.get('sensor')} {_celsius(t.get('celsius'))}"
                + (
                    f" ({_duration(t['age_seconds'])} ago)"
                    if _number(t.get("age_seconds")) is not None
                    else ""
                )
                + (" LOST" if t.get("lost") else "")
                for t in temperatures
            )
        )
    outbox = doc.get("outbox")
    if isinstance(outbox, Mapping):
        lines.append(
            f"Outbox: {outbox.get('pending')} pending, {outbox.get('uncertain')} uncertain, "
            f"{outbox.get('dead_letters')} dead letter(s)"
            + (
                f", {outbox.get('quarantined')} record(s) quarantined"
                if outbox.get("quarantined")
                else ""
            )
        )
        for dead in _list(outbox.get("dead")):
            lines.append(
                f"  dead #{dead.get('number')}: flow {dead.get('flow_id')} on {dead.get('meter')}, "
                f"{dead.get('ticks')} ticks, {dead.get('username') or 'guest'}: {dead.get('reason')}"
            )
    server = doc.get("server")
    if isinstance(server, Mapping):
        text = f"Kegbot Server: {server.get('state')}"
        if server.get("state") != "ok" and _number(server.get("since")) is not None:
            text += f" since {_clock(_number(server.get('since')))}"
        if server.get("last_error"):
            text += f" ({server.get('last_error')})"
        lines.append(text + (f" at {server.get('url')}" if server.get("url") else ""))
    elif "server" in doc:
        lines.append("Kegbot Server: none")
    redis = doc.get("redis")
    if isinstance(redis, Mapping):
        text = f"Redis: {redis.get('state')} ({redis.get('url')}, channel {redis.get('channel')})"
        if redis.get("last_error") and redis.get("state") != "connected":
            text += f": {redis.get('last_error')}"
        kegnet = doc.get("kegnet")
        if isinstance(kegnet, Mapping):
            text += (
                f"; Kegnet {kegnet.get('in')} in, {kegnet.get('out')} out, "
                f"{kegnet.get('rejected')} rejected"
            )
        lines.append(text)
    elif "redis" in doc:
        lines.append("Redis: off")
    reasons = attention(doc)
    if reasons:
        lines.extend(f"ATTENTION: {reason}" for reason in reasons)
    else:
        lines.append("All well.")
    return "\n".join(lines)


def _board(board: Mapping[str, Any]) -> str:
    name = f"{board.get('name')}" + (f" on {board.get('device')}" if board.get("device") else "")
    if board.get("connected"):
        parts = ["remote" if board.get("remote") else "connected"]
        if board.get("firmware") is not None:
            parts.append(f"firmware {board.get('firmware')}")
        counters = board.get("counters")
        if isinstance(counters, Mapping):
            parts.append(
                f"{counters.get('frames')} frames, {counters.get('crc_errors')} CRC errors, "
                f"{counters.get('framing_errors')} framing errors"
            )
        return f"{name}: " + ", ".join(parts)
    if board.get("seen") is False:
        return f"{name}: not connected since the daemon started"
    since = _number(board.get("since"))
    return (
        f"{name}: GONE"
        + (f" since {_clock(since)}" if since is not None else "")
        + (f" ({board.get('reason')})" if board.get("reason") else "")
    )


def _tap(tap: Mapping[str, Any]) -> str:
    text = f"{tap.get('name') or tap.get('meter')}"
    facts = [str(tap.get("meter"))] if tap.get("name") else []
    if tap.get("relay"):
        facts.append(f"valve {tap.get('relay')}")
    if tap.get("ml_per_tick") is not None:
        per_tick = _number(tap.get("ml_per_tick"))
        facts.append(f"{per_tick:.4g} mL/tick" if per_tick is not None else "")
    if tap.get("keg") is not None:
        facts.append(f"keg {tap.get('keg')}")
    facts.append(f"from the {tap.get('source')}" if tap.get("source") else "")
    text += " (" + ", ".join(f for f in facts if f) + ")"
    text += f": {tap.get('drinks', 0)} drink(s), {_ml(tap.get('volume_ml'))} since start"
    if tap.get("pouring"):
        text += ", pouring"
    return text


# --- formatting ---------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _list(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _clock(wall: float | None) -> str:
    if wall is None:
        return "?"
    try:
        return datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        hours, rest = divmod(int(seconds), 3600)
        return f"{hours} h {rest // 60} min"
    return f"{seconds / 86400:.1f} days"


def _ml(value: Any) -> str:
    number = _number(value)
    return f"{number:.0f} mL" if number is not None else "? mL"


def _celsius(value: Any) -> str:
    number = _number(value)
    return f"{number:.1f} °C" if number is not None else "? °C"


# --- the command ------------------------------------------------------------------------


def status_url(url: str) -> str:
    """``http://host:8010`` and ``http://host:8010/`` mean its /status.json."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// URL, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status.json")
    return urlunsplit(parts)


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """The document at ``url`` (no proxy: the daemon is usually local)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        data = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError("the status document is over 4 MiB")
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("not a status document")
    return document


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = argparse.ArgumentParser(
        prog="kegbot-status",
        description="Show a running kegtwist daemon's status; exit 1 if something needs "
        "attention, 2 if the status cannot be read.",
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print the document as JSON")
    parser.add_argument(
        "--quiet", action="store_true", help="print only what needs attention (for cron)"
    )
    args = parser.parse_args(argv)
    try:
        url = status_url(args.url)
        document = fetch(url, args.timeout)
    except urllib.error.HTTPError as e:
        print(f"kegbot-status: {args.url}: HTTP {e.code} {e.reason}", file=err)
        return EXIT_UNREADABLE
    except urllib.error.URLError as e:
        print(
            f"kegbot-status: cannot read {args.url}: {e.reason} "
            "(is the daemon running, with --status?)",
            file=err,
        )
        return EXIT_UNREADABLE
    except (OSError, ValueError) as e:
        print(f"kegbot-status: cannot read {args.url}: {e}", file=err)
        return EXIT_UNREADABLE
    reasons = attention(document)
    if args.json:
        print(json.dumps(document, indent=1, sort_keys=True), file=out)
        for reason in reasons:
            print(f"ATTENTION: {reason}", file=err)
    elif args.quiet:
        for reason in reasons:
            print(f"ATTENTION: {reason}", file=out)
    else:
        print(summary(document), file=out)
    return EXIT_ATTENTION if reasons else EXIT_OK


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
