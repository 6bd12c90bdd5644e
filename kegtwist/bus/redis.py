"""Kegnet over Redis: the names the daemon imports.

:mod:`kegtwist.bus.service` is the bus (:class:`KegnetBus`: publish queue,
receiving, health, stats), :mod:`kegtwist.bus.link` one reconnecting
txredisapi connection, :mod:`kegtwist.bus.redis_url` the ``--redis-url``
parser.
"""

from __future__ import annotations

from kegtwist.bus.link import RedisLink
from kegtwist.bus.redis_url import RedisTarget, parse_redis_url
from kegtwist.bus.service import MAX_FOREIGN_ORIGINS, BusStats, KegnetBus

__all__ = [
    "MAX_FOREIGN_ORIGINS",
    "BusStats",
    "KegnetBus",
    "RedisLink",
    "RedisTarget",
    "parse_redis_url",
]
