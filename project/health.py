"""``/healthz``: is each dependency of this process reachable?

Answers 200 with ``{"status": "ok", "checks": {...}}`` when the database, the
channel layer and the Celery broker all answer, and 503 with the failing parts
named otherwise. In embedded mode the broker is not used and reports
``"embedded"``. Apps above add informational sections through
:data:`health_sections` (the model providers' heartbeats).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.dispatch import Signal
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0

#: Sent on each ``/healthz``; each receiver returns a dict of extra sections for the
#: body (``conversations`` adds ``models``: the providers' heartbeats). Informational:
#: they never turn the answer into a 503.
health_sections = Signal()


def check_database() -> None:
    """Run ``SELECT 1``. Raises whatever the driver raises."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _channel_layer_roundtrip() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel(prefix="healthz.")
    token = uuid.uuid4().hex
    await asyncio.wait_for(
        layer.send(channel, {"type": "healthz", "token": token}), CHECK_TIMEOUT_SECONDS
    )
    message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT_SECONDS)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned a different message")


def check_channel_layer() -> None:
    """Send one message to a fresh channel and receive it back."""
    async_to_sync(_channel_layer_roundtrip)()


def check_broker() -> str:
    """Connect to the Celery broker. Returns ``"ok"`` or ``"embedded"``."""
    if settings.TOLLGATE_DISPATCHER != "celery":
        return "embedded"
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    return "ok"


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Report the status of the database, channel layer and broker (200 or 503)."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", check_database),
        ("channel_layer", check_channel_layer),
        ("broker", check_broker),
    ):
        try:
            result = check()
            checks[name] = result if isinstance(result, str) else "ok"
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}: {exc}"
    failing = [name for name, value in checks.items() if value.startswith("error")]
    body = {"status": "ok" if not failing else "unavailable", "failing": failing, "checks": checks}
    for _receiver, section in health_sections.send_robust(sender=None):
        if isinstance(section, dict):
            body.update(section)
        else:  # a receiver that raised: logged, the core checks still answer
            logger.warning("health section failed: %s", section)
    return JsonResponse(body, status=503 if failing else 200)
