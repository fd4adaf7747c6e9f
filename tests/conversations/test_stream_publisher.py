"""StreamPublisher: reading the provider's stream never waits on a frame."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest


async def test_feed_does_not_wait_for_a_frame_in_flight(settings):
    from channels.layers import get_channel_layer

    from conversations.events import StreamPublisher

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.999998", channel)
    release = asyncio.Event()
    persisted: list[str] = []

    async def on_flush(text: str) -> None:
        await release.wait()  # a slow database, say
        persisted.append(text)

    publisher = StreamPublisher(message_id=7, conversation_id=999998, on_flush=on_flush)
    words = [f"w{i} " for i in range(50)]
    for word in words:
        # Would hang (the test times out) if feed waited for the blocked frame.
        await asyncio.wait_for(publisher.feed(word), timeout=5)
    assert persisted == []  # the first frame is still in flight (its flush is blocked)
    release.set()
    await publisher.close()
    assert persisted[-1] == "".join(words)
    last = None
    for _ in range(publisher.frames):
        last = await layer.receive(channel)
    assert "w0 w1" in last["html"] and "w49" in last["html"]
    await layer.group_discard("conversation.999998", channel)


async def test_an_error_from_on_flush_stops_the_stream(settings):
    from conversations.events import StreamPublisher
    from conversations.gateway import StreamAborted

    async def on_flush(text: str) -> None:
        raise StreamAborted("cancelled")

    publisher = StreamPublisher(message_id=8, conversation_id=999997, on_flush=on_flush)
    with pytest.raises(StreamAborted):
        for i in range(1000):
            await publisher.feed(f"w{i} ")
            await asyncio.sleep(0)
        await publisher.close()


async def test_no_frame_goes_out_after_close(settings):
    """A frame in flight at close() must not schedule another: it would arrive
    after the finished message the engine pushes and redraw it as streaming."""
    from conversations.events import StreamPublisher

    release, flushing = asyncio.Event(), asyncio.Event()

    async def on_flush(text: str) -> None:
        flushing.set()
        await release.wait()

    publisher = StreamPublisher(message_id=9, conversation_id=999996, on_flush=on_flush)
    await publisher.feed("first ")
    await asyncio.wait_for(flushing.wait(), 5)  # the first frame is sent; on_flush is blocked
    for i in range(20):
        await publisher.feed(f"w{i} ")  # more text than that frame carried
    closing = asyncio.create_task(publisher.close(final_frame=False))
    await asyncio.sleep(0.1)
    release.set()
    await closing
    frames = publisher.frames
    await asyncio.sleep(0.3)  # longer than any interval
    assert publisher.frames == frames == 1


async def test_frames_queue_behind_the_push_that_draws_the_message(settings):
    """Until the message is drawn, frames wait on its outbox lane, in order, and
    close() does not wait for them: what the engine pushes next on that lane
    (the finished message) still arrives after them."""
    from channels.layers import get_channel_layer

    from conversations.events import StreamPublisher
    from project.pushes import outbox_for

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.999995", channel)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    def draw():  # the push that draws the message, slow to render
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return [("conversation.999995", "<drawn>")]

    outbox = outbox_for(loop)
    publisher = StreamPublisher(message_id=10, conversation_id=999995, run_id=77)
    outbox.put(draw, lane=publisher.lane)
    await publisher.feed("short ")
    await asyncio.sleep(0.1)  # longer than the interval: a frame is due
    await publisher.feed("reply")
    # Would time out if close waited for the lane.
    await asyncio.wait_for(publisher.close(final_frame=False), 1)
    outbox.put(lambda: [("conversation.999995", "<finished>")], lane=publisher.lane)
    release.set()
    await outbox.drain()
    received = []
    while not received or "<finished>" not in received[-1]:
        received.append((await asyncio.wait_for(layer.receive(channel), 5))["html"])
    html = "\n".join(received)
    assert html.index("<drawn>") < html.index("short") < html.index("<finished>")
    assert publisher.frames >= 1
    await layer.group_discard("conversation.999995", channel)


def test_frames_coalesce_more_when_many_streams_are_live(settings):
    """Past the process's frame budget each stream's interval stretches, up to a cap."""
    import gc

    from conversations.events import StreamPublisher

    gc.collect()  # publishers of earlier tests leave the live set
    settings.TOLLGATE_STREAM_FRAMES_PER_SECOND = 100
    first = StreamPublisher(message_id=1, conversation_id=1)
    assert first.current_interval() == first.interval  # 1 stream: 20 frames/s
    crowd = [StreamPublisher(message_id=i, conversation_id=i) for i in range(2, 11)]
    assert first.current_interval() == pytest.approx(10 / 100)  # 10 streams share 100/s
    crowd += [StreamPublisher(message_id=i, conversation_id=i) for i in range(11, 100)]
    assert first.current_interval() == StreamPublisher.MAX_INTERVAL  # never slower than 5/s
    for publisher in crowd:
        asyncio.run(publisher.close(final_frame=False))
    assert first.current_interval() == first.interval


def test_frames_fill_the_partial_rendered_once(settings):
    """A frame is the message-body partial with the text's Markdown, rendered or not
    through the template each time."""
    from conversations.events import StreamPublisher, render

    publisher = StreamPublisher(message_id=12, conversation_id=999994)
    for text in ("Hello **world**", "A list:\n\n- one\n- two <script>x</script>", ""):
        content = SimpleNamespace(pk=12, role="assistant", content=text)
        expected = render("message-body", {"m": content, "streaming": True, "body_oob": True})
        assert publisher.body_html(text) == expected
    assert publisher._shell  # split once, then reused
