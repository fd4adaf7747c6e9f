"""Budget counters: always the sum of their reservation rows; one statement per call."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

from accounts.models import BudgetCounter, BudgetReservation
from accounts.selectors import budget_spent
from accounts.services import (
    BudgetExceeded,
    budget_reservations_expire,
    llm_call_abort,
    llm_call_admit,
    llm_call_settle,
    usage_record,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

D = Decimal


def assert_counters_match_rows():
    """Every counter equals the sums of its held and settled rows."""
    counters = list(BudgetCounter.objects.all())
    assert counters
    for c in counters:
        rows = BudgetReservation.objects.filter(counter=c)
        held = rows.filter(status="held").aggregate(u=Sum("cost_usd"), t=Sum("tokens"))
        settled = rows.filter(status="settled").aggregate(u=Sum("cost_usd"), t=Sum("tokens"))
        assert (c.held_usd, c.held_tokens) == (held["u"] or 0, held["t"] or 0), c
        assert (c.spent_usd, c.spent_tokens) == (settled["u"] or 0, settled["t"] or 0), c
    assert not BudgetReservation.objects.filter(counter__isnull=True).exists()


def admit(user, cost, tokens=100, run_id=1):
    return llm_call_admit(
        user=user, run_id=run_id, estimated_cost_usd=D(cost), estimated_tokens=tokens
    )


def settle(admission, cost, prompt=60, completion=40):
    return llm_call_settle(
        admission=admission,
        conversation_id=1,
        model="m",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=D(cost),
        latency_ms=1,
    )


def test_counters_follow_hold_settle_release_expire_and_direct_charges(make_budget):
    alice, bob = UserFactory(), UserFactory()
    team = Group.objects.create(name="team")
    alice.groups.add(team)
    bob.groups.add(team)
    own = make_budget(user=alice, cost_limit_usd="10")
    pool = make_budget(group=team, token_limit=10_000, period="daily")
    default = make_budget(cost_limit_usd="5", period="weekly")

    first = admit(alice, "1.25")  # new period: counters created
    second = admit(alice, "0.50")  # counters exist: the one-statement path
    settle(first, "0.000123456789")
    llm_call_abort(admission=second)
    third = admit(bob, "2.00", tokens=500)
    BudgetReservation.objects.filter(pk__in=third.reservation_ids).update(
        created_at=datetime(2000, 1, 1, tzinfo=UTC)
    )
    assert budget_reservations_expire(older_than=timedelta(hours=1)) == 2
    settle(third, "0.40", prompt=300, completion=100)  # expired: charged directly
    usage_record(
        user=bob,
        conversation_id=None,
        run_id=None,
        model="m",
        prompt_tokens=5,
        completion_tokens=5,
        cost_usd=D("0.01"),
        latency_ms=1,
    )
    assert_counters_match_rows()
    # One counter per (budget, scope): the default budget counts each user alone.
    assert BudgetCounter.objects.filter(budget=own).count() == 1
    assert BudgetCounter.objects.filter(budget=pool, scope_user_id=0).count() == 1
    assert set(
        BudgetCounter.objects.filter(budget=default).values_list("scope_user_id", flat=True)
    ) == {alice.pk, bob.pk}
    assert budget_spent(budgets=[own, pool, default], user_id=alice.pk) == {
        own.pk: (D("0.000123456789"), 100),
        pool.pk: (D("0.410123456789"), 100 + 400 + 10),
        default.pk: (D("0.000123456789"), 100),
    }


@pytest.mark.django_db(transaction=True)  # no test transaction: no savepoint queries
def test_admit_and_settle_cost_the_same_queries_however_many_calls_came_before(user, make_budget):
    team = Group.objects.create(name="t")
    user.groups.add(team)
    make_budget(user=user, cost_limit_usd="10")
    make_budget(group=team, cost_limit_usd="10", period="daily")
    make_budget(token_limit=10**9, period="total")
    settle(admit(user, "0.10"), "0.05")  # creates the period's counters

    def counted() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as admitted:
            admission = admit(user, "0.10")
        with CaptureQueriesContext(connection) as settled:
            settle(admission, "0.05")
        return len(admitted), len(settled)

    first = counted()
    for _ in range(5):
        settle(admit(user, "0.01"), "0.01")
    # The check reads one counter row per budget, not the period's reservations.
    assert counted() == first
    assert_counters_match_rows()


def test_a_refusal_writes_nothing(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00")
    held = admit(user, "0.60")
    before = list(BudgetCounter.objects.values_list("held_usd", "spent_usd"))
    with pytest.raises(BudgetExceeded) as info:
        admit(user, "0.50")
    assert info.value.budget_id == budget.pk
    assert info.value.message.startswith("monthly budget of $1.00 reached ($0.60 used")
    assert list(BudgetCounter.objects.values_list("held_usd", "spent_usd")) == before
    assert BudgetReservation.objects.count() == 1
    settle(held, "0.30")
    admit(user, "0.70")  # the hold became 0.30 spent: 0.70 fits exactly
    assert_counters_match_rows()


def test_changing_a_budget_period_counts_the_rows_already_in_the_new_period(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00", period="monthly")
    with time_machine.travel(datetime(2026, 6, 10, 9, 0, tzinfo=UTC), tick=False):
        settle(admit(user, "0.50"), "0.50")
    with time_machine.travel(datetime(2026, 6, 20, 9, 0, tzinfo=UTC), tick=False):
        settle(admit(user, "0.30"), "0.30")
        budget.period = "daily"
        budget.save()
        # Today's 0.30 counts in the new daily period; the 10th's 0.50 does not.
        assert budget_spent(budgets=[budget], user_id=user.pk) == {budget.pk: (D("0.30"), 100)}
        admit(user, "0.70")
        with pytest.raises(BudgetExceeded, match=r"^daily budget of \$1.00 reached"):
            admit(user, "0.01")


def test_data_migration_builds_counters_from_existing_rows(make_budget):
    alice, bob = UserFactory(), UserFactory()
    team = Group.objects.create(name="team")
    alice.groups.add(team)
    make_budget(user=alice, cost_limit_usd="10")
    make_budget(group=team, cost_limit_usd="10", period="daily")
    make_budget(cost_limit_usd="10", period="total")
    settle(admit(alice, "1.00"), "0.25")
    admit(alice, "0.75")  # stays held
    settle(admit(bob, "0.40"), "0.10")
    expected = sorted(
        BudgetCounter.objects.values_list(
            "budget_id", "scope_user_id", "period_start", "spent_usd", "held_usd", "held_tokens"
        )
    )
    BudgetReservation.objects.update(counter=None)
    BudgetCounter.objects.all().delete()
    migration = importlib.import_module(
        "accounts.migrations.0004_budget_counters_from_reservations"
    )
    migration.build_counters(django_apps, None)
    assert (
        sorted(
            BudgetCounter.objects.values_list(
                "budget_id", "scope_user_id", "period_start", "spent_usd", "held_usd", "held_tokens"
            )
        )
        == expected
    )
    assert_counters_match_rows()
