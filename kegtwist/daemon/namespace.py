"""What the manhole shows: the running objects and helpers named for what
they do.  Functions of the live daemon; nothing here changes pour logic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kegtwist.core import ManualValve

if TYPE_CHECKING:
    from kegtwist.daemon.core_service import CoreService
    from kegtwist.daemon.lifecycle import KegbotService
    from kegtwist.delivery.outbox import Outbox


def _time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%H:%M:%S")


def _core(daemon: KegbotService) -> CoreService:
    if daemon.core is None:
        raise RuntimeError("this daemon has no core (--role kegboard): ask the core's manhole")
    return daemon.core


def _outbox(daemon: KegbotService) -> Outbox:
    if daemon.outbox is None:
        raise RuntimeError("this daemon has no outbox (--role kegboard): ask the core's manhole")
    return daemon.outbox


def status_text(daemon: KegbotService) -> str:
    """One screen: boards, taps, pours, outbox, server, bus."""
    lines = [f"kegtwist status (role {daemon.role})", ""]
    if daemon.boards is not None:
        boards = daemon.boards.boards
        lines.append(
            f"Boards ({len(boards)}): "
            + (", ".join(f"{n} on {link.device}" for n, link in sorted(boards.items())) or "none")
        )
        waiting = [link.device for link in daemon.boards.links.values() if link.name is None]
        if waiting:
            lines.append(f"  ports without a named board: {', '.join(waiting)}")
    else:
        lines.append("Boards: none here (--role core: boards report over Kegnet)")
    if daemon.core is not None:
        core = daemon.core.core
        lines.append(f"Taps ({len(core.taps)}): " + (", ".join(sorted(core.taps)) or "none"))
        lines.append(f"Pours in progress ({len(core.pours)}):")
        for snap in core.pour_snapshots():
            lines.append(
                f"  {snap.meter_name}: flow {snap.flow_id}, {snap.username or 'anonymous'}, "
                f"{snap.ticks} ticks, {snap.volume_ml:.0f} mL, since {_time(snap.start_wall)}"
            )
        if core.held:
            lines.append(
                f"Drinks waiting for a tap ({len(core.held)}): "
                + ", ".join(
                    f"flow {h.drink.flow_id} on {h.drink.meter_name} ({h.drink.ticks} ticks)"
                    for h in core.held.values()
                )
            )
        if core.cleaning:
            lines.append("Valves open for cleaning: " + ", ".join(sorted(core.cleaning.values())))
        lines.append(
            "Valves opened by the daemon: " + (", ".join(sorted(core.open_relays)) or "none")
        )
    if daemon.outbox is not None:
        outbox = daemon.outbox
        lines.append(f"Outbox: {len(outbox)} pending, {len(outbox.dead)} dead letter(s)")
    if daemon.delivery is not None:
        d = daemon.delivery
        lines.append(f"Kegbot Server: {d.state}" + (f" ({d.last_error})" if d.last_error else ""))
    elif daemon.core is not None:
        lines.append("Kegbot Server: none configured")
    if daemon.bus is not None:
        lines.append(f"Kegnet: {daemon.bus.describe()}")
    else:
        lines.append("Kegnet: off (--redis-url none)")
    if daemon.core is not None:
        stats = daemon.core.core.stats
        lines.append(
            f"Counters: {stats.readings} readings, {stats.drinks} drinks, {stats.pours_not_recorded} not recorded, "
            f"{stats.garbage_readings} garbage readings, {stats.ghost_pours} ghost pours, {stats.tokens_denied} tokens denied, "
            f"{stats.untapped_ticks} ticks on meters without a tap"
        )
    return "\n".join(lines)


def namespace(daemon: KegbotService) -> dict[str, Any]:
    """A fresh namespace per manhole session."""

    def status() -> None:
        """Print a one-screen status."""
        print(status_text(daemon))

    def pours() -> list[Any]:
        """The pours in progress."""
        return _core(daemon).core.pour_snapshots()

    def outbox() -> list[Any]:
        """Drinks and temperatures waiting for the server."""
        return list(_outbox(daemon).pending.values())

    def dead_letters() -> dict[int, Any]:
        """Drinks the server refused, by number; retry(n) or discard(n)."""
        return dict(_outbox(daemon).dead)

    def retry(number: int) -> bool:
        """Queue dead letter ``number`` again (after fixing the tap or keg)."""
        done = _outbox(daemon).retry_dead(number)
        if done and daemon.delivery is not None:
            daemon.delivery.wake()
        return done

    def discard(number: int) -> bool:
        """Give up dead letter ``number`` for good."""
        return _outbox(daemon).discard_dead(number)

    def open_valve(relay: str) -> None:
        """Open a tap's valve by hand for cleaning: what flows is not a drink."""
        _core(daemon).feed(ManualValve(relay, True))

    def close_valve(relay: str) -> None:
        """Close a valve opened with open_valve()."""
        _core(daemon).feed(ManualValve(relay, False))

    core = daemon.core.core if daemon.core is not None else None
    return {
        "daemon": daemon,
        "boards": daemon.boards,
        "core": core,
        "taps": core.taps if core is not None else {},
        "outbox_store": daemon.outbox,
        "delivery": daemon.delivery,
        "bus": daemon.bus,
        "status": status,
        "pours": pours,
        "outbox": outbox,
        "dead_letters": dead_letters,
        "retry": retry,
        "discard": discard,
        "open_valve": open_valve,
        "close_valve": close_valve,
    }
