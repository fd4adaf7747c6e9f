"""Period boundaries (UTC), travelling in time with time-machine."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from accounts.selectors import budget_spent
from accounts.services import BudgetExceeded, budget_reserve, usage_record

pytestmark = pytest.mark.django_db


def spend(user, cost, tokens=10):
    held = budget_reserve(user=user, cost_usd=cost, tokens=tokens)
    usage_record(
        user=user,
        conversation_id=None,
        run_id=None,
        model="m",
        prompt_tokens=tokens,
        completion_tokens=0,
        cost_usd=cost,
        latency_ms=1,
        reservations=[r.pk for r in held],
    )


@pytest.mark.parametrize(
    ("period", "last_second", "next_period", "resets"),
    [
        (
            "monthly",
            datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC),
            datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC),
            "resets on 2026-12-01 00:00 UTC",
        ),
        (
            "monthly",
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC),
            "resets on 2027-01-01 00:00 UTC",
        ),
        (
            "weekly",  # Sunday night to Monday morning (ISO week)
            datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 23, 0, 0, 0, tzinfo=UTC),
            "resets on 2026-11-23 00:00 UTC",
        ),
        (
            "daily",
            datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 3, 9, 0, 0, 1, tzinfo=UTC),
            "resets on 2026-03-09 00:00 UTC",
        ),
    ],
)
def test_spend_on_the_last_second_does_not_count_next_period(
    user, make_budget, period, last_second, next_period, resets
):
    budget = make_budget(user=user, cost_limit_usd="1.00", period=period)
    with time_machine.travel(last_second, tick=False):
        spend(user, Decimal("1.00"))
        with pytest.raises(BudgetExceeded) as info:
            budget_reserve(user=user, cost_usd=Decimal("0.01"), tokens=1)
        assert info.value.message == f"{period} budget of $1.00 reached; {resets}"
    with time_machine.travel(next_period, tick=False):
        assert budget_spent(budgets=[budget], user_id=user.pk) == {budget.pk: (Decimal(0), 0)}
        spend(user, Decimal("1.00"))
        with pytest.raises(BudgetExceeded):
            budget_reserve(user=user, cost_usd=Decimal("0.01"), tokens=1)


def test_reserved_before_midnight_settled_after_counts_in_the_old_period(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00", period="daily")
    with time_machine.travel(datetime(2026, 5, 1, 23, 59, 59, tzinfo=UTC), tick=False):
        held = budget_reserve(user=user, cost_usd=Decimal("0.80"), tokens=1)
    with time_machine.travel(datetime(2026, 5, 2, 0, 0, 2, tzinfo=UTC), tick=False):
        usage_record(
            user=user,
            conversation_id=None,
            run_id=None,
            model="m",
            prompt_tokens=1,
            completion_tokens=0,
            cost_usd=Decimal("0.70"),
            latency_ms=3000,
            reservations=[r.pk for r in held],
        )
        assert budget_spent(budgets=[budget], user_id=user.pk)[budget.pk] == (Decimal(0), 0)
        budget_reserve(user=user, cost_usd=Decimal("1.00"), tokens=1)


def test_total_budget_never_resets(user, make_budget):
    make_budget(user=user, token_limit=100, period="total")
    with time_machine.travel(datetime(2025, 1, 1, tzinfo=UTC), tick=False):
        spend(user, Decimal(0), tokens=100)
    with time_machine.travel(datetime(2030, 6, 1, tzinfo=UTC), tick=False):
        with pytest.raises(BudgetExceeded) as info:
            budget_reserve(user=user, cost_usd=Decimal(0), tokens=1)
        assert info.value.message == "total budget of 100 tokens reached; it does not reset"
