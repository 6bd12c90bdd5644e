"""Entry points for the ``kegbot`` twistd plugin (imported only on use)."""

from __future__ import annotations

import sys

from twisted.application.service import IService

from kegtwist.daemon.options import Options


def makeService(options: Options) -> IService:
    from kegtwist.daemon.compose import make_service
    from kegtwist.errors import StartupError

    try:
        return make_service(options)
    except StartupError as e:
        # One clear line, not a traceback: start-up cannot go on.
        print(f"kegbot: {e}", file=sys.stderr)
        raise SystemExit(1) from None


__all__ = ["Options", "makeService"]
