"""Token lookups on the Kegbot Server, one per token at a time.

A reader repeats a token's frame many times a second while the token sits
on it.  :class:`SharedLookups` wraps a resolver so that a token (auth
device, value) seen again while its lookup is in flight shares that lookup,
and one seen again within :data:`REUSE_SECONDS` of the answer gets that
answer at once, without a new request.  Time comes from an
``IReactorTime`` (a ``task.Clock`` in tests).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kegtwist.core import TokenLookupResult
from kegtwist.daemon.core_service import TokenResolver
from kegtwist.delivery.client import KegbotServerClient, ServerError

TOKEN_LOOKUP_TIMEOUT = 2.0
REUSE_SECONDS = 2.0

TokenKey = tuple[str, str]
Outcome = TokenLookupResult | Failure


def server_token_resolver(client: KegbotServerClient) -> TokenResolver:
    """Token lookups on the server, answered as core inputs, never errors."""

    async def resolve(device: str, value: str) -> TokenLookupResult:
        try:
            info = await client.lookup_token(device, value, timeout=TOKEN_LOOKUP_TIMEOUT)
        except ServerError as e:
            if e.kind == "permanent" and e.status == 404:
                return TokenLookupResult(device, value, None, False)  # unknown token
            return TokenLookupResult(device, value, error=e.reason)
        return TokenLookupResult(device, value, info.username, info.enabled)

    return lambda device, value: defer.Deferred.fromCoroutine(resolve(device, value))


class SharedLookups:
    """A :data:`~kegtwist.daemon.core_service.TokenResolver` that asks ``resolve``
    at most once per token in flight, and reuses an answer for
    ``reuse_seconds`` after it came (a failure too)."""

    def __init__(
        self, resolve: TokenResolver, clock: IReactorTime, reuse_seconds: float = REUSE_SECONDS
    ) -> None:
        self.resolve = resolve
        self.clock = clock
        self.reuse_seconds = reuse_seconds
        self.lookups = 0  # requests made (the rest were shared or reused)
        self._waiting: dict[TokenKey, list[defer.Deferred[TokenLookupResult]]] = {}
        self._answers: dict[TokenKey, tuple[float, Outcome]] = {}  # when answered, what

    def __call__(self, device: str, value: str) -> defer.Deferred[TokenLookupResult]:
        key = (device, value)
        self._forget_old(self.clock.seconds())
        answered = self._answers.get(key)
        if answered is not None:
            outcome = answered[1]
            if isinstance(outcome, Failure):
                return defer.fail(outcome)
            return defer.succeed(outcome)
        waiter: defer.Deferred[TokenLookupResult] = defer.Deferred(
            lambda d: self._leave(key, d)  # one caller cancelled: the others still wait
        )
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        self.lookups += 1
        try:
            lookup = self.resolve(device, value)
        except Exception:
            lookup = defer.fail()
        lookup.addBoth(self._answered, key)
        return waiter

    def _answered(self, outcome: Outcome, key: TokenKey) -> None:
        if isinstance(outcome, Failure):
            outcome.cleanFailure()  # kept for a while: no frames with it
        # Remember before telling anyone: a waiter's callback may ask again.
        self._answers.pop(key, None)
        self._answers[key] = (self.clock.seconds(), outcome)
        for waiter in self._waiting.pop(key, []):
            if isinstance(outcome, TokenLookupResult):
                waiter.callback(outcome)
            else:
                waiter.errback(outcome)

    def _leave(self, key: TokenKey, waiter: defer.Deferred[TokenLookupResult]) -> None:
        waiting = self._waiting.get(key)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)

    def _forget_old(self, now: float) -> None:
        """Drop answers older than ``reuse_seconds`` (or from the future:
        the clock went back)."""
        for key, (at, _) in list(self._answers.items()):
            if 0 <= now - at < self.reuse_seconds:
                continue
            del self._answers[key]
