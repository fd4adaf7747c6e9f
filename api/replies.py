"""Waiting on a run for the API: the run's answer read from the database (the
truth), each time the conversation's channel-layer group carries a push.

The API does not run the agent loop and does not read the pushes' HTML: a push to
``conversation.<id>`` (``project.pushes.conversation_group``: a stream frame, a
message stored, a status changed, a tool call gated or decided) only wakes the
waiter, which then reads the run (``conversations.selectors.run_reply``) and its
approval requests (``approvals.selectors.approvals_for_runs``): three queries. Reads
are at least :data:`MIN_READ_SECONDS` apart (frames come about twenty a second,
and a streaming reply's text is saved every ``TOLLGATE_STREAM_PERSIST_SECONDS``),
and at most :data:`POLL_SECONDS` apart when nothing is pushed (pub/sub keeps
nothing for a listener that missed a message: a lost push delays the answer by
at most that).

So the API's text trails the browser's by up to the persist interval while a
reply streams (``docs/benchmarks.md`` measures the added time to first token),
and a reply that ends before its first save (``FIRST_PERSIST_SECONDS``) arrives
whole when it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer

from approvals.selectors import approvals_for_runs
from conversations.selectors import RunReply, run_reply
from project.dbthreads import db_run
from project.pushes import conversation_group

#: Seconds between two reads of a run, at least (pushes coalesce meanwhile).
MIN_READ_SECONDS = 0.05
#: Seconds a wait lasts without a push before the run is read anyway.
POLL_SECONDS = 1.0
#: Seconds without news after which the stream is told something (an SSE comment),
#: so that proxies and clients keep a connection open while a person decides.
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class Snapshot:
    """A run as read once: its answer so far and its approval requests
    (``(id, tool, status)``, oldest first)."""

    reply: RunReply
    approvals: tuple[tuple[int, str, str], ...]


def snapshot_read(*, run_id: int) -> Snapshot:
    """Run ``run_id`` as it is stored now; three queries."""
    reply = run_reply(run_id=run_id)
    approvals = approvals_for_runs(run_ids=[run_id])
    return Snapshot(reply=reply, approvals=tuple((a.pk, a.tool_name, a.status) for a in approvals))


class _Wakeups:
    """A channel of this process in a channel-layer group; :meth:`wait` returns on
    the next message sent to the group (or after ``timeout``).

    One task receives for the channel for as long as it lives: a cancelled
    ``receive`` of ``channels_redis``' pub/sub layer unsubscribes the channel, so a
    wait with a timeout waits on an event instead."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.layer: Any = get_channel_layer()
        self.channel = ""
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.layer is None:
            return
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.task = asyncio.get_running_loop().create_task(self._receive())

    async def _receive(self) -> None:
        while True:
            await self.layer.receive(self.channel)
            self.event.set()

    async def wait(self, seconds: float) -> None:
        """Until the next message to the group, ``seconds`` at most (without a channel
        layer, or once its subscription failed: a short poll)."""
        if self.task is None or self.task.done():
            await asyncio.sleep(min(seconds, MIN_READ_SECONDS * 2))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.event.wait()
        self.event.clear()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.channel:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(self.group, self.channel)


async def run_snapshots(
    *, run_id: int, conversation_id: int
) -> AsyncGenerator[Snapshot | None, None]:
    """The run as it changes: a :class:`Snapshot` first and then each time it
    differs from the last one, ending with the one whose run is finished; ``None``
    after every :data:`KEEPALIVE_SECONDS` without a change.

    Leaves the group when it ends, is closed, or its task is cancelled (the client
    went away: the run goes on, and its answer stays in the conversation).
    """
    wakeups = _Wakeups(conversation_group(conversation_id))
    await wakeups.open()
    try:
        last: Snapshot | None = None
        news_at = read_at = time.monotonic()
        while True:
            snapshot = await db_run(snapshot_read, run_id=run_id)
            read_at = time.monotonic()
            if snapshot != last:
                last, news_at = snapshot, read_at
                yield snapshot
                if snapshot.reply.finished:
                    return
            elif read_at - news_at >= KEEPALIVE_SECONDS:
                news_at = read_at
                yield None
            await wakeups.wait(POLL_SECONDS)
            pause = MIN_READ_SECONDS - (time.monotonic() - read_at)
            if pause > 0:
                await asyncio.sleep(pause)
    finally:
        await wakeups.close()
