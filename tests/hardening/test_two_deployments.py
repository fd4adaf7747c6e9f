"""Two deployments on one Redis server, different database numbers (staging and
production, say): a reply streamed in one reaches no page of the other, although
both have a user 1 in a conversation 1 (each is a fresh database)."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.hardening.visitor import Visitor
from tests.topology import ROOT, stack_running

pytestmark = pytest.mark.slow

LOGS = ROOT / "test-artifacts" / "two-deployments"


def _redis(number: int) -> str:
    base = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/9")
    return urlunsplit(urlsplit(base)._replace(path=f"/{number}"))


def test_frames_of_one_deployment_never_reach_a_page_of_another_on_the_same_redis():
    number = int(urlsplit(os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/9")).path[1:])
    with (
        stack_running(
            name=f"tollgate_prod_{os.getpid()}", logs=LOGS / "prod", redis_url=_redis(number)
        ) as production,
        stack_running(
            name=f"tollgate_staging_{os.getpid()}",
            logs=LOGS / "staging",
            redis_url=_redis((number + 1) % 16),
        ) as staging,
    ):
        asyncio.run(_one_way(production, staging))


async def _one_way(production, staging) -> None:
    writer = await Visitor(production, "writer@example.com").sign_up()
    watcher = await Visitor(staging, "watcher@example.com").sign_up()
    try:
        # Fresh databases: the same ids on both sides, so the same group names
        # (user.1, conversation.1) but for the deployment's prefix.
        assert writer.user_id == watcher.user_id
        mine, theirs = await writer.conversation_new(), await watcher.conversation_new()
        assert mine == theirs
        watching = await watcher.socket(theirs)
        # The watcher's own deployment may still push the sidebar item of the
        # conversation it just made (pushes leave the web's outbox after the
        # response): let those arrive before the writer starts.
        await _quiet(watching)
        writing = await writer.socket(mine)
        await writing.send(
            {"type": "message.send", "conversation_id": mine, "content": "Hello there"}
        )
        # The writer sees its reply streamed and finished...
        await writing.until(lambda frame: "msg-assistant msg-complete" in frame, wait=60)
        # ...and the other deployment's page, on the same user and conversation ids,
        # receives nothing at all.
        try:
            leaked = await watching.until(lambda frame: True, wait=3)
        except TimeoutError:
            leaked = None
        assert leaked is None, f"the other deployment's page received: {leaked[:2000]}"
        assert watching.seen == []
        await watching.close()
        await writing.close()
    finally:
        await writer.close()
        await watcher.close()


async def _quiet(socket, *, silence: float = 1.5, limit: float = 15.0) -> None:
    """Read ``socket``'s frames until none came for ``silence`` seconds (at most
    ``limit`` seconds in all), then forget them."""
    deadline = asyncio.get_running_loop().time() + limit
    while asyncio.get_running_loop().time() < deadline:
        try:
            await socket.until(lambda frame: True, wait=silence)
        except TimeoutError:
            break
    socket.seen.clear()
