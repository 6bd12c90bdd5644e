"""Logging and signals for ``twistd kegbot``.

``--log-format json`` hands twistd a JSON observer (one event per line on
standard output, for journald or a log shipper); the default is twistd's
text log.  Log events carry fields (tap, meter, flow id, drink id) either way.

Signals: the first SIGTERM or SIGINT stops the daemon in order (pours
recorded, valves closed, outbox flushed) and it exits with status 0; a
second one exits at once with status 1.  (twistd would otherwise re-raise
the signal after a clean stop and exit "killed by SIGTERM".)
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON lines on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


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
