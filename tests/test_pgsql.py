"""``project.pgsql``: steps of several modules sharing round trips (PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

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
