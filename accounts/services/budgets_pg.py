"""The per-call budget statements on PostgreSQL: one round trip each way.

``llm_call_admit`` and ``llm_call_settle`` run once per LLM call, so on
PostgreSQL each does its work in a single prepared statement (data-modifying
``WITH`` clauses) instead of a dozen ORM queries:

- ``reserve``: find the applicable budgets and rate limits, lock their
  counters in budget-id order, add the hold to every counter whose limits it
  fits (the check is in the ``UPDATE``'s ``WHERE``, evaluated on the locked,
  latest row), and insert the ``held`` reservation rows when every budget
  took the hold. When one did not (a limit, or a period without a counter
  yet), the caller rolls back and takes the general path in
  ``accounts.services.budgets``, which creates counters and words the refusal.
- ``settle``: insert the ledger row, settle the call's held reservations
  (locked in id order), and move each hold from ``held`` to ``spent`` on its
  counter (locked in budget-id order), returning the counters' new totals for
  the warning check.

Lock order, shared with every other writer of counters (see
``accounts.services.budgets``): reservation rows by id, then counters by
(budget id, id). So no two of these statements deadlock.

The statements are prepared on the connection and go through Django's cursor
wrapper (``project.pgsql``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.models import Group
from django.db import connection

from accounts.models import (
    Budget,
    BudgetCounter,
    BudgetReservation,
    RateLimit,
    UsageRecord,
    User,
)
from accounts.periods import EPOCH, period_bounds
from project.pgsql import Steps, fetch

HELD = BudgetReservation.Status.HELD.value
SETTLED = BudgetReservation.Status.SETTLED.value


@functools.cache
def _tables() -> dict[str, str]:
    qn = connection.ops.quote_name
    return {
        "budget": qn(Budget._meta.db_table),
        "counter": qn(BudgetCounter._meta.db_table),
        "reservation": qn(BudgetReservation._meta.db_table),
        "ratelimit": qn(RateLimit._meta.db_table),
        "usage": qn(UsageRecord._meta.db_table),
        "group": qn(Group._meta.db_table),
        "membership": qn(User.groups.through._meta.db_table),
    }


_APPLIES = (
    "t.enabled AND (t.user_id = %(uid)s::bigint OR t.group_id IN "
    "(SELECT m.group_id FROM {membership} m WHERE m.user_id = %(uid)s::bigint) "
    "OR (t.user_id IS NULL AND t.group_id IS NULL))"
)

_RESERVE = """
WITH b AS MATERIALIZED (
    SELECT t.id, t.user_id, t.group_id, g.name AS group_name, t.period,
           t.cost_limit_usd, t.token_limit, t.warn_at_fraction,
           CASE t.period WHEN 'daily' THEN %(day)s::timestamptz
                         WHEN 'weekly' THEN %(week)s::timestamptz
                         WHEN 'monthly' THEN %(month)s::timestamptz
                         ELSE %(epoch)s::timestamptz END AS period_start,
           CASE WHEN t.user_id IS NULL AND t.group_id IS NULL
                THEN %(uid)s::bigint ELSE 0 END AS scope
    FROM {budget} t LEFT JOIN {group} g ON g.id = t.group_id
    WHERE {applies}
), locked AS MATERIALIZED (
    SELECT c.id FROM {counter} c
    JOIN b ON c.budget_id = b.id AND c.scope_user_id = b.scope AND c.period_start = b.period_start
    ORDER BY c.budget_id, c.id
    FOR NO KEY UPDATE OF c
), upd AS (
    UPDATE {counter} c
    SET held_usd = c.held_usd + %(cost)s::numeric, held_tokens = c.held_tokens + %(tokens)s::bigint
    FROM b
    WHERE c.id IN (SELECT id FROM locked) AND b.id = c.budget_id
      AND (b.cost_limit_usd IS NULL OR (
           c.spent_usd + c.held_usd < b.cost_limit_usd
           AND c.spent_usd + c.held_usd + %(cost)s::numeric <= b.cost_limit_usd))
      AND (b.token_limit IS NULL OR (
           c.spent_tokens + c.held_tokens < b.token_limit
           AND c.spent_tokens + c.held_tokens + %(tokens)s::bigint <= b.token_limit))
    RETURNING c.id, c.budget_id
), ins AS (
    INSERT INTO {reservation}
        (budget_id, user_id, run_id, cost_usd, tokens, period_start, counter_id, status, created_at)
    SELECT upd.budget_id, %(uid)s::bigint, %(run)s::bigint, %(cost)s::numeric, %(tokens)s::bigint,
           b.period_start, upd.id, 'held', %(now)s::timestamptz
    FROM upd JOIN b ON b.id = upd.budget_id
    WHERE (SELECT count(*) FROM upd) = (SELECT count(*) FROM b)
    ORDER BY upd.budget_id
    RETURNING id, budget_id
)
SELECT 'b', b.id, b.user_id, b.group_id, b.group_name, b.period, b.cost_limit_usd, b.token_limit,
       b.warn_at_fraction, b.period_start, upd.id, ins.id, NULL::integer, NULL::integer,
       (SELECT CASE WHEN %(relax)s::boolean
               THEN set_config('synchronous_commit', 'off', true) END)
