"""The one way to push to the browser: ``send_event_on_commit`` (Zulip's habit), and
the one place that names the channel-layer groups.

A push is a list of ``(group, html)`` pairs sent with the channel layer's
``group_send`` as ``{"type": "html.push", "html": ...}`` (see
``conversations.consumers.PageConsumer``). Every app's ``events.py`` calls
:func:`send_event_on_commit` after a write (a rolled-back write pushes nothing),
or :func:`send_event` for a push that follows no write (a tool's progress);
group names come from :func:`user_group` and :func:`conversation_group` only.

Where the commit happens in a thread that ``sync_to_async`` runs for an event
loop (a run step in the worker, a consumer's or view's database call in
daphne), the push is queued on that loop's outbox and the writer returns at
once: the outbox renders it on the loop's default executor (at most
``RENDER_CONCURRENCY`` at a time per loop), then sends it. Pushes about one
thing (a lane: one run, one message) are sent in commit order, so a status
push never overtakes an earlier one; lanes proceed side by side. Pushes render
the state current when they are sent (latest wins). A
``project.dbthreads.db_async`` call's pushes are queued when the call returns
rather than as each commit happens (:class:`Deferred`), so the step it belongs
to goes on first. Without such a loop (a shell, a management command,
synchronous tests) the push is built and sent at once.

A loop that is about to end (``async_to_sync``'s, Celery's prefork task) must
``await pushes_drain()`` first, or what is still queued is lost; a reload
shows the truth from the database either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from project.db import connections_close_stale

logger = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    """The group of every page of user ``user_id`` (approval cards, the badge, warnings)."""
    return f"user.{user_id}"


def conversation_group(conversation_id: int) -> str:
    """The group of the chat pages showing conversation ``conversation_id``."""
    return f"conversation.{conversation_id}"


def run_lane(run_id: int) -> str:
    """The outbox lane of everything pushed about run ``run_id`` (its status, its
    messages, its tool calls and their progress), so they arrive in order."""
    return f"run.{run_id}"


#: ``build()`` returns the pairs to send: ``[(group, html), ...]`` (may query).
Build = Callable[[], Iterable[tuple[str, str]]]


def _message(html: str) -> dict:
    return {"type": "html.push", "html": html}


def _merged(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive fragments for the same group: one ``group_send`` each."""
    out: list[tuple[str, str]] = []
    for group, html in pairs:
        if not html.strip():
            continue
        if out and out[-1][0] == group:
            out[-1] = (group, out[-1][1] + "\n" + html)
        else:
            out.append((group, html))
    return out


class NoQuery:
    """A ``Build`` that makes no query (it renders what it was given, or returns
    HTML rendered already): the outbox runs it in its own loop, no render thread.

    For state the writer holds in hand (the run a claim just wrote, the answer
    it just stored) and for stream frames: a render thread would add a query
    and a thread hop per push, which on a busy worker waited for the GIL
    behind the streams. Runs when the loop is free (a run step awaiting its
    provider), in lane order.
    """

    __slots__ = ("build",)

    def __init__(self, build: Build) -> None:
        self.build = build

    def __call__(self) -> Iterable[tuple[str, str]]:
        return self.build()


def _build_guarded(build: Build) -> list[tuple[str, str]]:
    try:
        return _merged(build())
    except Exception:
        # A push is best effort: the database is the truth and a reload shows it.
        logger.exception("push to browser failed (render)")
        if connection.errors_occurred:
            connection.close()
        return []


def _build_all(builds: list[Build]) -> list[tuple[str, str]]:
    """Render several pushes of one lane in order (one thread hop), merged per group."""
    return _merged(pair for build in builds for pair in _build_guarded(build))


#: Renders of one loop's pushes that may run at once (each in a thread of the loop's
#: default executor, with its database connection): with four, renders took the
#: GIL the worker's event loop needs and frames and approval cards got slower
#: under load (docs/benchmarks.md); one slow render (a locked row, a big page)
#: must not hold up every other lane either.
RENDER_CONCURRENCY = 2


