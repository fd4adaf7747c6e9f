"""The embedded mode's stand-in for Celery beat: an asyncio loop that expires approvals."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async

from approvals.services import approvals_expire_due

logger = logging.getLogger(__name__)


async def expiry_loop(interval_seconds: float = 30) -> None:
    """Run ``approvals_expire_due`` every ``interval_seconds`` (seconds) until cancelled.

    Started by the in-process dispatcher in embedded mode; errors are logged
    and the loop goes on. Cancel the task to stop it.
    """
    while True:
        try:
            await sync_to_async(approvals_expire_due, thread_sensitive=True)()
        except Exception:
            logger.exception("Approval expiry sweep failed")
        await asyncio.sleep(interval_seconds)
