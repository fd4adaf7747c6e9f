"""Cached answers for the calls whose answer is fixed by their input.

A call is cacheable when its model config opts in (``cache_replies``), asks for
temperature 0 and offers no tools (a tool call's answer depends on the world).
Its key is a digest of what decides the answer: the model, its base URL, the
temperature, the output limit and the messages. Only a complete text answer
(the provider's own ``stop``) is kept, for ``TOLLGATE_LLM_CACHE_SECONDS``, in
Django's cache (Redis in production, shared by every worker).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import cache

if TYPE_CHECKING:
    from conversations.models import ModelConfig


@dataclass(frozen=True)
class CachedReply:
    """A stored answer: its text, finish reason and the litellm model that wrote it."""

    content: str
    finish_reason: str
    model: str


def reply_cacheable(
    *, config: ModelConfig, tools: list[dict] | None, temperature: float | None
) -> bool:
    """Whether a call to ``config`` offering ``tools`` at ``temperature`` (the one the
    call is made with: ``gateway.call_temperature``) may be answered from the cache."""
    return bool(config.cache_replies and temperature == 0 and not tools)


def reply_key(
    *,
    config: ModelConfig,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float | None,
) -> str:
    """The cache key of a call: a digest of what decides its answer."""
    material = json.dumps(
        [config.litellm_model, config.api_base, temperature, max_tokens, messages],
        sort_keys=True,
        default=str,
    )
    return "llm-reply:" + hashlib.sha256(material.encode()).hexdigest()


async def reply_get(*, key: str) -> CachedReply | None:
    """The answer stored under ``key``, or ``None``."""
    value = await cache.aget(key)
    return CachedReply(**value) if isinstance(value, dict) else None


async def reply_put(*, key: str, reply: CachedReply) -> None:
    """Store a complete answer under ``key`` for ``TOLLGATE_LLM_CACHE_SECONDS``."""
    await cache.aset(
        key,
        {"content": reply.content, "finish_reason": reply.finish_reason, "model": reply.model},
        timeout=settings.TOLLGATE_LLM_CACHE_SECONDS,
    )
