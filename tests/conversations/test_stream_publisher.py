"""StreamPublisher: reading the provider's stream never waits on a frame."""

from __future__ import annotations

import asyncio
import re
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


# -- what the frames hold ----------------------------------------------------------

REPLY = (
    "# Plan\nThree steps, then a table.\n\n- first\n- second\n  - nested\n\n"
    "```python\nprint('step')\n```\n\n| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
    "> Done when the table is filled.\n\nLast paragraph,\nstill being written"
)

KEYFRAME_RE = re.compile(
    r'^<div id="message-(\d+)-body" class="msg-body" hx-swap-oob="outerHTML">'
    r'<div id="message-\1-blocks" class="msg-blocks">(?P<blocks>.*?)</div>'
    r'<div id="message-\1-tail" class="msg-tail">(?P<tail>.*?)<span class="typing"[^>]*>'
    r"<i></i><i></i><i></i></span></div></div>$",
    re.DOTALL,
)
APPEND_RE = re.compile(
    r'^<div hx-swap-oob="beforeend:#message-(\d+)-blocks">(?P<blocks>.*?)</div>\n', re.DOTALL
)
TAIL_RE = re.compile(
    r'^<div id="message-(\d+)-tail" class="msg-tail" hx-swap-oob="outerHTML">(?P<tail>.*?)'
    r'<span class="typing"[^>]*><i></i><i></i><i></i></span></div>$',
    re.DOTALL,
)


class Page:
    """What the browser shows of one streaming message, as htmx would swap frames in
    (each element's HTML, no DOM: the sanitiser lets no ``div`` into the Markdown)."""

    def __init__(self, body: str = "") -> None:
        self.blocks, self.tail = "", ""
        self.appended: list[str] = []
        self.keyframes = 0
        if body:
            self.apply(body)

    def apply(self, html: str) -> None:
        if match := KEYFRAME_RE.match(html):
            self.blocks, self.tail = match["blocks"], match["tail"]
            self.keyframes += 1
            return
        if match := APPEND_RE.match(html):
            self.blocks += match["blocks"]
            self.appended.append(match["blocks"])
            html = html[match.end() :]
        match = TAIL_RE.match(html)
        assert match, html
        self.tail = match["tail"]

    @property
    def html(self) -> str:
        return self.blocks + self.tail


def drawn(message_id: int, text: str) -> str:
    """The body a page draws for a message still streaming ``text`` (page load or
    a reload's redraw), as a push would carry it."""
    from conversations.events import render

    m = SimpleNamespace(pk=message_id, role="assistant", status="streaming", content=text)
    return render("message-body", {"m": m, "stream": None, "body_oob": True})


async def _frames(layer, channel, publisher, pieces, *, keyframe_at=()):
    """Feed ``pieces``, one frame each (flushed by hand: the interval is too long
    for a timer to), a keyframe forced at the indices in ``keyframe_at``; return
    ``(text so far, frame html)`` per piece."""
    out = []
    for index, piece in enumerate(pieces):
        publisher.KEYFRAME_SECONDS = 0 if index in keyframe_at else 3600
        await publisher.feed(piece)
        await publisher.flush()
        out.append((publisher.text, (await asyncio.wait_for(layer.receive(channel), 5))["html"]))
    return out


@pytest.fixture
async def group():
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.999993", channel)
    yield layer, channel
    await layer.group_discard("conversation.999993", channel)


def _pieces(text: str, size: int = 3) -> list[str]:
    """``text`` in word-sized pieces, ``size`` words each (as coalescing would send)."""
    words = re.findall(r"\S*\s*", text)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size) if words[i]]


async def test_frames_append_only_new_blocks_and_replace_the_tail(group):
    from conversations.events import StreamPublisher
    from conversations.rendering import markdown_blocks, render_markdown

    layer, channel = group
    publisher = StreamPublisher(message_id=21, conversation_id=999993, interval=3600)
    pieces = _pieces(REPLY)
    frames = await _frames(layer, channel, publisher, pieces)
    await publisher.close(final_frame=False)

    page = Page()
    finished_before = 0
    for number, (text, html) in enumerate(frames):
        assert html.startswith('<div id="message-21-body"') == (number == 0)  # first: key
        appended = len(page.appended)
        page.apply(html)
        # After every frame the page shows exactly the whole render of the text so far.
        assert page.html == render_markdown(text)
        # A delta appends the blocks finished since the frame before, and only those.
        finished = markdown_blocks(text).blocks
        if number:
            new = "".join(finished[finished_before:])
            assert page.appended[appended:] == ([new] if new else [])
        finished_before = len(finished)
    assert page.keyframes == publisher.keyframes == 1
    assert len(markdown_blocks(REPLY).blocks) == 6
    assert 1 < len(page.appended) < len(frames) - 1  # frames with no new block append nothing
    assert publisher.frames == len(frames)
    assert publisher._body_shell and publisher._tail_shell  # partials rendered once, reused


