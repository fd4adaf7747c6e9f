"""``project.dbthreads``: closing the connections a pool's threads opened."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from project.dbthreads import threads_close_connections

THREADS = 3


def _each_thread(executor: ThreadPoolExecutor, fn) -> dict[str, object]:
    """``fn()`` once in each of the executor's threads, by thread name."""
    barrier = threading.Barrier(THREADS, timeout=10)

    def run() -> tuple[str, object]:
        barrier.wait()  # holds each thread to one call
        return threading.current_thread().name, fn()

    return dict(f.result(timeout=15) for f in [executor.submit(run) for _ in range(THREADS)])


def _open() -> bool:
    return connection.connection is not None and not connection.connection.closed


@pytest.mark.django_db(transaction=True)
def test_each_threads_connection_is_closed():
    executor = ThreadPoolExecutor(THREADS, thread_name_prefix="closing")
    try:
        opened = _each_thread(executor, lambda: connection.ensure_connection() or _open())
        assert len(opened) == THREADS and all(opened.values())

        threads_close_connections(executor, THREADS)

        assert _each_thread(executor, _open) == dict.fromkeys(opened, False)
    finally:
        executor.shutdown(wait=True)
