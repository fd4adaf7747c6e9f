"""The push outbox: after commit, in commit order, without holding up the writer."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from project.pushes import push_on_commit, pushes_drain


@pytest.mark.django_db(transaction=True)
async def test_pushes_follow_commits_in_order_and_never_block_the_writer():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("test.pushes", channel)
    slow_render = threading.Event()

    def blocked_build():
        assert slow_render.wait(10)
        return [("test.pushes", "two")]

    def write() -> None:
        with transaction.atomic():
            push_on_commit(lambda: [("test.pushes", "one")])
            push_on_commit(blocked_build)
        with transaction.atomic():
            push_on_commit(lambda: [("test.pushes", "rolled back")])
            transaction.set_rollback(True)
        with transaction.atomic():
            push_on_commit(lambda: [("test.pushes", "three"), ("test.pushes", "four")])

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
            push_on_commit(lambda: [("test.pushes.sync", "now")])
        message = listener.receive()
    assert message == {"type": "html.push", "html": "now"}


@pytest.mark.django_db(transaction=True)
async def test_draining_a_lane_does_not_wait_for_other_lanes():
    """A stream's first frame waits for its own message's push, not for the
    pushes of every other run queued after it (one queue per process did)."""
    from project.pushes import outbox_for

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("test.lanes", channel)
    slow_render = threading.Event()

    def blocked_build():
        assert slow_render.wait(10)
        return [("test.lanes", "slow")]

    def write() -> None:
        with transaction.atomic():
            push_on_commit(lambda: [("test.lanes", "mine")], lane="message.1")
            push_on_commit(blocked_build, lane="run.2")
            push_on_commit(lambda: [("test.lanes", "mine, later")], lane="message.1")

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
