"""Entry points for the ``kegbot`` twistd plugin (imported only on use).

Start-up, as twistd runs it:

1. :class:`Options` parses the command line and the config file.  Then,
   and only under twistd, one explicit step keeps the TLS stack out of
   memory when no ``https://`` or ``rediss://`` URL is configured
   (:mod:`kegtwist.daemon.lean`: about 14 MiB of a Pi's RAM).  It must run
   here, before twistd imports the reactor, which would load pyOpenSSL.
2. :func:`makeService` composes the daemon (:mod:`kegtwist.daemon.compose`);
   nothing touches disk or network yet.
3. twistd drops privileges (``--uid``) and starts the service: every part
   does its I/O in ``startService``.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService

from kegtwist.daemon import options


class Options(options.Options):
    def postOptions(self) -> None:
        super().postOptions()
        if getattr(self, "parent", None) is not None:  # under twistd only
            from kegtwist.daemon import lean

            if not lean.needs_tls(self.settings):
                lean.keep_tls_out()


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
