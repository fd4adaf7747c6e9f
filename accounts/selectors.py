"""Reads for budgets, the usage ledger and rate limits.

Scope rules (see ``Budget``): a user budget counts that user, a group budget
counts all its members together, a default budget counts each user alone.
A budget's spend in a period is the sum of its ``held`` and ``settled``
``BudgetReservation`` rows created since the period started (UTC); the
``BudgetCounter`` of (budget, scope, period start) keeps that sum running,
and these reads use it (a period without a counter yet is summed from rows).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TypedDict

from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import (
    ApiKey,
    Budget,
    BudgetCounter,
    BudgetReservation,
    BudgetWarning,
    RateLimit,
    UsageRecord,
    User,
)
from accounts.periods import period_bounds

ZERO = Decimal(0)
COUNTED = (BudgetReservation.Status.HELD, BudgetReservation.Status.SETTLED)


def _user_id(user: User | int) -> int:
    return user if isinstance(user, int) else user.pk


def _applicable_q(user_id: int) -> Q:
    group_ids = User.groups.through.objects.filter(user_id=user_id).values("group_id")
    return Q(user_id=user_id) | Q(group_id__in=group_ids) | Q(user__isnull=True, group__isnull=True)


# The per-call reads below are plain SQL: they run twice per LLM call, and
# building them through the ORM cost more than running them. They stay
# portable (PostgreSQL and the embedded SQLite) and are covered by the tests.


def _applicable_sql(table: str, *, lock: bool = False) -> str:
    qn = connection.ops.quote_name
    memberships = qn(User.groups.through._meta.db_table)
    group = qn(Group._meta.db_table)
    return (
        f"SELECT t.*, g.{qn('name')} AS group_name FROM {qn(table)} t "  # noqa: S608 - quoted identifiers and %s only
        f"LEFT JOIN {group} g ON g.{qn('id')} = t.{qn('group_id')} "
        f"WHERE t.{qn('enabled')} = %s AND (t.{qn('user_id')} = %s "
        f"OR t.{qn('group_id')} IN (SELECT {qn('group_id')} FROM {memberships} "
        f"WHERE {qn('user_id')} = %s) "
        f"OR (t.{qn('user_id')} IS NULL AND t.{qn('group_id')} IS NULL)) "
        f"ORDER BY t.{qn('id')}"
    )


def budgets_applicable(*, user: User | int) -> list[Budget]:
    """Every enabled budget that binds ``user``: own, each group's, and defaults.

    All of them are enforced, so the tightest one decides. One query; each
    budget carries ``group_name`` (the group's name, or None).

    Returns:
        ``Budget`` rows ordered by id (the lock order used by ``budget_reserve``).
    """
    uid = _user_id(user)
    return list(Budget.objects.raw(_applicable_sql(Budget._meta.db_table), [True, uid, uid]))


def ratelimits_applicable(*, user: User | int) -> list[RateLimit]:
    """Every enabled rate limit that binds ``user`` (own, groups', defaults), by id. One query."""
    uid = _user_id(user)
    return list(RateLimit.objects.raw(_applicable_sql(RateLimit._meta.db_table), [True, uid, uid]))


CounterKey = tuple[int, int, datetime]  # (budget id, scope user id or 0, period start)


def budget_counter_key(*, budget: Budget, user_id: int, now: datetime) -> CounterKey:
    """The ``BudgetCounter`` key that ``user_id``'s spend at ``now`` counts under.

    A default budget counts each user alone (scope = the user's id); a user or
    group budget is one pool (scope 0). The period start is UTC.
    """
    scope = user_id if budget.user_id is None and budget.group_id is None else 0
    return budget.pk, scope, period_bounds(budget.period, now=now)[0]


def budget_counter_totals(
    *, keys: list[CounterKey]
) -> dict[CounterKey, tuple[Decimal, int, Decimal, int]]:
    """``{key: (spent_usd, spent_tokens, held_usd, held_tokens)}`` for each key.

    Reads the counters (one query); keys without a counter yet are summed
    from the reservation rows created since their period start (one more
    query, only then): what the counter starts from when it is created.
    """
    if not keys:
        return {}
    wanted = set(keys)
    found: dict[CounterKey, tuple[Decimal, int, Decimal, int]] = {}
    cond = Q()
    for budget_id, scope, start in wanted:
        cond |= Q(budget_id=budget_id, scope_user_id=scope, period_start=start)
    for row in BudgetCounter.objects.filter(cond).values_list(
        "budget_id",
        "scope_user_id",
        "period_start",
        "spent_usd",
        "spent_tokens",
        "held_usd",
        "held_tokens",
    ):
        key = (row[0], row[1], row[2])
        if key in wanted:
            found[key] = (row[3], row[4], row[5], row[6])
    missing = wanted - found.keys()
    if missing:
        found.update(_reservation_totals(keys=missing))
    return found


def _reservation_totals(
    *, keys: set[CounterKey]
) -> dict[CounterKey, tuple[Decimal, int, Decimal, int]]:
    totals = dict.fromkeys(keys, (ZERO, 0, ZERO, 0))
    pools: dict[tuple[int, datetime], set[int]] = defaultdict(set)  # scope 0: every user
    for budget_id, scope, start in keys:
        pools[(budget_id, start)].add(scope)
    cond = Q()
    for (budget_id, start), scopes in pools.items():
        q = Q(budget_id=budget_id, created_at__gte=start)
        if 0 not in scopes:
            q &= Q(user_id__in=scopes)
        cond |= q
    rows = (
        BudgetReservation.objects.filter(cond, status__in=COUNTED)
        .order_by()
        .values_list("budget_id", "user_id", "status")
        .annotate(cost=Sum("cost_usd"), tokens=Sum("tokens"))
    )
    starts = dict(pools.keys())  # one period start per budget
    for budget_id, user_id, status, cost, tokens in rows:
        start = starts[budget_id]
        scope = 0 if 0 in pools[(budget_id, start)] else user_id
        key = (budget_id, scope, start)
        if key not in totals:
            continue
        if cost is not None and not isinstance(cost, Decimal):
            cost = Decimal(str(cost))  # SQLite sums decimals as floats
        spent_usd, spent_tokens, held_usd, held_tokens = totals[key]
        if status == BudgetReservation.Status.HELD:
            held_usd, held_tokens = held_usd + (cost or ZERO), held_tokens + int(tokens or 0)
        else:
            spent_usd, spent_tokens = spent_usd + (cost or ZERO), spent_tokens + int(tokens or 0)
        totals[key] = (spent_usd, spent_tokens, held_usd, held_tokens)
    return totals


def budget_spent(
    *, budgets: list[Budget], user_id: int, now: datetime | None = None
) -> dict[int, tuple[Decimal, int]]:
    """Spend of each budget in its current period, as ``{budget_id: (usd, tokens)}``.

    Counts held and settled reservations. A default budget counts ``user_id``
    only; user and group budgets count every row charged to them. Reads the
    counters: one query (two when a period has no counter yet).
    """
    if not budgets:
        return {}
    now = now or timezone.now()
    keys = {b.pk: budget_counter_key(budget=b, user_id=user_id, now=now) for b in budgets}
    totals = budget_counter_totals(keys=list(keys.values()))
    out = {}
    for budget_id, key in keys.items():
        spent_usd, spent_tokens, held_usd, held_tokens = totals[key]
        out[budget_id] = (spent_usd + held_usd, spent_tokens + held_tokens)
    return out


@dataclass(frozen=True)
class BudgetStatus:
    """A budget with its spend in the current period (USD, tokens, UTC times)."""

    budget: Budget
    period_start: datetime
    resets_at: datetime | None
    spent_usd: Decimal
    spent_tokens: int

    @property
    def remaining_usd(self) -> Decimal | None:
        if self.budget.cost_limit_usd is None:
            return None
        return max(ZERO, self.budget.cost_limit_usd - self.spent_usd)

    @property
    def remaining_tokens(self) -> int | None:
        if self.budget.token_limit is None:
            return None
        return max(0, self.budget.token_limit - self.spent_tokens)

    @property
    def cost_fraction(self) -> float | None:
        limit = self.budget.cost_limit_usd
        if limit is None:
            return None
        if limit <= 0:
            return 1.0
        return float(self.spent_usd / limit)

    @property
    def token_fraction(self) -> float | None:
        limit = self.budget.token_limit
        if limit is None:
            return None
        if limit <= 0:
            return 1.0
        return self.spent_tokens / limit

    @property
    def fraction(self) -> float:
        """The larger share used of the two limits (0.0 - 1.0+)."""
        return max(f for f in (self.cost_fraction, self.token_fraction, 0.0) if f is not None)

    @property
    def percent(self) -> int:
        return min(100, round(self.fraction * 100))


def budget_statuses(*, user: User | int, now: datetime | None = None) -> list[BudgetStatus]:
    """Each applicable budget with its current-period spend, tightest first. Two queries."""
    now = now or timezone.now()
    uid = _user_id(user)
    budgets = budgets_applicable(user=uid)
    spent = budget_spent(budgets=budgets, user_id=uid, now=now)
    out = []
    for b in budgets:
        start, resets = period_bounds(b.period, now=now)
        cost, tokens = spent[b.pk]
        out.append(BudgetStatus(b, start, resets, cost, tokens))
    out.sort(key=lambda s: (-s.fraction, s.budget.pk))
    return out


def budget_tightest_cost_for_users(
    *, user_ids: list[int], now: datetime | None = None
) -> dict[int, BudgetStatus]:
    """For each user, the cost budget closest to its limit (for the admin list).

    Users without a cost budget are absent. A constant number of queries
    (memberships, budgets, counters, and one aggregate for periods without a
    counter yet) whatever the number of users.
    """
    if not user_ids:
        return {}
    now = now or timezone.now()
    memberships = defaultdict(set)
    for uid, gid in User.groups.through.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "group_id"
    ):
        memberships[uid].add(gid)
    all_groups = set().union(*memberships.values()) if memberships else set()
    budgets = list(
        Budget.objects.filter(
            Q(user_id__in=user_ids)
            | Q(group_id__in=all_groups)
            | Q(user__isnull=True, group__isnull=True),
            enabled=True,
            cost_limit_usd__isnull=False,
        ).order_by("id")
    )
    if not budgets:
        return {}
    keys = {
        (b.pk, uid): budget_counter_key(budget=b, user_id=uid, now=now)
        for uid in user_ids
        for b in budgets
        if b.user_id == uid or b.group_id in memberships[uid] or b.is_default
    }
    totals = budget_counter_totals(keys=list(set(keys.values())))
    result: dict[int, BudgetStatus] = {}
    for uid in user_ids:
        for b in budgets:
            key = keys.get((b.pk, uid))
            if key is None:
                continue
            spent_usd, _, held_usd, _ = totals[key]
            spent = spent_usd + held_usd
            start, resets = period_bounds(b.period, now=now)
            status = BudgetStatus(b, start, resets, spent, 0)
            best = result.get(uid)
            if best is None or (status.cost_fraction or 0) > (best.cost_fraction or 0):
                result[uid] = status
    return result


def budget_requires_prices(*, user: User | int) -> bool:
    """True when a cost limit applies to ``user``.

    The caller must then refuse a model whose prices are unknown rather than
    count its calls as $0. One query.
    """
    return Budget.objects.filter(
        _applicable_q(_user_id(user)), enabled=True, cost_limit_usd__isnull=False
    ).exists()


def budget_warnings_recent(*, user: User | int, limit: int = 10) -> list[BudgetWarning]:
    """The user's latest budget warnings, newest first."""
    return list(
        BudgetWarning.objects.filter(user_id=_user_id(user)).order_by("-created_at")[:limit]
    )


def usage_records_for(*, user: User | int) -> QuerySet[UsageRecord]:
    """The user's own ledger rows (never anyone else's)."""
    return UsageRecord.objects.filter(user_id=_user_id(user))


@dataclass(frozen=True)
class ConversationUsage:
    """What one conversation's model calls were charged, from the ledger: ``calls``,
    tokens (``prompt_tokens``, ``completion_tokens``, ``tokens`` their sum) and
    ``cost_usd`` (USD; a call of a model with no known price counts $0)."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_for_conversation(*, user: User | int, conversation_id: int) -> ConversationUsage:
    """The ledger's totals for ``conversation_id``, counting only ``user``'s own rows
    (never anyone else's). One query."""
    totals = UsageRecord.objects.filter(
        user_id=_user_id(user), conversation_id=conversation_id
    ).aggregate(
        calls=Count("id"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_usd"),
    )
    return ConversationUsage(
        calls=totals["calls"],
        prompt_tokens=totals["prompt"] or 0,
        completion_tokens=totals["completion"] or 0,
        cost_usd=totals["cost"] or Decimal(0),
    )


class ModelUsage(TypedDict):
    """One ``UsageSummary.per_model`` row: a model's spend in the period."""

    model: str
    cost: Decimal | None
    prompt: int | None
    completion: int | None
    calls: int
    tokens: int


class DayUsage(TypedDict):
    """One ``UsageSummary.per_day`` row: a day's spend (zero without use)."""

    day: date
    cost: Decimal
    tokens: int


@dataclass(frozen=True)
class UsageSummary:
    """Spend of one user in one period: totals, per model, per day (UTC)."""

    period: str
    start: datetime
    resets_at: datetime | None
    total_usd: Decimal
    total_tokens: int
    calls: int
    per_model: list[ModelUsage]
    per_day: list[DayUsage]


def usage_summary(*, user: User | int, period: str, now: datetime | None = None) -> UsageSummary:
    """Aggregate the user's ``UsageRecord`` rows in the current ``period``.

    Args:
        period: ``"daily"``, ``"weekly"`` or ``"monthly"`` (UTC).

    Returns:
        ``per_model`` rows ``{model, cost, tokens, calls}`` by cost descending,
        ``per_day`` rows ``{day: date, cost, tokens}`` for every day of the
        period up to today (days without use are zero). Three queries.
    """
    now = now or timezone.now()
    start, resets = period_bounds(period, now=now)
    qs = usage_records_for(user=user).filter(created_at__gte=start, created_at__lte=now)
    by_model = (
        qs.order_by()
        .values("model")
        .annotate(
            cost=Sum("cost_usd"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            calls=Count("id"),
        )
        .order_by("-cost", "model")
    )
    per_model = [
        ModelUsage(**row, tokens=(row["prompt"] or 0) + (row["completion"] or 0))
        for row in by_model
    ]
    by_day = {
        row["day"]: row
        for row in qs.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(
            cost=Sum("cost_usd"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
        )
    }
    per_day: list[DayUsage] = []
    day = start.date()
    while day <= now.date():
        row = by_day.get(day)
        per_day.append(
            {
                "day": day,
                "cost": (row["cost"] if row else None) or ZERO,
                "tokens": ((row["prompt"] or 0) + (row["completion"] or 0)) if row else 0,
            }
        )
        day += timedelta(days=1)
    return UsageSummary(
        period=period,
        start=start,
        resets_at=resets,
        total_usd=sum((r["cost"] or ZERO for r in per_model), ZERO),
        total_tokens=sum(r["tokens"] for r in per_model),
        calls=sum(r["calls"] for r in per_model),
        per_model=per_model,
        per_day=per_day,
    )


# --- API keys ------------------------------------------------------------------------


def api_keys_for_user(*, user: User | int) -> QuerySet[ApiKey]:
    """``user``'s API keys, newest first (revoked and expired ones too)."""
    return ApiKey.objects.filter(user_id=_user_id(user)).order_by("-created_at", "-id")
