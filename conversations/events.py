"""Pushes to the browser: server-rendered fragments sent to channel groups.

Every push is ``{"type": "html.push", "html": ...}`` sent with ``group_send`` to
``conversation.<id>`` (the chat page of that conversation) or ``user.<id>``
(every page of that user). Fragments come from the partials in
``templates/conversations/chat.html`` and carry ``hx-swap-oob`` with stable ids,
so the same partial draws an element on page load and on push.

Functions that follow a database write schedule their push with
``project.pushes.send_event_on_commit`` (a rolled-back write pushes nothing; the
writer does not wait for the push); group names come from ``project.pushes``.
Token deltas are pushed by ``StreamPublisher``, which coalesces them (at most one frame per
``interval`` seconds, 20/s by default). A frame costs O(new text): it appends
the Markdown blocks finished since the last frame and replaces the unfinished
tail. About once a second a keyframe replaces the whole body instead (the
finished blocks' HTML is kept, so it costs bytes, not rendering), so a page
that loaded mid-reply, or missed a frame, is corrected within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from conversations import selectors
from conversations.models import Conversation, Message, Run
from conversations.rendering import MarkdownStream, StreamFrame
from project.pushes import (
    NoQuery,
    conversation_group,
    outbox_for,
    run_lane,
    send_event_on_commit,
    user_group,
)

logger = logging.getLogger(__name__)

TEMPLATE = "conversations/chat.html"


async def apush_html(*, group: str, html: str) -> None:
    """Send ``html`` to every socket in ``group`` now (async; stream frames).

    Pushes after a database write go through ``project.pushes`` instead."""
    layer = get_channel_layer()
    if layer is None or not html.strip():
        return
    await layer.group_send(group, {"type": "html.push", "html": html})


def render(partial: str, context: dict) -> str:
    return render_to_string(f"{TEMPLATE}#{partial}", context).strip()


# -- fragments after writes ------------------------------------------------------
# Each function schedules a push for when the current transaction commits,
# through the outbox (``project.pushes``): the writer does not wait for the
# render or the send, and the fragment shows the state when it is sent.


def run_appended(*, run_id: int, with_user_message: bool, new: Any = None) -> None:
    """On commit: append a run block (and its user message) to the conversation's timeline.

    ``new``: the run this transaction created (its ``user_message`` set), rendered
    without a query: a new run has no messages or tool calls of its own yet. A new
    compare run (``conversations.compare``) is drawn with its parts as columns
    (``new.compare_parts``, their models set).
    """

    def build() -> list[tuple[str, str]]:
        if new is not None:
            run = new
            for each in [run, *getattr(run, "compare_parts", [])]:
                each.timeline_messages, each.timeline_invocations = [], []
        else:
            run = selectors.run_for_push(run_id=run_id)
        html = ""
        if with_user_message:
            run.user_message.editable = True  # a run answers it: it may be edited and resent
            html += render("message", {"m": run.user_message})
        html += render("compare" if run.kind == "compare" else "run", {"run": run})
        return [
            (
                conversation_group(run.conversation_id),
                f'<div hx-swap-oob="beforeend:#messages">{html}</div>',
            )
        ]

    send_event_on_commit(build, lane=run_lane(run_id), in_hand=new is not None)


def run_part_appended(*, orchestrator_id: int, part: Any) -> None:
    """On commit: append a new part (a chain's step, round or judge; an answer's
    sub-run) to its orchestrating run's sections (``#run-<orchestrator>-parts``).

    ``part``: the run this transaction created (its ``user_message`` set), rendered
    without a query. Sent in the orchestrator's lane, after its own block.
    """

    def build() -> list[tuple[str, str]]:
        part.timeline_messages, part.timeline_invocations, part.orphan_steps = [], [], []
        which = "agent-part" if (part.parameters or {}).get("agent_part") else "chain-part"
        html = render(which, {"part": part})
        return [
            (
                conversation_group(part.conversation_id),
                f'<div hx-swap-oob="beforeend:#run-{orchestrator_id}-parts">{html}</div>',
            )
        ]

    send_event_on_commit(build, lane=run_lane(orchestrator_id), in_hand=True)


def run_part_redrawn(*, orchestrator_id: int, part_id: int) -> None:
    """On commit: draw an ended part of a chain again, in place, with what its calls
    were charged and, for a judge, its verdict. Sent in the orchestrator's lane."""

    def build() -> list[tuple[str, str]]:
        part = selectors.chain_part_for_push(part_id=part_id)
        html = render("chain-part", {"part": part, "user": part.conversation.owner, "oob": True})
        return [(conversation_group(part.conversation_id), html)]

    send_event_on_commit(build, lane=run_lane(orchestrator_id))


