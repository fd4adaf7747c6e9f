"""Holds taken when a tool call is approved: once per run for its next model call,
released when that call is admitted or when they grow old."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.models import BudgetCounter, BudgetReservation
from accounts.services import (
    BudgetExceeded,
    budget_hold_approved,
    budget_release_approved,
    budget_reservations_expire,
    llm_call_admit,
)
from tests.accounts.test_budget_counters import assert_counters_match_rows

pytestmark = pytest.mark.django_db

D = Decimal
RUN = 41


def hold(user, *, tool="0", call="0.30", tokens=1_500, run_id=RUN):
    return budget_hold_approved(
        user=user,
        run_id=run_id,
        cost_usd=D(tool),
        next_call_cost_usd=D(call),
        next_call_tokens=tokens,
    )


def held(**filters) -> tuple[Decimal, int]:
    counter = BudgetCounter.objects.get(**filters)
    return counter.held_usd, counter.held_tokens


def test_the_next_model_call_is_held_once_per_run_and_each_tools_cost_on_top(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="10", token_limit=100_000)
    first = hold(user, tool="0.05")
    assert [(r.kind, r.status, r.cost_usd, r.tokens) for r in first] == [
        ("approval", "held", D("0.35"), 1_500)
    ]
    # A second approval of the same turn: its tool only, the model call is held already.
    second = hold(user, tool="0.02")
    assert [(r.cost_usd, r.tokens) for r in second] == [(D("0.02"), 0)]
    assert hold(user) == []  # nothing more to hold: no row, no check
    assert held(budget=budget) == (D("0.37"), 1_500)
    other_run = hold(user, run_id=RUN + 1)  # another run's next call is another call
    assert [(r.cost_usd, r.tokens) for r in other_run] == [(D("0.30"), 1_500)]
    assert_counters_match_rows()


def test_admitting_the_call_releases_the_runs_approval_holds_only(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00")
    hold(user, tool="0.10", call="0.50")
    hold(user, run_id=RUN + 1, call="0.20")
    # Without the release the run's call would count twice: 0.60 + 0.20 + 0.50 > 1.00.
    assert budget_release_approved(run_id=RUN) == 1
    admission = llm_call_admit(
        user=user, run_id=RUN, estimated_cost_usd=D("0.50"), estimated_tokens=1_500
    )
    assert held(budget=budget) == (D("0.70"), 3_000)
    rows = BudgetReservation.objects.filter(run_id=RUN).order_by("id")
    assert [(r.kind, r.status) for r in rows] == [("approval", "released"), ("call", "held")]
    assert budget_release_approved(run_id=RUN) == 0  # the call's own hold is not touched
    assert list(admission.reservation_ids) == [rows[1].pk]
    assert BudgetReservation.objects.get(run_id=RUN + 1).status == "held"
    assert_counters_match_rows()


def test_a_hold_that_would_pass_a_budget_is_refused_and_writes_nothing(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00")
    hold(user, run_id=RUN + 1, call="0.80")
    before = held(budget=budget)
    with pytest.raises(BudgetExceeded) as info:
        hold(user, tool="0.05", call="0.30")
    assert info.value.budget_id == budget.pk
    assert "monthly budget of $1.00 reached ($0.80 used" in info.value.message
    assert held(budget=budget) == before
    assert not BudgetReservation.objects.filter(run_id=RUN).exists()


def test_token_budgets_hold_the_calls_tokens_even_without_a_price(user, make_budget):
    make_budget(user=user, token_limit=1_000, cost_limit_usd=None)
    with pytest.raises(BudgetExceeded, match="1,000 tokens"):
        hold(user, call="0", tokens=1_500)
    assert [r.tokens for r in hold(user, call="0", tokens=900)] == [900]


def test_old_approval_holds_expire_like_any_hold(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="10")
    rows = hold(user, tool="0.05")
    BudgetReservation.objects.filter(pk__in=[r.pk for r in rows]).update(
        created_at=datetime(2000, 1, 1, tzinfo=UTC)
    )
    assert budget_reservations_expire(older_than=timedelta(hours=1)) == 1
    assert held(budget=budget) == (D(0), 0)
    assert_counters_match_rows()


def test_without_a_budget_nothing_is_held(user):
    assert hold(user, tool="0.05") == []
    assert budget_release_approved(run_id=RUN) == 0
    assert not BudgetReservation.objects.exists()
