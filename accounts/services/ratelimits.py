"""Requests and tokens per minute, counted with the ``limits`` library.

Storage: Redis at ``settings.REDIS_URL`` (keys prefixed with
``settings.TOLLGATE_RATELIMIT_KEY_PREFIX``, by default the deployment's
``tollgate.<TOLLGATE_DEPLOYMENT>.rl``), or
process memory when ``REDIS_URL`` is empty (embedded mode, one process).

- Requests per minute use ``limits``' moving window (exact; one list entry per
  request, timestamps from this process's clock).
- Tokens per minute use its sliding window counter (two counters per key, O(1)
  whatever the token count; an approximation of a true sliding minute).

A user limit counts that user, a group limit counts all its members together,
a default limit counts each user alone (the same scopes as budgets).
"""

from __future__ import annotations

import functools
import math
import time

from django.conf import settings
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from accounts.errors import RateLimited
from accounts.models import RateLimit, User
from accounts.selectors import ratelimits_applicable


@functools.cache
def _limiters(
    url: str, prefix: str
) -> tuple[MovingWindowRateLimiter, SlidingWindowCounterRateLimiter]:
    if url:
        storage = storage_from_string(url, key_prefix=prefix)
    else:
        storage = storage_from_string("memory://")
    return MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)


def ratelimit_limiters() -> tuple[MovingWindowRateLimiter, SlidingWindowCounterRateLimiter]:
    """The (requests, tokens) limiters for the current ``settings.REDIS_URL``."""
    return _limiters(settings.REDIS_URL or "", settings.TOLLGATE_RATELIMIT_KEY_PREFIX)


def _scope(limit: RateLimit, user_id: int) -> str:
    if limit.group_id:
        return f"g{limit.group_id}"
    return f"u{user_id}"


def _retry_after(limiter, item, *ids: str) -> float:
    reset_at = limiter.get_window_stats(item, *ids).reset_time
    return max(1.0, reset_at - time.time())


def _refuse(amount: int, unit: str, retry: float) -> RateLimited:
    seconds = math.ceil(retry)
    if amount == 1:
        unit = unit.removesuffix("s")
    return RateLimited(
        retry,
        f"rate limit of {amount:,} {unit} per minute reached; try again in {seconds} s",
    )


def ratelimit_check(
    *, user: User | int, tokens: int = 0, _limits: list[RateLimit] | None = None
) -> None:
    """Admit one LLM request for ``user`` under every applicable rate limit.

    Checks the tokens-per-minute limits, then counts one request against each
    requests-per-minute limit (in id order). Tokens are not counted here (see
    ``ratelimit_add_tokens``): a tokens-per-minute limit passes when
    ``tokens`` (the call's estimate; at most the limit itself, so a huge call
    waits for an empty minute rather than never passing) still fits.

    Raises:
        RateLimited: with ``retry_after_seconds`` and a message such as
            ``"rate limit of 20 requests per minute reached; try again in 12 s"``.
    """
    user_id = user if isinstance(user, int) else user.pk
    applicable = ratelimits_applicable(user=user_id) if _limits is None else _limits
    if not applicable:
        return
    requests, token_counter = ratelimit_limiters()
    # Token limits first: testing them consumes nothing.
    for limit in applicable:
        if limit.tokens_per_minute:
            item = RateLimitItemPerMinute(limit.tokens_per_minute)
            ids = ("tok", f"rl{limit.pk}", _scope(limit, user_id))
            need = max(1, min(tokens, limit.tokens_per_minute))
            if not token_counter.test(item, *ids, cost=need):
                raise _refuse(
                    limit.tokens_per_minute, "tokens", _retry_after(token_counter, item, *ids)
                )
    # A request hit is atomic (refused hits count nothing). When a second
    # request limit refuses, the first one has counted this request: a
    # refused call may cost one slot of a wider limit, never more.
    for limit in applicable:
        if limit.requests_per_minute:
            item = RateLimitItemPerMinute(limit.requests_per_minute)
            ids = ("req", f"rl{limit.pk}", _scope(limit, user_id))
            if not requests.hit(item, *ids):
                raise _refuse(
                    limit.requests_per_minute, "requests", _retry_after(requests, item, *ids)
                )


def ratelimit_add_tokens(
    *, user: User | int, tokens: int, _limits: list[RateLimit] | None = None
) -> None:
    """Count ``tokens`` (prompt + completion of a finished call) for ``user``.

    Usage beyond a limit fills that minute's window (later calls wait); it
    never raises for being over. Negative or zero tokens count nothing.
    """
    if tokens <= 0:
        return
    user_id = user if isinstance(user, int) else user.pk
    if _limits is None:
        _limits = ratelimits_applicable(user=user_id)
    limits = [(rl, rl.tokens_per_minute) for rl in _limits if rl.tokens_per_minute]
    if not limits:
        return
    _, token_counter = ratelimit_limiters()
    for limit, per_minute in limits:
        item = RateLimitItemPerMinute(per_minute)
        ids = ("tok", f"rl{limit.pk}", _scope(limit, user_id))
        if not token_counter.hit(item, *ids, cost=min(tokens, per_minute)):
            remaining = token_counter.get_window_stats(item, *ids).remaining
            if remaining > 0:
                token_counter.hit(item, *ids, cost=remaining)
