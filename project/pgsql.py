"""Hand-written statements on PostgreSQL, prepared and pipelined, through Django's connection.

The per-call hot paths (budget admission and settlement, a run step's claim
and its stored answer, audit appends) run a handful of statements each. On
this project's machines a round trip to PostgreSQL costs about 0.2-0.3 ms and
an ORM statement as much again in Python, so those paths use
:func:`fetch` and :func:`pipeline`:

- statements are prepared on the connection (psycopg's ``prepare=True``:
  parsed and planned once per connection, not per call). Behind a pooler that
  cannot keep prepared statements (PgBouncer in transaction mode before 1.21)
  set ``TOLLGATE_DB_PREPARED_STATEMENTS=false``;
- :func:`pipeline` sends several statements (and the ``BEGIN`` psycopg opens a
  transaction with) in one round trip, psycopg's pipeline mode
  (https://www.psycopg.org/psycopg3/docs/advanced/pipeline.html);
- they run in Django's current transaction and through its cursor wrapper,
  so ``transaction.atomic``, ``on_commit``, query logging (``assertNumQueries``),
  ``execute_wrapper`` and error translation all apply.

PostgreSQL only: callers check ``connection.vendor`` and keep an ORM path.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Generator, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

if TYPE_CHECKING:
    from psycopg._queries import PostgresQuery

#: One statement: SQL with ``%(name)s`` placeholders, and its parameters.
Statement = tuple[str, dict[str, Any]]

T = TypeVar("T")

#: A database write in round trips (see :func:`gather`): a generator that yields
#: each round's statements, is sent back their rows, and returns its result.
Steps = Generator[list[Statement], list[list[tuple]], T]


@functools.cache
def _cursor_class() -> type:
    import psycopg

    class PreparedCursor(psycopg.Cursor):
        """A server-side-binding cursor that prepares what it executes (if allowed)."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs["prepare"] = settings.TOLLGATE_DB_PREPARED_STATEMENTS
            result = super().execute(query, params, **kwargs)
            if self._query is None:
                # psycopg keeps no query object for a prepared execution, and
                # Django's query log (DEBUG, assertNumQueries) reads its text:
                # a stand-in with only ``.query``, all that the log reads.
                self._query = cast("PostgresQuery", SimpleNamespace(query=query.encode()))
            return result

    return PreparedCursor


def _cursor(db: Any) -> Any:
    db.ensure_connection()
    raw = db.connection
    if raw.prepare_threshold is None:
        # Django turns automatic preparation off; the ORM's cursors never
        # prepare anyway (client-side binding). Only asking prepares.
        raw.prepare_threshold = sys.maxsize
    with db.wrap_database_errors:
        cursor = _cursor_class()(raw)
    return db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)


def _rows(cursor: Any) -> list[tuple]:
    # The psycopg cursor's result status, not ``description``: that builds a
    # column object per column (about 0.1 ms for a claim's 80 columns).
    from psycopg.pq import ExecStatus

    result = cursor.cursor.pgresult
    if result is None or result.status != ExecStatus.TUPLES_OK:
        return []
    return cursor.cursor.fetchall()


def fetch(sql: str, params: dict[str, Any]) -> list[tuple]:
    """Run one statement (prepared) in the current transaction; its rows (``[]`` if none)."""
    db = connections[DEFAULT_DB_ALIAS]
    with _cursor(db) as cursor:
        cursor.execute(sql, params)
        with db.wrap_database_errors:
            return _rows(cursor)


class Last(list):
    """The statements of a :data:`Steps` generator's last round (it returns once
    sent their rows): a round made only of last ones may carry the ``COMMIT``
    (``gather(commit=True)``)."""


