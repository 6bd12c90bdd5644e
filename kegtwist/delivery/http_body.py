"""Reading a reply body with a cap (4 MiB): no reply is read past it.

treq's buffering is off (``unbuffered=True``) and the body is collected by
:class:`_CappedBody`; a reply that declares or sends more than the cap is
dropped at once (the connection closed, nothing more buffered) and fails
with :class:`ReplyTooLarge`, which the client reports as ``unknown`` with
"reply over 4 MiB".
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

MAX_REPLY_BYTES = 4 * 1024 * 1024
"""No reply body is read past this; real replies are far smaller."""


class ReplyTooLarge(Exception):
    """A reply body over the cap (the connection is dropped)."""


class _CappedBody(Protocol):
    """Collects a reply body of at most ``limit`` bytes.

    Past the limit (or when the reply declares more) it drops the
    connection and fails with :class:`ReplyTooLarge`; it never holds more
    than ``limit`` bytes.  Cancelling (the call's timeout) drops the
    connection too, so a slow body stops arriving."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit = limit
        self.declared = declared
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self._drop())

    def connectionMade(self) -> None:
        if self.declared is not None and self.declared > self.limit:
            self._overflow()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._overflow()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)
        self.chunks = []

    def _overflow(self) -> None:
        self.chunks = []
        self._drop()
        if not self.done.called:
            self.done.errback(ReplyTooLarge())

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def read_capped(response: IResponse, limit: int = MAX_REPLY_BYTES) -> defer.Deferred[bytes]:
    """The body of ``response``, or :class:`ReplyTooLarge` past ``limit`` bytes."""
    length = response.length
    collector = _CappedBody(limit, None if length is UNKNOWN_LENGTH else int(length))
    response.deliverBody(collector)
    return collector.done


def size_text(limit: int) -> str:
    """``4 MiB``, or ``1000 bytes`` for a limit that is not whole MiB."""
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
