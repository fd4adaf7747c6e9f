"""Django's connection handling for threads that are not a request's."""

from __future__ import annotations

import time

from django.db import connections


def connections_close_stale() -> None:
    """Close this thread's connections that had an error or are older than
    ``CONN_MAX_AGE`` (what Django does at the end of a request), except one inside
    a transaction. For executor threads that run database work for event loops.

    Django's ``close_if_unusable_or_obsolete`` would also re-arm the health check,
    a ``SELECT 1`` before the next query; a call in such a thread is not a request.
    """
    now = time.monotonic()
    for db in connections.all(initialized_only=True):
        if db.connection is None or db.in_atomic_block:
            continue
        if db.errors_occurred or (db.close_at is not None and now >= db.close_at):
            db.close()
