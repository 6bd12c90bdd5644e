"""Files that survive a crash: written whole or not at all.

One implementation for every file the daemon rewrites (the pour
checkpoint, the outbox's compacted journal, the tap cache, the list of
local boards): tmp, write, fsync, rename, fsync of the directory.  The
``write`` and ``fsync`` seams are how tests make a disk fail (ENOSPC,
EIO); ``fsync=None`` skips syncing (tests of speed only).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def write_all(write: Callable[[int, bytes], int], fd: int, data: bytes) -> None:
    """All of ``data``, or OSError: a short write that makes no progress is
    a full disk."""
    view = memoryview(data)
    while view:
        n = write(fd, view.tobytes())
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def fsync_dir(directory: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename or a new file in ``directory`` itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    write: Callable[[int, bytes], int] = os.write,
    fsync: Callable[[int], None] | None = os.fsync,
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the
    new file, never a torn one: tmp, fsync, rename, fsync of the directory.
    ``write`` and ``fsync`` are the seams a failing disk is tested through."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(write, fd, data)
            if fsync is not None:
                fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()  # frees the space it took
        except OSError:
            pass
        raise
    if fsync is not None:
        fsync_dir(path.parent, fsync)  # the rename itself
