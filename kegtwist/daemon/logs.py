"""Logging and signals for ``twistd kegbot``.

``--log-format json`` hands twistd a JSON observer (one event per line on
standard output, for journald or a log shipper); the default is text.  Both
drop events below ``--log-level`` (default info): meter readings and frames
are logged at debug level, and a Raspberry Pi's SD card should not take a
line per reading for years.  Log events carry fields (tap, meter, flow id,
drink id) either way.

Signals: the first SIGTERM or SIGINT stops the daemon in order (pours
recorded, valves closed, outbox flushed) and it exits with status 0, or 1
if the stop failed or left drinks unwritten (:func:`exit_with`); a second
one exits at once with status 1.  (twistd would otherwise re-raise the
signal after a clean stop and exit "killed by SIGTERM".)
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

LEVEL = LogLevel.info
"""Set from ``--log-level`` before twistd calls the factories below."""


def _filtered(observer: ILogObserver) -> ILogObserver:
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LEVEL)])


def json_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON lines on standard output."""
    return _filtered(jsonFileLogObserver(sys.stdout, recordSeparator=""))


def text_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: twistd's text format on standard output."""
    return _filtered(textFileLogObserver(sys.stdout))


def install_signal_handlers(reactor: Any) -> None:
    """Replace the reactor's SIGTERM/SIGINT handlers once it is running."""
    received = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            os.write(2, b"kegbot: second signal, exiting at once\n")
            os._exit(1)
        os.write(2, b"kegbot: stopping (a second signal exits at once)\n")
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def exit_with(status: int) -> None:
    """Make the process exit with ``status`` once twistd is done (twistd
    itself always exits 0 after a stop); 0 changes nothing."""
    if status:
        atexit.register(_exit, status)


def _exit(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
