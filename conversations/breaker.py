"""A circuit breaker per model deployment, shared by every process.

A deployment is a ModelConfig's ``(litellm_model, api_base)``. Its breaker is
closed while it answers; ``TOLLGATE_LLM_BREAKER_FAILURES`` retryable failures
(5xx, 429, timeouts, dropped or broken streams) within
``TOLLGATE_LLM_BREAKER_WINDOW`` seconds open it, and calls skip the deployment
(to a fallback, or fail at once) for ``TOLLGATE_LLM_BREAKER_COOLDOWN`` seconds.
Then it is half-open: one call at a time is let through as a probe; its success
closes the breaker, its failure opens it for another cooldown.

State lives in Django's cache (Redis in production, so all workers see one
breaker; process memory in the embedded mode), under keys that expire. A
process keeps what it read for ``MEMO_SECONDS``, so a closed breaker costs a
cache read per deployment and second, not per call, and no write on success;
another process's breaker opening is seen within that second.

litellm's Router has cooldowns, but keeps them per Router instance (per
process) unless given its own Redis, lets every request through once a
cooldown ends (no single probe), and serves only calls made through it, whose
streams it wraps in its own reader, hiding the provider's finish reason that
``gateway`` needs to tell a cut stream from a complete one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache

from conversations.demo import PROVIDER as DEMO

if TYPE_CHECKING:
    from conversations.models import ModelConfig

logger = logging.getLogger(__name__)

#: A day: open and probe keys outlive any cooldown, but are not kept forever.
_KEEP_SECONDS = 86_400
#: Seconds a process trusts what it last read of a breaker (closed, or open until).
MEMO_SECONDS = 1.0
#: Per deployment key: (when read, monotonic; open until, epoch seconds or None).
_memo: dict[str, tuple[float, float | None]] = {}


def breaker_forget() -> None:
    """Forget what this process read of every breaker (tests: their state is cleared)."""
    _memo.clear()


@dataclass(frozen=True)
class Pass:
    """May a call go to the deployment? ``allowed``; ``probe``: it is the one call let
    through a half-open breaker; ``retry_at``: when an open breaker's cooldown ends
    (epoch seconds), else ``None``."""

    allowed: bool
    probe: bool = False
    retry_at: float | None = None


def deployment_key(config: ModelConfig) -> str:
    """The cache key prefix of ``config``'s deployment (its model string and base URL)."""
    digest = hashlib.sha256(f"{config.litellm_model}|{config.api_base}".encode()).hexdigest()
    return f"llm-breaker:{digest[:24]}"


async def breaker_pass(*, config: ModelConfig) -> Pass:
    """Whether a call may go to ``config``'s deployment now (one cache read while
    closed; the half-open probe is taken with an atomic ``add``)."""
    if config.litellm_model.startswith(DEMO + "/"):
        return Pass(allowed=True)  # the offline demo: nothing to pause
    key = deployment_key(config)
    memo = _memo.get(key)
    if memo is not None and time.monotonic() - memo[0] < MEMO_SECONDS:
        if memo[1] is None:
            return Pass(allowed=True)
        if time.time() < memo[1]:
            return Pass(allowed=False, retry_at=memo[1])
    opened_until = await cache.aget(f"{key}:open")
    _memo[key] = (time.monotonic(), opened_until)
    if opened_until is None:
        return Pass(allowed=True)
    if time.time() < opened_until:
        return Pass(allowed=False, retry_at=opened_until)
    if await cache.aadd(f"{key}:probe", 1, timeout=settings.TOLLGATE_LLM_BREAKER_COOLDOWN):
        logger.info("model %s: breaker half-open, probing", config.name)
        return Pass(allowed=True, probe=True)
    return Pass(allowed=False, retry_at=opened_until)  # another call is probing


async def breaker_success(*, config: ModelConfig, passed: Pass) -> None:
    """A call let through ``passed`` was answered: a probe's success closes the breaker."""
    if not passed.probe:
        return
    key = deployment_key(config)
    await cache.adelete_many([f"{key}:open", f"{key}:probe", f"{key}:failures"])
    _memo[key] = (time.monotonic(), None)
    logger.info("model %s: probe answered, breaker closed", config.name)


async def breaker_failure(*, config: ModelConfig, passed: Pass) -> bool:
    """A call let through ``passed`` failed with a retryable error; True if this
    opened the breaker (a failed probe opens it again at once)."""
    key = deployment_key(config)
    cooldown = settings.TOLLGATE_LLM_BREAKER_COOLDOWN
    if not passed.probe:
        window = settings.TOLLGATE_LLM_BREAKER_WINDOW
        if await cache.aadd(f"{key}:failures", 1, timeout=window):
            failures = 1
        else:
            try:
                failures = await cache.aincr(f"{key}:failures")
            except ValueError:  # expired between the two calls: a new window
                await cache.aadd(f"{key}:failures", 1, timeout=window)
                failures = 1
        if failures < settings.TOLLGATE_LLM_BREAKER_FAILURES:
            return False
    opened_until = time.time() + cooldown
    await cache.aset(f"{key}:open", opened_until, timeout=_KEEP_SECONDS)
    _memo[key] = (time.monotonic(), opened_until)
    await cache.adelete_many([f"{key}:probe", f"{key}:failures"])
    logger.warning(
        "model %s: breaker opened for %ss after repeated failures", config.name, cooldown
    )
    return True
