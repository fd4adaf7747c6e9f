"""The push outbox: after commit, in commit order, without holding up the writer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from project.pushes import pushes_drain, send_event_on_commit


async def _listening(group: str):
    """The channel layer and a channel in ``group``."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return layer, channel


def _blocked(group: str, html: str):
    """A push build that renders only once the returned event is set."""
    release = threading.Event()

    def build():
        assert release.wait(10)
        return [(group, html)]

    return release, build


@pytest.mark.django_db(transaction=True)
async def test_pushes_follow_commits_in_order_and_never_block_the_writer():
    layer, channel = await _listening("test.pushes")
    slow_render, blocked_build = _blocked("test.pushes", "two")

    def write() -> None:
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.pushes", "one")])
            send_event_on_commit(blocked_build)
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.pushes", "rolled back")])
            transaction.set_rollback(True)
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.pushes", "three"), ("test.pushes", "four")])

    await sync_to_async(write)()
    # The writer is back although the second push is still being rendered.
    assert not slow_render.is_set()
    slow_render.set()
    await pushes_drain()
    received = []
    while "four" not in "\n".join(received):
        received.append((await asyncio.wait_for(layer.receive(channel), 5))["html"])
    # In commit order; what was queued together went out in one send per group.
    assert "\n".join(received) == "one\ntwo\nthree\nfour"
    assert len(received) < 4
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)  # the rolled-back one never


@pytest.mark.django_db(transaction=True)
def test_without_a_loop_the_push_is_sent_at_once():
    from tests.listening import GroupListener

    with GroupListener("test.pushes.sync") as listener:
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.pushes.sync", "now")])
        message = listener.receive()
    assert message == {"type": "html.push", "html": "now"}


@pytest.mark.django_db(transaction=True)
async def test_draining_a_lane_does_not_wait_for_other_lanes():
    """A stream's first frame waits for its own message's push, not for the
    pushes of every other run queued after it (one queue per process did)."""
    from project.pushes import outbox_for

    layer, channel = await _listening("test.lanes")
    slow_render, blocked_build = _blocked("test.lanes", "slow")

    def write() -> None:
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.lanes", "mine")], lane="message.1")
            send_event_on_commit(blocked_build, lane="run.2")
            send_event_on_commit(lambda: [("test.lanes", "mine, later")], lane="message.1")

    await sync_to_async(write)()
    await asyncio.wait_for(outbox_for(asyncio.get_running_loop()).drain("message.1"), 0.5)
    mine = []
    while "mine, later" not in "\n".join(mine):
        mine.append((await asyncio.wait_for(layer.receive(channel), 5))["html"])
    assert "\n".join(mine) == "mine\nmine, later"  # queued together: usually one send
    assert not slow_render.is_set()  # run.2 is still rendering
    slow_render.set()
    await pushes_drain()
    rest = await asyncio.wait_for(layer.receive(channel), 5)
    assert rest["html"] == "slow"


@pytest.mark.django_db(transaction=True)
async def test_a_db_async_calls_pushes_go_out_when_it_returns_in_commit_order():
    """Not one by one from the thread while it still works: the caller resumes
    first, and the render waits for the caller's next wait (pushes.Deferred)."""
    from project.dbthreads import db_async

    layer, channel = await _listening("test.deferred")
    rendered: list[str] = []

    def build(html: str):
        def render():
            rendered.append(html)
            return [("test.deferred", html)]

        return render

    def write() -> list[str]:
        with transaction.atomic():
            send_event_on_commit(build("one"), in_hand=True)
        time.sleep(0.2)  # the loop is free meanwhile
        seen = list(rendered)
        with transaction.atomic():
            send_event_on_commit(build("two"), in_hand=True)
        return seen

    assert await db_async(write)() == []
    assert rendered == []  # queued when the call returned, not yet rendered
    await pushes_drain()
    received = []
    while "two" not in "\n".join(received):
        received.append((await asyncio.wait_for(layer.receive(channel), 5))["html"])
    assert "\n".join(received) == "one\ntwo"


@pytest.mark.django_db(transaction=True)
async def test_a_cancelled_callers_later_pushes_still_go_out():
    from project.dbthreads import db_async

    layer, channel = await _listening("test.deferred.cancel")
    started, go = threading.Event(), threading.Event()

    def write() -> None:
        started.set()
        assert go.wait(5)
        with transaction.atomic():
            send_event_on_commit(lambda: [("test.deferred.cancel", "late")])

    task = asyncio.ensure_future(db_async(write)())
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go.set()
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message["html"] == "late"
