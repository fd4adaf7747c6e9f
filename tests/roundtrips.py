"""Counting the round trips of ``project.pgsql``'s pipelines in a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

from project import pgsql


@contextlib.contextmanager
def round_trips() -> Iterator[list[int]]:
    """The number of statements of each ``pgsql.pipeline`` call made inside, in
    order: one round trip each (``pgsql.fetch`` is not counted). A ``COMMIT``
    the pipeline carries counts as one of its statements."""
    from django.db import connection

    counts: list[int] = []
    original = pgsql.pipeline

    def counted(*statements, commit=False):
        counts.append(len(statements) + bool(commit and pgsql._commits_here(connection)))
        return original(*statements, commit=commit)

    with mock.patch.object(pgsql, "pipeline", counted):
        yield counts
