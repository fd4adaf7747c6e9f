"""Running test code in several threads at once, each with its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def race(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Call ``target(i)`` for ``i`` in ``range(n)``, each in its own thread, released
    together by a barrier; each thread closes its database connection at the end.
    Returns each call's result, or the exception it raised, in ``i`` order."""
    from django.db import connection

    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = target(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results
