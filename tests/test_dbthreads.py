"""``project.dbthreads``: which thread a ``db_async`` call runs on, and connection handling."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from project.db import connections_close_stale
from project.dbthreads import db_async, db_concurrent


@pytest.mark.django_db
def test_by_default_a_call_joins_the_callers_thread_and_transaction():
    @db_async
    def where() -> tuple[str, bool]:
        return threading.current_thread().name, connection.in_atomic_block

    async def call() -> tuple[str, bool]:
        return await where()

    # The test's transaction is open on this thread; the call sees it.
    assert async_to_sync(call)() == (threading.current_thread().name, True)


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_run_side_by_side_on_the_loops_executor():
    barrier = threading.Barrier(2, timeout=5)

    @db_async
    def meet() -> str:
        barrier.wait()  # on one shared thread the second call would never arrive
        return threading.current_thread().name

    async def both() -> list[str]:
        with db_concurrent():
            return await asyncio.gather(meet(), meet())

    names = asyncio.run(both())
    assert len(set(names)) == 2
    assert threading.current_thread().name not in names


@pytest.mark.django_db(transaction=True)
def test_a_stale_connection_is_closed_after_an_error():
    connection.ensure_connection()
    connection.errors_occurred = True
    connections_close_stale()
    assert connection.connection is None
    connection.ensure_connection()  # a fresh one opens on demand
    assert connection.connection is not None
