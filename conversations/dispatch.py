"""Who runs the engine's steps: Celery or asyncio tasks in the web process.

A run's next step is announced by the state machine (``runs.run_step_due``, sent
on commit); :func:`dispatch_run_step` receives it (connected in
``ConversationsConfig.ready``). ``settings.TOLLGATE_DISPATCHER``: ``"celery"``
sends ``conversations.tasks.run_step``
(ids only); ``"inprocess"`` (the embedded mode) creates an asyncio task on the
web process's event loop and keeps a strong reference until it finishes. In
in-process mode the first dispatch also starts a timer that runs
``runs_recover_stale`` every ``TOLLGATE_RUN_RECOVERY_INTERVAL`` seconds and one
that expires overdue approval requests, and one that retries MCP servers that
are down (Celery beat does all three otherwise).
One engine, two dispatchers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.conf import settings

from approvals.dispatch import expiry_loop
from conversations.engine import run_advance
from conversations.evaluations import evaluation_process
from conversations.gateway import gateway_preload
from conversations.runs import runs_recover_stale, worker_id
from conversations.tasks import evaluation_run, run_step
from conversations.tracing import run_context
from project.pushes import pushes_drain
from tools.mcp.bridge import mcp_servers_check

logger = logging.getLogger(__name__)

_tasks: set[asyncio.Task] = set()
_recovery: dict[tuple[int, str], asyncio.Task] = {}  # (event loop id, name) → timer task


def dispatch_run_step(run_id: int) -> None:
    """Schedule one ``run_advance`` of run ``run_id``. Call after commit (``on_commit``)."""
    if settings.TOLLGATE_DISPATCHER == "celery":
        with run_context(run_id):  # the task carries the run's trace to the worker
            run_step.delay(run_id)
        return
    _inprocess(run_id)


def run_step_due_received(*, run_id: int, **_signal: Any) -> None:
    """Receiver of ``runs.run_step_due``: :func:`dispatch_run_step`."""
    dispatch_run_step(run_id)


def evaluation_due_received(*, evaluation_id: int, **_signal: Any) -> None:
    """Receiver of ``evaluations.evaluation_due`` (sent on commit): run the evaluation's
    calls in Celery (``tasks.evaluation_run``), or in a thread of this process."""
    if settings.TOLLGATE_DISPATCHER == "celery":
        evaluation_run.delay(evaluation_id)
        return
    threading.Thread(
        target=_evaluation_blocking, args=(evaluation_id,), name=f"evaluation-{evaluation_id}",
        daemon=True,
    ).start()  # fmt: skip


def _evaluation_blocking(evaluation_id: int) -> None:
    gateway_warm()
    if _preloading is not None:
        _preloading.join()
    async_to_sync(evaluation_process)(evaluation_id=evaluation_id)


def _inprocess(run_id: int) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        _spawn(run_id)
    elif getattr(SyncToAsync.threadlocal, "main_event_loop", None) is not None:
        # Sync code running under the web process's loop (a view, a consumer's
        # database call): hop onto that loop to create the task there.
        async_to_sync(_aspawn)(run_id)
    else:
        # No event loop at all (a shell, a management command): run the step in
        # a thread of its own so the caller is not blocked.
        threading.Thread(target=_run_blocking, args=(run_id,), daemon=True).start()


async def _aspawn(run_id: int) -> None:
    _spawn(run_id)


def _spawn(run_id: int, *, with_recovery: bool = True) -> None:
    # A fresh context: the caller's (a request's or consumer call's) ends before
    # the step does, and asgiref's thread-sensitive executor lives in it.
    task = asyncio.get_running_loop().create_task(
        _advance(run_id), name=f"run-{run_id}", context=contextvars.Context()
    )
    _tasks.add(task)
    task.add_done_callback(_done)
    if with_recovery:
        recovery_timer_ensure()


async def _advance(run_id: int) -> None:
    """``run_advance`` once the preload thread, if one runs, is done: a step
    importing litellm while that thread imports it too can meet it mid-import
    and fail ("partially initialized module"; see ``gateway_preload``)."""
    await _preloaded()
    await run_advance(run_id=run_id, worker=worker_id("inprocess"))


async def _preloaded() -> None:
    if _preloading is not None and _preloading.is_alive():
        await asyncio.to_thread(_preloading.join)


async def gateway_ready() -> None:
    """Have litellm imported (``gateway_preload``, in its thread, once per process)
    before a model call made outside a run step: the web process's reformulation
    of a draft. The import (seconds) then never runs on the event loop, nor in
    the one thread its database calls share, and never twice at once."""
    gateway_warm()
    await _preloaded()


def _done(task: asyncio.Task) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("in-process run step failed", exc_info=task.exception())


def _run_blocking(run_id: int) -> None:
    asyncio.run(_drain(run_id))


async def _drain(run_id: int) -> None:
    """Run the step and every step it schedules on this loop, then return."""
    loop = asyncio.get_running_loop()
    _spawn(run_id, with_recovery=False)
    while pending := [t for t in list(_tasks) if t.get_loop() is loop]:
        await asyncio.gather(*pending, return_exceptions=True)
    await pushes_drain()  # this loop ends here


def recovery_timer_ensure() -> None:
    """Start the in-process timers on the running loop (once per loop): stuck-run
    recovery and approval expiry, which Celery beat runs otherwise. With Celery,
    warm the broker connection instead (``broker_warm``, once per process)."""
    if settings.TOLLGATE_DISPATCHER == "celery":
        _broker_warm()
        return
    gateway_warm()
    loop = asyncio.get_running_loop()
    for name, make in (
        ("runs-recover-stale", _recovery_loop),
        (
            "approvals-expire",
            lambda: expiry_loop(settings.TOLLGATE_APPROVAL_EXPIRY_SWEEP_SECONDS),
        ),
        ("mcp-servers-check", _mcp_check_loop),
    ):
        key = (id(loop), name)
        task = _recovery.get(key)
        if task is None or task.done():
            _recovery[key] = loop.create_task(make(), name=name, context=contextvars.Context())


_preloading: threading.Thread | None = None
_warming: threading.Thread | None = None


def _broker_warm() -> None:
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=broker_warm, name="broker-warm", daemon=True)
        _warming.start()


def broker_warm() -> None:
    """Connect this process's Celery producer and declare the run-step queue.

    The first ``run_step.delay`` of a web process otherwise pays for it (kombu's
    Redis transport imported, the connection made, the queue declared: ~60 ms
    of the first reply after a start). Called in a thread when the first page
    connects; a broker that is down is logged, and the first send reports it.
    """
    app = run_step.app
    try:
        with app.producer_or_acquire() as producer:
            producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue])
    except Exception:
        logger.warning("could not connect to the Celery broker in advance", exc_info=True)


def gateway_warm() -> None:
    """Import litellm and what a first model call needs (``gateway_preload``,
    seconds) in a background thread, once per process, and log when it is done.

    The embedded web process calls it at start-up (``project.asgi``), so the
    first reply does not wait for it, nor hold the thread that every database
    call of that process shares; the first page's socket calls it too, for a
    process started otherwise. Run steps wait for the thread (``_preloaded``).
    """
    global _preloading
    if _preloading is None:
        _preloading = threading.Thread(target=_warm, name="litellm-preload", daemon=True)
        _preloading.start()


def _warm() -> None:
    started = time.monotonic()
    try:
        gateway_preload()
    except Exception:
        logger.exception("the model gateway could not be warmed up; the first reply will")
        return
    logger.info("model gateway warmed up in %.1f s", time.monotonic() - started)


async def _mcp_check_loop() -> None:
    """Retry MCP servers that are down (beat's ``tools.mcp_servers_check``).

    Starts once the preload thread is done: a first MCP connection imports what
    the MCP client imports only when it connects (anyio's asyncio backend and
    its streams), which that thread imports too, with litellm's MCP gateway;
    two threads importing the same packages at once could leave either with a
    partially initialized module (see ``gateway_preload``).
    """
    await _preloaded()
    while True:
        try:
            await mcp_servers_check()
        except Exception:
            logger.exception("MCP server check failed")
        await asyncio.sleep(settings.TOLLGATE_MCP_CHECK_SECONDS)


async def _recovery_loop() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE.get("conversations-recover-stale-runs", {})
    interval = float(entry.get("schedule", 60.0))
    while True:
        try:
            await sync_to_async(runs_recover_stale)()
        except Exception:
            logger.exception("stuck-run recovery failed")
        await asyncio.sleep(interval)