def message_lane(*, message_id: int, run_id: int | None) -> str:
    """The outbox lane of a message's pushes: its run's (so the final text never
    arrives after the run's "completed"), or its own outside a run."""
    return run_lane(run_id) if run_id is not None else f"message.{message_id}"


def message_appended(*, message_id: int, run_id: int | None = None, message: Any = None) -> None:
    """On commit: append a new message to its run block (or the timeline).

    ``message``: the row as this transaction leaves it, rendered without a query.
    """

    def build() -> list[tuple[str, str]]:
        m = message if message is not None else Message.objects.get(pk=message_id)
        if m.role == Message.Role.TOOL and m.run_id:
            return []  # drawn inside its tool call's step (run_tools_changed)
        target = f"#run-{m.run_id}-messages" if m.run_id else "#messages"
        html = render("turn", {"m": m})
        return [
            (
                conversation_group(m.conversation_id),
                f'<div hx-swap-oob="beforeend:{target}">{html}</div>',
            )
        ]

    lane = message_lane(message_id=message_id, run_id=run_id)
    send_event_on_commit(build, lane=lane, in_hand=message is not None)


def message_replaced(*, message_id: int, run_id: int | None = None, message: Any = None) -> None:
    """On commit: re-render a message in place (final text, stopped, failed).

    ``message``: the row as this transaction leaves it, rendered without a query.
    """

    def build() -> list[tuple[str, str]]:
        m = message if message is not None else Message.objects.get(pk=message_id)
        return [(conversation_group(m.conversation_id), render("message", {"m": m, "oob": True}))]

    lane = message_lane(message_id=message_id, run_id=run_id)
    send_event_on_commit(build, lane=lane, in_hand=message is not None)


def run_tools_changed(*, run_id: int) -> None:
    """On commit: re-render a run's tool calls (status, gate reason, arguments,
    output, approval cards), each message's under it (``#tool-steps-<message id>``).

    Rendered for the conversation's owner (the only member of its group), so
    the cards show the buttons they may use.
    """

    def build() -> list[tuple[str, str]]:
        run = selectors.run_for_push(run_id=run_id)
        context = {"run": run, "user": run.conversation.owner, "oob": True}
        html = "\n".join(
            render("tool-steps", {**context, "m": m}) for m in run.timeline_messages if m.steps
        )
        return [(conversation_group(run.conversation_id), html)]

    send_event_on_commit(build, lane=run_lane(run_id))


def timeline_redraw(*, conversation_id: int) -> None:
    """On commit: have every page of the conversation draw its messages again from
    the server (``static/js/chat.js``): the branch shown changed (an answer
    regenerated, a message edited, another version picked), which appending to the
    page cannot show."""
    html = f'<div id="timeline-redraw" hx-swap-oob="true" data-at="{time.time_ns()}" hidden></div>'
    frame = [(conversation_group(conversation_id), html)]
    send_event_on_commit(lambda: frame, lane=f"conversation.{conversation_id}", in_hand=True)


def context_cut_moved(*, conversation_id: int, run_id: int, message_id: int | None) -> None:
    """On commit: move the chat's "no longer sent" marker (``#context-cut``) to just
    before message ``message_id``, the first one the latest model call was sent
    (``None``: every message was sent, so the marker goes)."""
    html = '<div id="context-cut" hx-swap-oob="delete"></div>'
    if message_id is not None:
        marker = render("context-cut", {})
        html += f'\n<div hx-swap-oob="beforebegin:#message-{message_id}">{marker}</div>'
    frame = [(conversation_group(conversation_id), html)]
    send_event_on_commit(lambda: frame, lane=run_lane(run_id), in_hand=True)


def run_status_changed(*, run_id: int, run: Any = None) -> None:
    """On commit: re-render a run's status line (typing indicator, Stop, Retry, error).

    ``run``: the row as this transaction leaves it, rendered without a query.
    """

    def build() -> list[tuple[str, str]]:
        r = run if run is not None else Run.objects.get(pk=run_id)
        html = render("run-status", {"run": r, "oob": True})
        return [(conversation_group(r.conversation_id), html)]

    send_event_on_commit(build, lane=run_lane(run_id), in_hand=run is not None)


