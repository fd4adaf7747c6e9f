"""Pushes from the tools app to the browser (tools must not import conversations).

Same contract as ``conversations/events.py``: a channel-layer message
``{"type": "html.push", "html": ...}`` sent to ``conversation.<id>``, with
server-rendered fragments that carry ``hx-swap-oob`` and stable ids.
"""

from __future__ import annotations

import logging
import time

from channels.layers import get_channel_layer
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

TEMPLATE = "tools/mcp.html"


def progress_html(
    *, invocation_id: int, progress: float | None, total: float | None, message: str | None
) -> str:
    """The ``#invocation-<id>-progress`` fragment (out-of-band swap) for one update."""
    return render_to_string(
        f"{TEMPLATE}#invocation-progress",
        {
            "invocation_id": invocation_id,
            "progress": progress,
            "total": total,
            "message": (message or "")[:300],
            "oob": True,
        },
    ).strip()


class ProgressPusher:
    """Push a running call's progress into its block in the chat, at most ``per_second``.

    ``await pusher(progress, total, message)`` is an MCP ``on_progress`` callback.
    Updates arriving faster than the rate are dropped, except the last one of a
    known total. A push that fails is logged and never raised (progress is a nicety;
    the call goes on). Sent straight away, not on commit: there is no write to wait for.
    """

    def __init__(self, *, conversation_id: int, invocation_id: int, per_second: float = 10.0):
        self.group = f"conversation.{conversation_id}"
        self.invocation_id = invocation_id
        self.interval = 1.0 / per_second
        self.sent = 0
        self._last = 0.0

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        now = time.monotonic()
        final = total is not None and progress >= total
        if now - self._last < self.interval and not final:
            return
        self._last = now
        layer = get_channel_layer()
        if layer is None:
            return
        html = progress_html(
            invocation_id=self.invocation_id, progress=progress, total=total, message=message
        )
        try:
            await layer.group_send(self.group, {"type": "html.push", "html": html})
            self.sent += 1
        except Exception:
            logger.exception("progress push for invocation %s failed", self.invocation_id)
