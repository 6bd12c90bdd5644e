"""The state directory's lock: one kegbot (or one writing tool) at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kegtwist.errors import StartupError


class StateDirBusy(StartupError, RuntimeError):
    """Another process (a running kegbot) holds the state directory."""


def lock_state_dir(directory: Path, *, shared: bool = False) -> Any:
    """An exclusive lock on ``directory/lock`` for as long as the returned
    file stays open: two processes appending to one journal would corrupt
    it, and two cores would record every pour twice.

    ``shared``: a reader's lock, taken without creating or writing anything
    (None if no lock file exists: no daemon ever ran there)."""
    import fcntl

    f: Any
    if shared:
        try:
            f = open(directory / "lock", "rb")
        except FileNotFoundError:
            return None
    else:
        try:
            f = open(directory / "lock", "a+")
        except OSError as e:  # a read-only state dir: the lock file may still be there
            try:
                f = open(directory / "lock", "rb")
            except OSError:
                raise e from None
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StateDirBusy(
            f"another kegbot is using the state directory {directory} "
            "(stop it, or give this one its own --state-dir)"
        ) from None
    return f