FROM b LEFT JOIN upd ON upd.budget_id = b.id LEFT JOIN ins ON ins.budget_id = b.id
UNION ALL
SELECT 'r', t.id, t.user_id, t.group_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       t.requests_per_minute, t.tokens_per_minute, NULL
FROM {ratelimit} t WHERE {applies}
ORDER BY 1, 2
"""

_SETTLE = """
WITH rec AS (
    INSERT INTO {usage} (user_id, conversation_id, run_id, model, prompt_tokens,
                         completion_tokens, cost_usd, latency_ms, created_at)
    VALUES (%(uid)s::bigint, %(conversation)s::bigint, %(run)s::bigint, %(model)s::varchar,
            %(prompt)s::integer, %(completion)s::integer, %(cost)s::numeric,
            %(latency)s::integer, %(now)s::timestamptz)
    RETURNING id
), held AS MATERIALIZED (
    SELECT r.id, r.budget_id, r.counter_id, r.cost_usd, r.tokens FROM {reservation} r
    WHERE r.id = ANY(%(ids)s::bigint[]) AND r.user_id = %(uid)s::bigint AND r.status = 'held'
    ORDER BY r.id
    FOR NO KEY UPDATE
), res AS (
    UPDATE {reservation} r
    SET status = 'settled', cost_usd = %(cost)s::numeric, tokens = %(total)s::bigint,
        usage_id = (SELECT id FROM rec), settled_at = %(now)s::timestamptz
    FROM held WHERE r.id = held.id
    RETURNING r.id
), per_counter AS (
    SELECT counter_id, sum(cost_usd) AS cost_usd, sum(tokens) AS tokens, count(*) AS calls
    FROM held WHERE counter_id IS NOT NULL GROUP BY counter_id
), locked AS MATERIALIZED (
    SELECT c.id FROM {counter} c WHERE c.id IN (SELECT counter_id FROM per_counter)
    ORDER BY c.budget_id, c.id
    FOR NO KEY UPDATE
), cnt AS (
    UPDATE {counter} c
    SET held_usd = c.held_usd - p.cost_usd, held_tokens = c.held_tokens - p.tokens,
        spent_usd = c.spent_usd + p.calls * %(cost)s::numeric,
        spent_tokens = c.spent_tokens + p.calls * %(total)s::bigint
    FROM per_counter p
    WHERE c.id = p.counter_id AND c.id IN (SELECT id FROM locked)
    RETURNING c.id, c.period_start, c.spent_usd + c.held_usd AS usd,
              c.spent_tokens + c.held_tokens AS tokens
)
SELECT rec.id, held.budget_id, cnt.period_start, cnt.usd, cnt.tokens
FROM rec LEFT JOIN held ON true LEFT JOIN cnt ON cnt.id = held.counter_id
ORDER BY held.id
"""


@functools.cache
def _sql(template: str) -> str:
    tables = _tables()
    applies = _APPLIES.format(**tables)
    return template.format(applies=applies, **tables)  # quoted identifiers only


@dataclass
class Reserved:
    """What ``reserve`` found and did.

    ``complete`` is False when some budget did not take the hold (refused, or
    no counter yet for its period): nothing may be committed then.
    """

    budgets: list[Budget]
    ratelimits: list[RateLimit]
    reservations: list[BudgetReservation]
    complete: bool


def reserve(
    *,
    user_id: int,
    cost: Decimal,
    tokens: int,
    run_id: int | None,
    now: datetime,
    relax_commit: bool,
) -> Reserved:
    """Hold ``cost``/``tokens`` on every applicable budget's counter, in one statement.

    Call inside ``transaction.atomic``; roll back when the result is not
    ``complete``. ``relax_commit`` turns off the WAL flush of this
    transaction's commit (only for a transaction the caller owns).
    """
    params = {
        "uid": user_id,
        "cost": cost,
        "tokens": tokens,
        "run": run_id,
        "now": now,
        "day": period_bounds("daily", now=now)[0],
        "week": period_bounds("weekly", now=now)[0],
        "month": period_bounds("monthly", now=now)[0],
        "epoch": EPOCH,
        "relax": relax_commit,
    }
    budgets: list[Budget] = []
    ratelimits: list[RateLimit] = []
    reservations: list[BudgetReservation] = []
    complete = True
    for row in fetch(_sql(_RESERVE), params):
        if row[0] == "r":
            ratelimits.append(
                RateLimit(
                    id=row[1],
                    user_id=row[2],
                    group_id=row[3],
                    requests_per_minute=row[12],
                    tokens_per_minute=row[13],
                    enabled=True,
                )
            )
            continue
        budget = Budget(
            id=row[1],
            user_id=row[2],
            group_id=row[3],
            period=row[5],
            cost_limit_usd=row[6],
            token_limit=row[7],
            warn_at_fraction=row[8],
            enabled=True,
        )
        budget.group_name = row[4]
        budgets.append(budget)
        if row[11] is None:
            complete = False
            continue
        reservations.append(
            BudgetReservation(
                id=row[11],
                budget_id=row[1],
                user_id=user_id,
                run_id=run_id,
                cost_usd=cost,
                tokens=tokens,
                period_start=row[9],
                counter_id=row[10],
                status=HELD,
                created_at=now,
            )
        )
    for obj in (*budgets, *ratelimits, *reservations):
        obj._state.adding = False
        obj._state.db = connection.alias
    return Reserved(budgets, ratelimits, reservations, complete)


@dataclass
class Settled:
    """The ledger row and, per settled reservation, its budget's counter after settling.

    ``counters`` maps budget id to ``(period_start, usd, tokens)`` (spend incl.
    holds of that counter's period), or to ``None`` for a reservation without
    a counter.
    """

    record_id: int
    counters: dict[int, tuple[datetime, Decimal, int] | None]


def settle_steps(
    *,
    user_id: int,
    conversation_id: int | None,
    run_id: int | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost: Decimal,
    latency_ms: int | None,
    reservation_ids: list[int],
    now: datetime,
) -> Steps[Settled]:
    """Insert the ledger row and settle the call's held reservations: one statement,
    as ``pgsql`` steps (one round).

    Run inside ``transaction.atomic``. Reservations no longer held (released,
    expired, already settled) or not ``user_id``'s are left alone and absent
    from ``counters``.
    """
    params = {
        "uid": user_id,
        "conversation": conversation_id,
        "run": run_id,
        "model": model,
        "prompt": prompt_tokens,
        "completion": completion_tokens,
        "cost": cost,
        "latency": latency_ms,
        "now": now,
        "ids": reservation_ids,
        "total": prompt_tokens + completion_tokens,
    }
    (rows,) = yield [(_sql(_SETTLE), params)]
    counters: dict[int, tuple[datetime, Decimal, int] | None] = {}
    for _, budget_id, period_start, usd, tokens in rows:
        if budget_id is not None:
            counters[budget_id] = None if period_start is None else (period_start, usd, tokens)
    return Settled(record_id=rows[0][0], counters=counters)
