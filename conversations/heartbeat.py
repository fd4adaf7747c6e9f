"""Provider heartbeats for ``/healthz``: for each ModelConfig named in
``TOLLGATE_HEALTHZ_MODELS``, a one-token model call through the gateway, its outcome
cached for ``TOLLGATE_HEALTHZ_MODEL_SECONDS`` (seconds) so that a load balancer
polling ``/healthz`` costs at most one call per model per interval. A heartbeat's
tokens are charged to no one (there is no user); keep the list short and the
interval long. Off (no call) while the list is empty.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from conversations.gateway import GatewayError, stream_chat
from conversations.models import ModelConfig

#: Longest a heartbeat call may take (seconds) before it counts as failed.
HEARTBEAT_TIMEOUT_SECONDS = 10.0


async def _call(config: ModelConfig) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        await asyncio.wait_for(
            stream_chat(
                config=config,
                messages=[{"role": "user", "content": "ping"}],
                max_tokens=1,
                purpose="heartbeat",
            ),
            HEARTBEAT_TIMEOUT_SECONDS,
        )
        status = "ok"
    except TimeoutError:
        status = f"error: no answer in {HEARTBEAT_TIMEOUT_SECONDS:g} s"
    except GatewayError as exc:
        status = f"error: {exc}"
    except Exception as exc:  # a provider's own failure, named for the operator
        status = f"error: {type(exc).__name__}: {exc}"
    return {
        "status": status,
        "latency_ms": round((time.perf_counter() - began) * 1000),
        "checked_at": timezone.now().isoformat(),
    }


def model_heartbeat(config: ModelConfig) -> dict[str, Any]:
    """``{"status": "ok" | "error: …", "latency_ms", "checked_at"}`` of ``config``'s
    provider: from the cache when checked within ``TOLLGATE_HEALTHZ_MODEL_SECONDS``,
    else from a one-token call made now (at most ``HEARTBEAT_TIMEOUT_SECONDS``)."""
    key = f"heartbeat:{config.pk}:{config.litellm_model}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    result = async_to_sync(_call)(config)
    cache.set(key, result, settings.TOLLGATE_HEALTHZ_MODEL_SECONDS)
    return result


def healthz_models(**_signal: Any) -> dict[str, Any]:
    """Receiver of ``project.health.health_sections``: ``{"models": {name: heartbeat}}``
    for the ModelConfigs named in ``TOLLGATE_HEALTHZ_MODELS`` (a name not found says
    so); ``{}`` while that list is empty."""
    names = settings.TOLLGATE_HEALTHZ_MODELS
    if not names:
        return {}
    configs = {c.name: c for c in ModelConfig.objects.filter(name__in=names)}
    return {
        "models": {
            name: model_heartbeat(configs[name])
            if name in configs
            else {"status": "error: no such model config"}
            for name in names
        }
    }
