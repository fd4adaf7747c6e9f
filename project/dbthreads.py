"""Where async code runs its database calls: thread-sensitive, or a bounded pool.

``db_async(fn)`` wraps a sync function that does its own database work (its
own ``transaction.atomic``) for calling from async code:

- by default it is asgiref's thread-sensitive ``sync_to_async``: the call runs
  in the thread that owns the caller's connection (the request's, the Celery
  task's under ``async_to_sync``, the test's), so it can join a transaction the
  caller holds;
- inside :func:`db_pool` (the worker's engine host, ``conversations/host.py``)
  it runs on that pool's threads instead: many concurrent run steps share a
  few threads and so a few PostgreSQL connections (one per pool thread), and
  no step waits for another's query behind a single thread.

A pooled call closes its thread's connection after an error or when it is
older than ``CONN_MAX_AGE`` (what Django does at the end of a request).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connections

from project.pushes import Deferred, pushes_deferred

P = ParamSpec("P")
R = TypeVar("R")

_pool: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar(
    "tollgate_db_pool", default=None
)


@contextlib.contextmanager
def db_pool(executor: ThreadPoolExecutor) -> Iterator[None]:
    """Run ``db_async`` calls made in this context (and tasks it creates) on ``executor``."""
    token = _pool.set(executor)
    try:
        yield
    finally:
        _pool.reset(token)


_named: dict[str, tuple[int, ThreadPoolExecutor, int]] = {}
_named_lock = threading.Lock()


def named_pool(name: str, size: int) -> ThreadPoolExecutor | None:
    """This process's pool ``name`` of ``size`` threads (``None`` when size ≤ 0:
    stay thread-sensitive, as SQLite needs); created on first use, again after a fork."""
    if size <= 0:
        return None
    with _named_lock:
        entry = _named.get(name)
        if entry is None or entry[0] != os.getpid():
            executor = ThreadPoolExecutor(size, thread_name_prefix=name)
            entry = _named[name] = (os.getpid(), executor, size)
        return entry[1]


def threads_close_connections(executor: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connections of each of ``executor``'s ``threads`` threads.

    Django's connections belong to the thread that opened them; only that
    thread can close them. One task per thread (a barrier keeps each thread
    to one), each closing its own. Waits up to 15 seconds; raises
    ``threading.BrokenBarrierError`` or ``TimeoutError`` when a thread stays
    busy that long. For a process's (or a test session's) end: PostgreSQL
    will not drop a database while a connection to it is open.
    """
    barrier = threading.Barrier(threads, timeout=10)

    def close() -> None:
        barrier.wait()
        connections.close_all()

    for future in [executor.submit(close) for _ in range(threads)]:
        future.result(timeout=15)


def named_pools_close_connections() -> None:
    """Close the connections of every :func:`named_pool` thread of this process."""
    with _named_lock:
        pools = [(executor, size) for pid, executor, size in _named.values() if pid == os.getpid()]
    for executor, size in pools:
        threads_close_connections(executor, size)


async def db_call(pool: ThreadPoolExecutor, fn: Callable[..., R], /, **kwargs: Any) -> R:
    """Call ``fn(**kwargs)`` on one of ``pool``'s threads from async code."""
    with db_pool(pool):
        return await db_async(fn)(**kwargs)


def _close_if_stale() -> None:
    # Django's close_if_unusable_or_obsolete would also re-arm the health check,
    # a SELECT 1 before the next query; a pooled call is not a request.
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or connection.in_atomic_block:
            continue
        if connection.errors_occurred or (
            connection.close_at is not None and now >= connection.close_at
        ):
            connection.close()


class DbFunction(Protocol[P, R]):
    """What :func:`db_async` returns: awaited from async code, the sync original
    kept as ``func``."""

    func: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]: ...


def db_async(fn: Callable[P, R]) -> DbFunction[P, R]:
    """``fn`` as a coroutine function that picks its thread at call time (see module).

    The pushes ``fn``'s commits schedule are queued on the caller's loop when
    it returns (``project.pushes.Deferred``). The wrapper keeps ``fn`` as
    ``.func`` (like asgiref's wrappers), so tests can call or wrap the sync
    original.
    """

    def in_thread(deferred: Deferred, *args: Any, **kwargs: Any) -> R:
        with pushes_deferred(deferred):
            return fn(*args, **kwargs)

    thread_sensitive = sync_to_async(in_thread)

    def pooled_call(deferred: Deferred, *args: Any, **kwargs: Any) -> R:
        try:
            return in_thread(deferred, *args, **kwargs)
        finally:
            _close_if_stale()

    pooled: dict[ThreadPoolExecutor, SyncToAsync] = {}

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        # The pushes fn's commits make are queued when it returns (pushes.Deferred).
        deferred = Deferred()
        try:
            executor = _pool.get()
            if executor is None:
                return await thread_sensitive(deferred, *args, **kwargs)
            runner = pooled.get(executor)
            if runner is None:
                runner = pooled[executor] = SyncToAsync(
                    pooled_call, thread_sensitive=False, executor=executor
                )
            return await runner(deferred, *args, **kwargs)
        finally:
            deferred.release()

    wrapper = cast("DbFunction[P, R]", call)
    wrapper.func = fn
    return wrapper
