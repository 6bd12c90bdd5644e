"""Entry points for the ``kegbot`` twistd plugin (imported only on use)."""

from __future__ import annotations

from twisted.application.service import IService

from .options import Options


def makeService(options: Options) -> IService:
    from .service import make_service

    return make_service(options)


__all__ = ["Options", "makeService"]
