"""``project.pgsql``: steps of several modules sharing round trips (PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import DataError, connection, transaction

from project import pgsql
from tests.roundtrips import round_trips

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")


def _echo(name: str, rounds: int, seen: list):
    """Steps that select ``name`` and the round's number, ``rounds`` times."""
    for number in range(rounds):
        (rows,) = yield [("SELECT %(name)s, %(n)s::int", {"name": name, "n": number})]
        seen.append(rows[0])
    return f"{name} done"


def test_gather_shares_rounds_and_routes_each_its_rows():
    seen: list = []
    with round_trips() as sizes:
        results = pgsql.gather(_echo("a", 2, seen), _echo("b", 1, seen), _echo("c", 0, seen))
    assert results == ["a done", "b done", "c done"]
    # Round one: a and b together; round two: a alone. c sent nothing.
    assert sizes == [2, 1]
    assert seen == [("a", 0), ("b", 0), ("a", 1)]


def test_an_error_in_one_steps_rolls_back_the_others_writes():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE pgsql_probe (x int)")

    def write(x: int):
        yield [("INSERT INTO pgsql_probe VALUES (%(x)s)", {"x": x})]

    def refuse():
        yield [("SELECT 1", {})]
        raise ValueError("refused after its first round")

    with pytest.raises(ValueError, match="refused"), transaction.atomic():
        pgsql.gather(write(1), refuse(), write(2))
    assert pgsql.fetch("SELECT count(*) FROM pgsql_probe", {}) == [(0,)]
    pgsql.run(write(3))
    assert pgsql.fetch("SELECT x FROM pgsql_probe", {}) == [(3,)]


def _seen_elsewhere() -> list[int]:
    """The probe table's rows as another connection sees them (committed ones)."""
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other:
        return [x for (x,) in other.execute("SELECT x FROM pgsql_commit_probe ORDER BY x")]


def _write(x: int, *, last: bool = True):
    yield [("INSERT INTO pgsql_commit_probe VALUES (%(x)s)", {"x": x})]
    second = [("INSERT INTO pgsql_commit_probe VALUES (%(x)s)", {"x": x + 10})]
    yield pgsql.Last(second) if last else second


@pytest.mark.django_db(transaction=True)
def test_the_commit_rides_the_last_round_of_the_outermost_block_only():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE pgsql_commit_probe (x int)")
    try:
        hooks: list[str] = []
        with round_trips() as sizes, transaction.atomic():
            transaction.on_commit(lambda: hooks.append("ran"))
            pgsql.gather(_write(1), _write(2), commit=True)
            assert _seen_elsewhere() == [1, 2, 11, 12]  # committed with the last round
            assert hooks == []  # Django's own (now empty) commit runs them, at the end
        assert sizes == [2, 3]
        assert hooks == ["ran"]

        # Inside an enclosing block the commit is not ours to send.
        with transaction.atomic():
            with round_trips() as sizes, transaction.atomic():
                pgsql.gather(_write(3), commit=True)
            assert _seen_elsewhere() == [1, 2, 11, 12]
        assert sizes == [1, 1]
        assert _seen_elsewhere() == [1, 2, 3, 11, 12, 13]

        # A round that is not every generator's last does not commit.
        with round_trips() as sizes, transaction.atomic():
            pgsql.gather(_write(4), _write(5, last=False), commit=True)
            assert 4 not in _seen_elsewhere()
        assert sizes == [2, 2]
        assert _seen_elsewhere() == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]

        # A failing last round commits nothing, earlier rounds included.
        def failing():
            yield [("INSERT INTO pgsql_commit_probe VALUES (6)", {})]
            yield pgsql.Last([("SELECT 1 / 0", {})])

        with pytest.raises(DataError), transaction.atomic():
            pgsql.gather(failing(), commit=True)
        assert 6 not in _seen_elsewhere()
        assert pgsql.fetch("SELECT count(*) FROM pgsql_commit_probe WHERE x = 6", {}) == [(0,)]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE pgsql_commit_probe")
