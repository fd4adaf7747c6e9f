"""Database calls from async code: asgiref's ``sync_to_async`` and Django's own
connection handling, in one of two modes.

``db_async(fn)`` wraps a sync function that does its own database work (its own
``transaction.atomic``) for calling from async code:

- by default it is asgiref's thread-sensitive ``sync_to_async``: the call runs in
  the thread that owns the caller's connection (the request's, the Celery task's
  under ``async_to_sync``, the test's), so it can join a transaction the caller
  holds;
- inside :func:`db_concurrent` (the worker's engine host around every run step,
  the page consumer around each service call) it is ``sync_to_async`` with
  ``thread_sensitive=False``: the running loop's default executor (asyncio's own,
  ``min(32, cores + 4)`` threads), so hundreds of concurrent steps or sockets do
  not queue behind one thread. Each of those threads keeps its own connection
  (``CONN_MAX_AGE``), closed after an error or once older than ``CONN_MAX_AGE``,
  which is what Django does at the end of a request.

On SQLite (the embedded mode) :func:`db_concurrent` changes nothing: one writer
at a time, from one thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from asgiref.sync import sync_to_async
from django.db import connection

from project.db import connections_close_stale
from project.pushes import Deferred, pushes_deferred

P = ParamSpec("P")
R = TypeVar("R")

_concurrent: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tollgate_db_concurrent", default=False
)


@contextlib.contextmanager
def db_concurrent() -> Iterator[None]:
    """Run the ``db_async`` calls made in this context (and in tasks it creates) on
    the loop's default executor instead of the one thread-sensitive thread; a
    no-op on SQLite."""
    token = _concurrent.set(connection.vendor != "sqlite")
    try:
        yield
    finally:
        _concurrent.reset(token)


class DbFunction(Protocol[P, R]):
    """What :func:`db_async` returns: awaited from async code, the sync original
    kept as ``func``."""

    func: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]: ...


def db_async(fn: Callable[P, R]) -> DbFunction[P, R]:
    """``fn`` as a coroutine function that picks its thread at call time (see module).

    The pushes ``fn``'s commits schedule are queued on the caller's loop when it
    returns (``project.pushes.Deferred``). The wrapper keeps ``fn`` as ``.func``
    (like asgiref's wrappers), so tests can call or wrap the sync original.
    """

    def in_thread(deferred: Deferred, *args: Any, **kwargs: Any) -> R:
        with pushes_deferred(deferred):
            return fn(*args, **kwargs)

    def concurrent_call(deferred: Deferred, *args: Any, **kwargs: Any) -> R:
        try:
            return in_thread(deferred, *args, **kwargs)
        finally:
            connections_close_stale()

    thread_sensitive = sync_to_async(in_thread)
    concurrent = sync_to_async(concurrent_call, thread_sensitive=False)

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        deferred = Deferred()
        try:
            runner = concurrent if _concurrent.get() else thread_sensitive
            return await runner(deferred, *args, **kwargs)
        finally:
            deferred.release()

    wrapper = cast("DbFunction[P, R]", call)
    wrapper.func = fn
    return wrapper


async def db_run(fn: Callable[..., R], /, **kwargs: Any) -> R:
    """``fn(**kwargs)`` from async code on the loop's default executor (``db_async``
    inside ``db_concurrent``): how the page's socket and the API's async views call a
    service or a selector, so that many of them do not queue behind one thread."""
    with db_concurrent():
        return await db_async(fn)(**kwargs)
