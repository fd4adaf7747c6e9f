"""The engine host: one event loop per worker process running many run steps at once.

A run step is mostly waiting: on the provider's stream, on a tool, on
PostgreSQL. Celery's prefork pool gives each step a whole process for its
length, so a 2-core worker streamed two conversations at a time and queued
the rest (docs/benchmarks.md, concurrency). Here the worker's pool is
``threads`` (settings ``CELERY_WORKER_POOL``); each ``run_step`` task hands
its step to this process's host and waits for it, so Celery still acks late
(a step lost with its worker is delivered again), while the steps themselves
interleave on one asyncio loop. Their database calls run on that loop's
default executor (``project.dbthreads.db_concurrent``: asgiref's
``sync_to_async``, one connection per executor thread), and their browser
pushes go to the loop's outbox (``project.pushes``), which lives as long as
the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

from conversations.engine import run_advance
from project.dbthreads import db_concurrent


class EngineHost:
    """An event loop in a daemon thread, running run steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="engine-host", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _advance(self, run_id: int, worker: str) -> None:
        with db_concurrent():
            await run_advance(run_id=run_id, worker=worker)

    def submit(self, *, run_id: int, worker: str) -> concurrent.futures.Future[None]:
        """Start ``run_advance(run_id, worker)`` on the host loop (any thread).

        Returns a future that resolves when the step ends (its exception, if any).
        """
        return asyncio.run_coroutine_threadsafe(self._advance(run_id, worker), self.loop)


_host: tuple[int, EngineHost] | None = None
_lock = threading.Lock()


def engine_host() -> EngineHost:
    """This process's host, started on first use (again in a forked child)."""
    global _host
    with _lock:
        if _host is None or _host[0] != os.getpid():
            _host = (os.getpid(), EngineHost())
        return _host[1]