async def test_a_keyframe_is_the_whole_body_a_page_would_draw(group, monkeypatch):
    """A keyframe is the message-body partial of the text so far, exactly as a page
    (re)loaded at that point draws it, and replaces the body by id; its finished
    blocks are the HTML kept from earlier frames, not Markdown parsed again."""
    from conversations import rendering
    from conversations.events import StreamPublisher

    layer, channel = group
    publisher = StreamPublisher(message_id=22, conversation_id=999993, interval=3600)
    pieces = _pieces(REPLY)
    every = set(range(len(pieces)))
    frames = await _frames(layer, channel, publisher, pieces[:-2], keyframe_at=every)
    md = rendering._markdown()
    parsed: list[str] = []
    real_parse = md.parse

    def parse(src, env=None):
        parsed.append(src)
        return real_parse(src, env)

    monkeypatch.setattr(md, "parse", parse)
    monkeypatch.setattr(md, "render", None)  # no whole render either
    frames += await _frames(layer, channel, publisher, pieces[-2:], keyframe_at={0, 1})
    await publisher.close(final_frame=False)
    # The last two frames parsed from the table on (the tail then), never the
    # heading, list or code block finished before them.
    assert parsed and all(src.startswith(("| a |", "Last")) for src in parsed), parsed
    monkeypatch.undo()
    for text, html in frames:
        assert html == drawn(22, text)
        assert html.startswith('<div id="message-22-body" class="msg-body" hx-swap-oob="outer')
    assert publisher.keyframes == len(frames)


async def test_keyframes_go_out_at_most_about_once_a_second(group):
    from conversations.events import StreamPublisher

    layer, channel = group
    publisher = StreamPublisher(message_id=23, conversation_id=999993, interval=3600)
    kinds = []
    for piece in _pieces(REPLY)[:6]:
        await publisher.feed(piece)
        await publisher.flush()
        html = (await asyncio.wait_for(layer.receive(channel), 5))["html"]
        kinds.append("key" if html.startswith('<div id="message-23-body"') else "delta")
        publisher._keyframe_at -= 0.4  # as if 0.4 s passed before the next frame
    await publisher.close(final_frame=False)
    assert kinds == ["key", "delta", "delta", "key", "delta", "delta"]


async def test_a_page_loaded_mid_reply_is_whole_again_after_the_next_keyframe(group):
    """A page drawn from the saved text (which trails what was sent) misses the
    blocks finished in between; frames never double a block, and the next
    keyframe makes it whole, with no state of its own in the browser."""
    from conversations.events import StreamPublisher
    from conversations.rendering import markdown_blocks, render_markdown

    layer, channel = group
    publisher = StreamPublisher(message_id=24, conversation_id=999993, interval=3600)
    pieces = _pieces(REPLY, 1)
    sent = await _frames(layer, channel, publisher, pieces[:22])
    saved = sent[9][0]  # the database's text when the page loaded: two blocks finished
    page = Page(drawn(24, saved))
    assert page.html == render_markdown(saved)
    later = await _frames(layer, channel, publisher, pieces[22:], keyframe_at={13})
    await publisher.close(final_frame=False)
    behind = 0
    for number, (text, html) in enumerate(later):
        page.apply(html)
        whole = render_markdown(text)
        if number < 13:
            assert whole.endswith(page.tail)  # the tail is current
            finished = markdown_blocks(text).blocks
            shown = [block for block in finished if block in page.blocks]
            assert page.blocks == "".join(shown)  # some blocks missing, in order, none twice
            behind += page.html != whole
        else:
            assert page.html == whole
    assert behind == 13  # the page missed two blocks until the keyframe
    assert page.keyframes == 2  # the page's own draw, then the stream's keyframe
    assert len(page.appended) == 1  # the table, appended while the page was behind