def conversation_changed(*, conversation_id: int, conversation: Any = None) -> None:
    """On commit: put the conversation's sidebar item first in its owner's lists (every tab).

    ``conversation``: the row as this transaction leaves it (its title, owner and
    archived flag), rendered without a query.

    One item, not the list: a user may have thousands. It goes first, as a
    page would order it after the change (most recently active first; every
    change here touches ``updated_at``). ``static/js/chat.js`` then drops the
    item's older copy, and the item itself from a list it does not belong in
    (an archived conversation from the active list, and the other way round).
    """

    def build() -> list[tuple[str, str]]:
        row = conversation or (
            Conversation.objects.filter(pk=conversation_id)
            .only("pk", "owner_id", "title", "archived", "pinned", "updated_at")
            .first()
        )
        return [] if row is None else [_conversation_item(row)]

    send_event_on_commit(
        build, lane=f"conversation.{conversation_id}", in_hand=conversation is not None
    )


def conversation_deleted(*, conversation_id: int, user_id: int) -> None:
    """On commit: take the conversation's item out of its owner's lists (every tab)."""
    gone = Conversation(pk=conversation_id, owner_id=user_id)
    send_event_on_commit(
        lambda: [_conversation_item(gone, deleted=True)],
        lane=f"conversation.{conversation_id}",
        in_hand=True,
    )


def _conversation_item(conversation: Any, *, deleted: bool = False) -> tuple[str, str]:
    html = render("conversation-item", {"c": conversation, "deleted": deleted})
    return (
        user_group(conversation.owner_id),
        f'<div hx-swap-oob="afterbegin:#conversation-list">{html}</div>',
    )


def error_fragment(text: str, *, composer: str = "") -> str:
    """The error box (``#chat-errors``, next to the composer) carrying ``text``, as an
    OOB fragment.

    ``composer``: for the answer to a message sent over the socket, ``"sent"`` (the
    page then clears the composer, ``static/js/chat.js``) or ``"refused"`` (the text
    stays in it, next to the error). The page never clears the composer before
    that answer, so nothing typed is lost to a refusal.
    """
    return render("chat-errors", {"error": text, "oob": True, "composer": composer})


# -- streaming -------------------------------------------------------------------


#: Stand in for the HTML when a stream's frame partials are rendered once.
_BLOCKS_PLACEHOLDER = "tollgatestreamblocksplaceholder"
_TAIL_PLACEHOLDER = "tollgatestreamtailplaceholder"