def _render(builds: list[Build]) -> list[tuple[str, str]]:
    """``_build_all`` in an executor thread, whose connection is closed when stale."""
    try:
        return _build_all(builds)
    finally:
        connections_close_stale()


class Outbox:
    """The pushes of one event loop (create with :func:`outbox_for`), in lanes.

    A lane (``run.<id>``, ``message.<id>``…) is sent in the order it was
    queued; lanes proceed side by side, so a busy worker's hundreds of runs do
    not wait behind one another's pushes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lanes: dict[str, collections.deque[tuple[Build | None, asyncio.Future | None]]] = {}
        # The loop keeps only weak references to tasks: without these, a lane's
        # drain could be collected mid-send and the lane would never send again.
        self.tasks: dict[str, asyncio.Task] = {}
        self.renders = asyncio.Semaphore(RENDER_CONCURRENCY)

    def put(self, build: Build | None, done: asyncio.Future | None = None, lane: str = "") -> None:
        """Queue ``build`` on ``lane`` (``None``: a barrier that only resolves ``done``).

        Loop thread only.
        """
        queue = self.lanes.get(lane)
        if queue is None:
            queue = self.lanes[lane] = collections.deque()
            self.tasks[lane] = self.loop.create_task(
                self._drain(lane, queue), context=contextvars.Context()
            )
        queue.append((build, done))

    async def _drain(self, lane: str, queue: collections.deque) -> None:
        layer = get_channel_layer()
        render = sync_to_async(_render, thread_sensitive=False)
        try:
            while queue:
                # Everything queued up to the next barrier renders in one thread
                # hop and goes out merged (a claim's status and its new message
                # become one send), still in order.
                batch = []
                while queue and queue[0][0] is not None:
                    batch.append(queue.popleft())
                try:
                    if batch and layer is not None:
                        builds = [build for build, _ in batch]
                        if all(isinstance(build, NoQuery) for build in builds):
                            pairs = _build_all(builds)
                        else:
                            async with self.renders:
                                pairs = await render(builds)
                        for group, html in pairs:
                            await layer.group_send(group, _message(html))
                except Exception:
                    logger.exception("push to browser failed (send)")
                finally:
                    for _, done in batch:
                        if done is not None and not done.done():
                            done.set_result(None)
                while queue and queue[0][0] is None:  # barriers: all before them is sent
                    _, done = queue.popleft()
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            # Empty now (or the loop is closing): the next put starts a new drain.
            del self.lanes[lane]
            self.tasks.pop(lane, None)

    def pending(self, lane: str) -> bool:
        """Whether anything queued on ``lane`` has not been sent yet."""
        return lane in self.lanes

    async def drain(self, lane: str | None = None) -> None:
        """Wait until everything queued so far (on ``lane``, or on every lane) is sent."""
        lanes = list(self.lanes) if lane is None else [lane] if self.pending(lane) else []
        waits = []
        for name in lanes:
            done = self.loop.create_future()
            self.put(None, done, lane=name)
            waits.append(done)
        if waits:
            await asyncio.gather(*waits)


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox] = (
    weakref.WeakKeyDictionary()
)


def outbox_for(loop: asyncio.AbstractEventLoop) -> Outbox:
    """The outbox of ``loop`` (created on first use)."""
    outbox = _outboxes.get(loop)
    if outbox is None:
        outbox = _outboxes[loop] = Outbox(loop)
    return outbox


def _caller_loop() -> asyncio.AbstractEventLoop | None:
    """The loop this thread works for: its own running loop, or the loop that
    ``sync_to_async`` is running this thread's code for (``None``: neither)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


