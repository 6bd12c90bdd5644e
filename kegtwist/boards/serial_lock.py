"""One program per serial port: the daemon and the kegboard-* tools alike.

Two programs reading one tty steal each other's bytes (each frame goes to
whichever read first), and a second open reconfigures and flushes the port
under the first.  So whoever opens a Kegboard's port first holds it:
:func:`lock_port` runs on the new descriptor before anything touches the
port's settings, and a second opener gets :class:`PortInUseError` at once.

Importing this module loads nothing but the standard library; pyserial and
Twisted's SerialPort load with :func:`exclusive_serial_port`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import termios
from typing import Any

# TIOCEXCL/TIOCNXCL are missing from termios on some platforms; Linux values.
TIOCEXCL = getattr(termios, "TIOCEXCL", 0x540C)
TIOCNXCL = getattr(termios, "TIOCNXCL", 0x540D)


class PortInUseError(OSError):
    """The port is held by another program (the daemon, or a kegboard-* tool)."""

    def __init__(self, device: str) -> None:
        super().__init__(errno.EBUSY, f"{device} is in use by another program")
        self.device = device

    def __str__(self) -> str:
        return str(self.strerror)


def lock_port(fd: int, device: str) -> None:
    """Hold the port open on ``fd`` exclusively, or raise PortInUseError.

    Two locks, as pyserial's ``exclusive=True`` plus TIOCEXCL:
    ``flock(LOCK_EX | LOCK_NB)`` is the one that counts, because TIOCEXCL
    (the kernel refuses further opens of the tty) does not apply to root,
    and a daemon or ``sudo kegboard-monitor`` run as root would still get
    in.  Every opener in kegtwist takes the flock, so none can disturb
    another.  The flock belongs to the open file: it goes with the last
    close of ``fd``, also when the process dies.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise PortInUseError(device) from e
        raise
    try:
        fcntl.ioctl(fd, TIOCEXCL)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EINVAL):  # not a tty: the flock will do
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise


def unlock_port(fd: int) -> None:
    """Undo :func:`lock_port` before closing ``fd``.

    TIOCEXCL stays on the tty until its last close, and a pty's simulator
    (or anything else keeping the tty open) would otherwise keep non-root
    openers out after we are gone."""
    for undo in (lambda: fcntl.ioctl(fd, TIOCNXCL), lambda: fcntl.flock(fd, fcntl.LOCK_UN)):
        try:
            undo()
        except OSError:
            pass


def open_error(device: str, error: OSError) -> OSError:
    """EBUSY from open() is TIOCEXCL refusing us: the port is in use."""
    if error.errno == errno.EBUSY and not isinstance(error, PortInUseError):
        return PortInUseError(device)
    return error


def open_exclusive(device: str) -> int:
    """Open ``device`` (read-write, non-blocking, not as a controlling tty)
    and lock it; the descriptor, or PortInUseError."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise open_error(device, e) from e
    try:
        lock_port(fd, device)
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.cache
def exclusive_serial_port() -> Any:
    """Twisted's SerialPort class, opening its device through :func:`lock_port`."""
    import serial
    from twisted.internet.serialport import SerialPort

    class ExclusiveSerial(serial.Serial):
        """pyserial, locking the port right after open(), before it is
        configured or flushed (which would disturb the holder)."""

        _locked_fd: int | None = None

        def open(self) -> None:
            try:
                super().open()
            except serial.SerialException as e:
                self._locked_fd = None  # pyserial closed the descriptor
                error = open_error(str(self.portstr), e)
                if error is e:
                    raise
                raise error from e

        def _reconfigure_port(self, force_update: bool = False) -> None:
            if self.fd is not None and self._locked_fd != self.fd:
                lock_port(self.fd, str(self.portstr))
                self._locked_fd = self.fd
            super()._reconfigure_port(force_update)  # type: ignore[misc]

        def close(self) -> None:
            if self.is_open and self.fd is not None and self._locked_fd == self.fd:
                unlock_port(self.fd)
            self._locked_fd = None
            super().close()

    class ExclusiveSerialPort(SerialPort):
        _serialFactory = ExclusiveSerial

    return ExclusiveSerialPort


__all__ = ["PortInUseError", "exclusive_serial_port", "lock_port", "open_exclusive", "unlock_port"]