class StreamPublisher:
    """Coalesce token deltas of one streaming message into frames.

    ``feed(delta)`` buffers and returns at once: a frame goes out at most every
    ``interval`` seconds, from a background task on the running loop (on the
    next delta after the interval, or from a timer so the tail is not held
    back), so reading the provider's stream never waits on a frame. At most
    one frame is in flight, so frames arrive in order. Each frame is first
    sent to the conversation group, then handed to ``on_flush(text)`` (the
    engine persists the text so far and may raise to stop the stream). An
    error raised by ``on_flush`` is re-raised from the next ``feed`` or from
    ``close``. Call ``close()`` when the stream ends: it waits for the frame
    in flight, then flushes what is left. While the loop's outbox
    (``project.pushes``) still holds the push that draws the message, frames
    queue behind it on its lane.

    What a frame holds (``frame_html``): the text is rendered by a
    ``MarkdownStream``, so a frame costs O(new text), not O(text). A delta
    frame appends the blocks finished since the previous frame to
    ``#message-<id>-blocks`` and replaces ``#message-<id>-tail`` (the
    unfinished last block and the typing indicator). The first frame, and then
    one at most every ``KEYFRAME_SECONDS``, is a keyframe: the whole
    ``#message-<id>-body``, made of the finished blocks' HTML kept from
    earlier frames and the tail, so it costs bytes, not rendering. A page that
    loaded mid-reply (it draws the saved text split the same way, which may
    trail what was sent) or missed a frame is whole again by the next keyframe;
    the browser keeps no state of its own. The finished message is pushed
    whole by the engine (``message_replaced``), not by a frame.

    Under load the interval stretches: a process sends at most
    ``TOLLGATE_STREAM_FRAMES_PER_SECOND`` frames over all its live streams, so
    with many streams each one's frames coalesce more (never beyond
    ``MAX_INTERVAL`` seconds) instead of the worker falling behind on all.
    """

    MAX_INTERVAL = 0.2
    #: Seconds between keyframes (the whole body), at least.
    KEYFRAME_SECONDS = 1.0
    #: Seconds a stream may go without letting the loop run (see ``feed``).
    YIELD_EVERY = 0.001
    _live: weakref.WeakSet[StreamPublisher] = weakref.WeakSet()

    def __init__(
        self,
        *,
        message_id: int,
        conversation_id: int,
        on_flush: Callable[[str], Awaitable[None]] | None = None,
        interval: float = 0.05,
        run_id: int | None = None,
    ) -> None:
        self.message_id = message_id
        self.lane = message_lane(message_id=message_id, run_id=run_id)
        self.group = conversation_group(conversation_id)
        self.on_flush = on_flush
        self.interval = interval
        self.parts: list[str] = []
        self.sent_len = 0
        self.frames = 0
        self._last = 0.0
        self._yielded = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._queued: asyncio.Future[None] | None = None  # the last frame put on the lane
        self.keyframes = 0
        self._markdown = MarkdownStream()  # fed up to sent_len
        self._keyframe_at: float | None = None  # time.monotonic() of the last keyframe
        # The partials around the HTML (see _shells); () when they cannot be split.
        self._body_shell: tuple[str, str, str] | tuple[()] | None = None
        self._tail_shell: tuple[str, str] | tuple[()] = ()
        StreamPublisher._live.add(self)

    @classmethod
    def live_count(cls) -> int:
        """Replies this process is streaming now."""
        return len(cls._live)

    def current_interval(self) -> float:
        """Seconds between this stream's frames now (see the class docstring)."""
        budget = len(StreamPublisher._live) / settings.TOLLGATE_STREAM_FRAMES_PER_SECOND
        return max(self.interval, min(self.MAX_INTERVAL, budget))

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def feed(self, delta: str) -> None:
        self._raise_pending()
        self.parts.append(delta)
        scheduled = False
        if self._flushing is None or self._flushing.done():
            scheduled = self._schedule()
        # Let the frame task (and the loop's other work) run: a fast provider's
        # chunks arrive already buffered, so reading them may never suspend on
        # its own. Not on every delta: a loop turn cost about as much as the
        # rest of feed, and a reply streams hundreds of deltas.
        now = time.monotonic()
        if scheduled or now - self._yielded >= self.YIELD_EVERY:
            self._yielded = now
            await asyncio.sleep(0)

    def _schedule(self) -> bool:
        """Start the next frame, now or by a timer; whether a task was created."""
        if self._closed:
            return False  # close() owns the last frame (or there is none)
        wait = self.current_interval() - (time.monotonic() - self._last)
        loop = asyncio.get_running_loop()
        if wait <= 0:
            if self._timer is not None and not self._timer.done():
                self._timer.cancel()
            self._flushing = loop.create_task(self._flush_background())
            return True
        if self._timer is None or self._timer.done():
            self._timer = loop.create_task(self._flush_later(wait))
            return True
        return False

    async def _flush_background(self) -> None:
        try:
            await self.flush()
        except Exception as error:
            self._error = error
            return
        if sum(map(len, self.parts)) > self.sent_len and self._error is None:
            self._schedule()

    async def _flush_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        if self._flushing is not None and not self._flushing.done():
            return  # the frame in flight reschedules when it is done
        self._flushing = asyncio.current_task()
        await self._flush_background()

    async def flush(self) -> None:
        async with self._lock:
            text = self.text
            if len(text) == self.sent_len:
                return
            self._last = time.monotonic()
            self._markdown.feed(text[self.sent_len :])
            self.sent_len = len(text)
            html = self.frame_html()
            loop = asyncio.get_running_loop()
            outbox = outbox_for(loop)
            if (self._queued is not None and not self._queued.done()) or outbox.pending(self.lane):
                # The push that draws the message (or an earlier frame) is still
                # queued on the run's outbox lane: queue behind it, so the frame
                # neither overtakes it nor waits for it here (close() need not).
                self._queued = loop.create_future()
                frame = [(self.group, html)]
                outbox.put(NoQuery(lambda: frame), self._queued, self.lane)
            else:
                await apush_html(group=self.group, html=html)
            self.frames += 1
            if self.on_flush is not None:
                await self.on_flush(text)

    def frame_html(self) -> str:
        """The next frame for the text fed so far: a keyframe when one is due, else a
        delta (see the class docstring). Renders only the Markdown after the finished
        blocks (``MarkdownStream.render``)."""
        frame = self._markdown.render()
        now = time.monotonic()
        if self._keyframe_at is None or now - self._keyframe_at >= self.KEYFRAME_SECONDS:
            self._keyframe_at = now
            self.keyframes += 1
            return self.keyframe_html(frame.tail)
        return self.delta_html(frame)

    def delta_html(self, frame: StreamFrame) -> str:
        """A delta frame: ``frame.blocks`` appended to ``#message-<id>-blocks`` (when
        there are any), then ``#message-<id>-tail`` replaced by ``frame.tail``."""
        self._shells()
        if self._tail_shell:
            tail = self._tail_shell[0] + frame.tail + self._tail_shell[1]
        else:
            tail = render("message-tail", self._context(tail=frame.tail, tail_oob=True))
        if not frame.blocks:
            return tail
        blocks = "".join(frame.blocks)
        target = f"#message-{self.message_id}-blocks"
        return f'<div hx-swap-oob="beforeend:{target}">{blocks}</div>\n{tail}'

    def keyframe_html(self, tail: str) -> str:
        """A keyframe: the whole ``message-body`` partial, replacing the body, with
        every finished block's HTML (kept, not rendered again) and ``tail``."""
        blocks = self._markdown.finished_html
        self._shells()
        if self._body_shell:
            before, between, after = self._body_shell
            return before + blocks + between + tail + after
        context = self._context(blocks=blocks, tail=tail)
        return render("message-body", {**context, "body_oob": True})

    def _context(self, *, tail: str, blocks: str = "", **extra: Any) -> dict[str, Any]:
        """The partials' context: the message as a stream frame draws it, and its
        pieces (``blocks`` and ``tail``: sanitised HTML from ``MarkdownStream``)."""
        streaming = SimpleNamespace(pk=self.message_id, role="assistant", status="streaming")
        blocks_html = mark_safe(blocks)  # noqa: S308 - nh3's output, or a placeholder
        tail_html = mark_safe(tail)  # noqa: S308 - the same
        pieces = SimpleNamespace(blocks=[blocks_html], tail=tail_html)
        return {"m": streaming, "stream": pieces, **extra}

    def _shells(self) -> None:
        """Render the frame partials once per stream around placeholders, so that
        each frame fills in only the HTML: the template engine took half of a
        frame's cost, which at 200 streams was a tenth of the worker's CPU. A
        shell stays ``()`` when its partial does not show a placeholder once,
        as is; frames then render that partial each time."""
        if self._body_shell is not None:
            return
        context = self._context(blocks=_BLOCKS_PLACEHOLDER, tail=_TAIL_PLACEHOLDER)
        body = render("message-body", {**context, "body_oob": True})
        before, _, rest = body.partition(_BLOCKS_PLACEHOLDER)
        between, _, after = rest.partition(_TAIL_PLACEHOLDER)
        once = body.count(_BLOCKS_PLACEHOLDER) == body.count(_TAIL_PLACEHOLDER) == 1
        self._body_shell = (before, between, after) if once and _TAIL_PLACEHOLDER in rest else ()
        tail = render("message-tail", self._context(tail=_TAIL_PLACEHOLDER, tail_oob=True))
        before, _, after = tail.partition(_TAIL_PLACEHOLDER)
        self._tail_shell = (before, after) if tail.count(_TAIL_PLACEHOLDER) == 1 else ()

    async def close(self, *, final_frame: bool = True) -> None:
        """Wait for the frame in flight; then send what is left unless
        ``final_frame`` is false (the caller pushes the finished message itself)."""
        StreamPublisher._live.discard(self)
        # Nothing is scheduled from now on: a frame in flight used to schedule the
        # next one when it finished, which then went out after the finished message.
        self._closed = True
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        if self._flushing is not None and not self._flushing.done():
            await self._flushing
        self._raise_pending()
        if final_frame:
            await self.flush()
