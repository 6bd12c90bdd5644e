"""What the manhole shows: the running objects and helpers named for what
they do.  Functions of the live daemon; nothing here changes pour logic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kegtwist.core import ManualValve

if TYPE_CHECKING:
    from kegtwist.daemon.core_service import CoreService
    from kegtwist.daemon.lifecycle import KegbotService
    from kegtwist.delivery.outbox import Outbox


def _core(daemon: KegbotService) -> CoreService:
    if daemon.core is None:
        raise RuntimeError("this daemon has no core (--role kegboard): ask the core's manhole")
    return daemon.core


def _outbox(daemon: KegbotService) -> Outbox:
    if daemon.outbox is None:
        raise RuntimeError("this daemon has no outbox (--role kegboard): ask the core's manhole")
    return daemon.outbox


def status_text(daemon: KegbotService) -> str:
    """One screen, the same as ``kegbot-status`` prints: the parts are read
    only through the status document (:mod:`kegtwist.status.document`)."""
    import time

    from kegtwist.status.document import build_document
    from kegtwist.tools.status import summary

    now = time.time()
    return summary(build_document(daemon, now, daemon.started_wall or now))


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
