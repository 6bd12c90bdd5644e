"""What the manhole shows: the running objects and helpers named for what
they do.  Functions of the live daemon; nothing here changes pour logic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .core import ManualValve

if TYPE_CHECKING:
    from .service import KegbotService


def _time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%H:%M:%S")


def status_text(daemon: KegbotService) -> str:
    """One screen: boards, taps, pours, outbox, server, bus."""
    core = daemon.core.core
    lines = ["kegtwist status", ""]
    boards = daemon.boards.boards
    lines.append(
        f"Boards ({len(boards)}): "
        + (", ".join(f"{n} on {link.device}" for n, link in sorted(boards.items())) or "none")
    )
    waiting = [link.device for link in daemon.boards.links.values() if link.name is None]
    if waiting:
        lines.append(f"  ports without a named board: {', '.join(waiting)}")
    lines.append(f"Taps ({len(core.taps)}): " + (", ".join(sorted(core.taps)) or "none"))
    lines.append(f"Pours in progress ({len(core.pours)}):")
    for snap in core.pour_snapshots():
        lines.append(
            f"  {snap.meter_name}: flow {snap.flow_id}, {snap.username or 'anonymous'}, "
            f"{snap.ticks} ticks, {snap.volume_ml:.0f} mL, since {_time(snap.start_wall)}"
        )
    if core.cleaning:
        lines.append("Valves open for cleaning: " + ", ".join(sorted(core.cleaning.values())))
    lines.append("Valves opened by the daemon: " + (", ".join(sorted(core.open_relays)) or "none"))
    outbox = daemon.outbox
    lines.append(f"Outbox: {len(outbox)} pending, {len(outbox.dead)} dead letter(s)")
    if daemon.delivery is not None:
        d = daemon.delivery
        lines.append(f"Kegbot Server: {d.state}" + (f" ({d.last_error})" if d.last_error else ""))
    else:
        lines.append("Kegbot Server: none configured")
    bus = getattr(daemon, "bus", None)
    if bus is not None:
        lines.append(f"Kegnet: {bus.describe()}")
    stats = core.stats
    lines.append(
        f"Counters: {stats.readings} readings, {stats.drinks} drinks, {stats.pours_not_recorded} not recorded, "
        f"{stats.garbage_readings} garbage readings, {stats.ghost_pours} ghost pours, {stats.tokens_denied} tokens denied"
    )
    return "\n".join(lines)


def namespace(daemon: KegbotService) -> dict[str, Any]:
    """A fresh namespace per manhole session."""

    def status() -> None:
        """Print a one-screen status."""
        print(status_text(daemon))

    def pours() -> list[Any]:
        """The pours in progress."""
        return daemon.core.core.pour_snapshots()

    def outbox() -> list[Any]:
        """Drinks and temperatures waiting for the server."""
        return list(daemon.outbox.pending.values())

    def dead_letters() -> dict[int, Any]:
        """Drinks the server refused, by number; retry(n) or discard(n)."""
        return dict(daemon.outbox.dead)

    def retry(number: int) -> bool:
        """Queue dead letter ``number`` again (after fixing the tap or keg)."""
        done = daemon.outbox.retry_dead(number)
        if done and daemon.delivery is not None:
            daemon.delivery.wake()
        return done

    def discard(number: int) -> bool:
        """Give up dead letter ``number`` for good."""
        return daemon.outbox.discard_dead(number)

    def open_valve(relay: str) -> None:
        """Open a tap's valve by hand for cleaning: what flows is not a drink."""
        daemon.core.feed(ManualValve(relay, True))

    def close_valve(relay: str) -> None:
        """Close a valve opened with open_valve()."""
        daemon.core.feed(ManualValve(relay, False))

    return {
        "daemon": daemon,
        "boards": daemon.boards,
        "core": daemon.core.core,
        "taps": daemon.core.core.taps,
        "outbox_store": daemon.outbox,
        "delivery": daemon.delivery,
        "bus": getattr(daemon, "bus", None),
        "status": status,
        "pours": pours,
        "outbox": outbox,
        "dead_letters": dead_letters,
        "retry": retry,
        "discard": discard,
        "open_valve": open_valve,
        "close_valve": close_valve,
    }