class Deferred:
    """The pushes a ``db_async`` call's thread commits, queued on the caller's loop when
    the call returns (``project.dbthreads``), instead of one by one as they commit.

    Each queued push would wake the loop from the thread (``call_soon_threadsafe``)
    while the thread is still working; and the caller's step, resumed by the same
    return, would then wait behind their render (about 1 ms for a finished
    answer's Markdown, on the loop's thread). Queued at return, they render when
    the step reaches its next wait (its provider's reply, its next database
    call), in commit order as before. A push added after :meth:`release` (the
    caller was cancelled while its thread still ran) goes the usual way.
    """

    __slots__ = ("_items", "_lock", "_open")

    def __init__(self) -> None:
        self._items: list[tuple[Build, str]] = []
        self._lock = threading.Lock()
        self._open = True

    def add(self, build: Build, lane: str) -> bool:
        """Keep ``build`` for :meth:`release`; ``False`` once released (any thread)."""
        with self._lock:
            if self._open:
                self._items.append((build, lane))
            return self._open

    def release(self) -> None:
        """Queue what was kept on the running loop's outbox, in order (loop thread)."""
        with self._lock:
            self._open = False
            items, self._items = self._items, []
        if items:
            outbox = outbox_for(asyncio.get_running_loop())
            for build, lane in items:
                outbox.put(build, lane=lane)


_collecting = threading.local()


@contextlib.contextmanager
def pushes_deferred(deferred: Deferred) -> Iterator[None]:
    """In this thread, :func:`send_event` keeps its pushes in ``deferred`` (see there)."""
    previous = getattr(_collecting, "deferred", None)
    _collecting.deferred = deferred
    try:
        yield
    finally:
        _collecting.deferred = previous


def _send_now(build: Build) -> None:
    """Build and send at once, from sync code (blocks on the channel layer)."""
    layer = get_channel_layer()
    if layer is None:
        return
    for group, html in _build_guarded(build):
        try:
            async_to_sync(layer.group_send)(group, _message(html))
        except Exception:
            logger.exception("push to browser failed (send)")


def send_event(build: Build, lane: str = "", *, in_hand: bool = False) -> None:
    """Push ``build()``'s pairs now: sent at once if no loop is around, else queued
    on ``lane`` of the caller's loop's outbox, returning at once (any thread); in a
    ``db_async`` call's thread, when that call returns (:class:`Deferred`).

    For pushes that follow no write; after a write, :func:`send_event_on_commit`.
    ``build`` returns ``[(group, html), ...]``, groups named by :func:`user_group`
    and :func:`conversation_group`; ``in_hand``: it makes no query (:class:`NoQuery`).
    """
    if in_hand and not isinstance(build, NoQuery):
        build = NoQuery(build)
    deferred = getattr(_collecting, "deferred", None)
    if deferred is not None and deferred.add(build, lane):
        return
    loop = _caller_loop()
    if loop is None:
        _send_now(build)
        return
    try:
        running_here = asyncio.get_running_loop() is loop
    except RuntimeError:
        running_here = False
    if running_here:
        outbox_for(loop).put(build, lane=lane)
        return
    try:
        loop.call_soon_threadsafe(lambda: outbox_for(loop).put(build, lane=lane))
    except RuntimeError:  # the loop closed meanwhile
        _send_now(build)


def send_event_on_commit(build: Build, lane: str = "", *, in_hand: bool = False) -> None:
    """The one push path after a write: :func:`send_event` when the current
    transaction commits (at once outside a transaction); a rolled-back transaction
    pushes nothing (Zulip's ``send_event_on_commit``).

    ``build``: returns ``[(group, html), ...]`` when the push is sent (it may query
    then, in an executor thread). ``lane``: pushes about the same thing
    (``run.<id>``, ``message.<id>``) share one, so they arrive in commit order.
    ``in_hand``: ``build`` renders objects the writer holds and makes no query
    (:class:`NoQuery`). A push that fails is logged, never raised.
    """
    if in_hand:
        build = NoQuery(build)
    transaction.on_commit(lambda: send_event(build, lane), robust=True)


async def pushes_drain() -> None:
    """Wait until the running loop's outbox has sent everything queued so far."""
    loop = asyncio.get_running_loop()
    outbox = _outboxes.get(loop)
    if outbox is not None:
        await outbox.drain()
