"""Pushes from the tools app to the browser (tools must not import conversations).

Through the one push path (``project.pushes``), to the conversation's group, with
server-rendered fragments that carry ``hx-swap-oob`` and stable ids.
"""

from __future__ import annotations

import time

from django.template.loader import render_to_string

from project.pushes import conversation_group, run_lane, send_event

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
    known total. Queued on the loop's outbox at once (``send_event``: there is no
    write to wait for), on the run's lane (``run_id``), so the last update is sent
    before the finished call's block replaces it; a push that fails is logged
    there and never raised (progress is a nicety; the call goes on).
    """

    def __init__(
        self,
        *,
        conversation_id: int,
        invocation_id: int,
        run_id: int | None = None,
        per_second: float = 10.0,
    ):
        self.group = conversation_group(conversation_id)
        self.lane = run_lane(run_id) if run_id is not None else f"invocation.{invocation_id}"
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
        html = progress_html(
            invocation_id=self.invocation_id, progress=progress, total=total, message=message
        )
        frame = [(self.group, html)]
        send_event(lambda: frame, lane=self.lane, in_hand=True)
        self.sent += 1