def pipeline(*statements: Statement, commit: bool = False) -> list[list[tuple]]:
    """Run ``statements`` in order in one round trip; each one's rows, in order.

    The server runs them one after the other in the current transaction (or
    in one implicit transaction each, in autocommit mode). When one fails,
    the ones after it are not run and the error is raised as Django's
    ``DatabaseError`` subclass; the caller's ``transaction.atomic`` rolls back.

    ``commit``: also send the transaction's ``COMMIT`` in the same round trip,
    when the current ``transaction.atomic`` is the outermost block, the one that
    commits; Django's own commit at its end is then a no-op (psycopg sends
    nothing for a connection with no transaction open) and runs the
    ``on_commit`` callbacks as usual. Within an enclosing block (a savepoint)
    the commit stays Django's. Nothing may be written after it in the block (it
    would run in a transaction of its own), and an error raised after it no
    longer rolls anything back.
    """
    db = connections[DEFAULT_DB_ALIAS]  # once: each ``connection.x`` looks it up
    commit = commit and _commits_here(db)
    cursors = [_cursor(db) for _ in statements]
    # A COMMIT statement, not ``connection.commit()``: in a pipeline that syncs at
    # once, and leaving the pipeline syncs again (a second round trip).
    committing = db.connection.cursor() if commit else None
    try:
        with db.wrap_database_errors:
            with db.connection.pipeline():
                for cursor, (sql, params) in zip(cursors, statements, strict=True):
                    cursor.execute(sql, params)
                if committing is not None:
                    committing.execute("COMMIT", prepare=False)
            return [_rows(cursor) for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()
        if committing is not None:
            committing.close()


def _commits_here(db: Any) -> bool:
    """Whether the running ``transaction.atomic`` block is the one that commits."""
    return (
        db.in_atomic_block
        and len(db.atomic_blocks) == 1
        and db.commit_on_exit
        and not db.needs_rollback
        and not db.savepoint_ids
    )


def run(steps: Steps[T]) -> T:
    """Run ``steps`` on their own, one :func:`pipeline` per round; their result."""
    return gather(steps)[0]


def gather(*steps: Steps[Any], commit: bool = False) -> list[Any]:
    """Run several :data:`Steps` side by side, sharing round trips; their results, in order.

    Each round sends the next statements of every generator still running in
    one :func:`pipeline`, in argument order (so locks are taken in that order
    within a round), and sends each generator its statements' rows. Modules
    keep their statements and their checks in their own generator, while a
    caller writing to several of them in one transaction pays one round trip
    per round instead of one per statement (``engine._store_text_pg``: the
    run, the ledger and the audit head in the first round). An exception in a
    generator propagates at once: call inside ``transaction.atomic``, which
    rolls the others' statements back with it.

    ``commit``: when every generator's next round is its :class:`Last`, that
    round carries the transaction's ``COMMIT`` (see :func:`pipeline`): one
    round trip less, for a caller that writes nothing after ``gather``.
    """
    results: list[Any] = [None] * len(steps)
    running: list[tuple[int, Steps[Any], list[Statement]]] = []

    def advance(index: int, gen: Steps[Any], rows: list[list[tuple]] | None) -> None:
        try:
            statements = gen.send(rows)  # type: ignore[arg-type]
        except StopIteration as stop:
            results[index] = stop.value
        else:
            running.append((index, gen, statements))

    for index, gen in enumerate(steps):
        advance(index, gen, None)
    while running:
        batch, running = running, []
        last = commit and all(isinstance(statements, Last) for _, _, statements in batch)
        rows = pipeline(
            *(statement for _, _, statements in batch for statement in statements), commit=last
        )
        at = 0
        for index, gen, statements in batch:
            advance(index, gen, rows[at : at + len(statements)])
            at += len(statements)
    return results


def select_list(model: type[Model], alias: str) -> str:
    """``alias.col, …`` for every concrete field of ``model``, in :func:`instance`'s order."""
    qn = connection.ops.quote_name
    # A concrete field is one with a column: ``field.column`` is never None here.
    return ", ".join(
        f"{alias}.{qn(cast(str, field.column))}" for field in model._meta.concrete_fields
    )


@functools.cache
def _converters(model: type[Model]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (field.attname, getattr(field, "from_db_value", None))
        for field in model._meta.concrete_fields
    )


def instance(model: type[Model], values: Sequence[Any]) -> Model:
    """A ``model`` instance from a row selected with :func:`select_list` (loaded from
    the database, with the fields' own converters applied, as the ORM does)."""
    converters = _converters(model)
    names = [name for name, _ in converters]
    loaded = [
        value if convert is None or value is None else convert(value, None, connection)
        for (_, convert), value in zip(converters, values, strict=True)
    ]
    return model.from_db(connection.alias, names, loaded)


def instances(row: Sequence[Any], *models: type[Model]) -> tuple[list[Model], tuple]:
    """Split a row that selected :func:`select_list` of each of ``models`` in turn:
    their instances (:func:`instance`), and the row's values after them."""
    out, at = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        out.append(instance(model, row[at : at + width]))
        at += width
    return out, tuple(row[at:])


def insert_sql(
    model: type[Model], prefix: str, expressions: dict[str, str] | None = None
) -> tuple[str, str]:
    """``("col, …", "%(prefix_attname)s, …")`` to insert a ``model`` row by hand
    (``INSERT INTO t (cols) VALUES (values)``, or ``SELECT values FROM …``).

    Every concrete field but the primary key; ``expressions`` gives SQL for some
    columns instead of a parameter (a CTE's id, say). Fill the parameters with
    :func:`insert_params`.
    """
    qn = connection.ops.quote_name
    expressions = expressions or {}
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    # Concrete fields: each has a column (``field.column`` is never None).
    columns = ", ".join(qn(cast(str, field.column)) for field in fields)
    values = ", ".join(
        expressions.get(field.attname, f"%({prefix}_{field.attname})s") for field in fields
    )
    return columns, values


def insert_params(obj: Model, prefix: str) -> dict[str, Any]:
    """The parameters of :func:`insert_sql` for ``obj``, prepared as the ORM's
    ``save()`` prepares them (defaults, ``auto_now_add``, JSON adaptation)."""
    return {
        f"{prefix}_{field.attname}": field.get_db_prep_save(
            field.pre_save(obj, add=True), connection
        )
        for field in obj._meta.concrete_fields
        if not field.primary_key
    }
