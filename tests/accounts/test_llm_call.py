"""The engine's entry points: admit, settle, abort."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import BudgetReservation, UsageRecord
from accounts.services import (
    Admission,
    BudgetExceeded,
    llm_call_abort,
    llm_call_admit,
    llm_call_settle,
)

pytestmark = pytest.mark.django_db


def test_admit_settle_records_usage_and_settles(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="2.00")
    admission = llm_call_admit(
        user=user, run_id=5, estimated_cost_usd=Decimal("1.50"), estimated_tokens=3000
    )
    assert isinstance(admission, Admission)
    assert admission.user_id == user.pk
    assert len(admission.reservation_ids) == 1
    # While the worst case is held, a second worst case does not fit.
    with pytest.raises(BudgetExceeded):
        llm_call_admit(
            user=user, run_id=6, estimated_cost_usd=Decimal("1.50"), estimated_tokens=3000
        )
    rec = llm_call_settle(
        admission=admission,
        conversation_id=9,
        model="openai/gpt-4o-mini",
        prompt_tokens=1000,
        completion_tokens=200,
        cost_usd=Decimal("0.00027"),
        latency_ms=850,
    )
    assert isinstance(rec, UsageRecord)
    assert (rec.user_id, rec.run_id, rec.conversation_id, rec.model) == (
        user.pk,
        5,
        9,
        "openai/gpt-4o-mini",
    )
    res = BudgetReservation.objects.get(pk=admission.reservation_ids[0])
    assert (res.budget_id, res.status, res.cost_usd, res.tokens) == (
        budget.pk,
        "settled",
        Decimal("0.00027"),
        1200,
    )
    llm_call_admit(user=user, run_id=6, estimated_cost_usd=Decimal("1.50"), estimated_tokens=3000)


def test_abort_releases(user, make_budget):
    make_budget(user=user, cost_limit_usd="1.00")
    admission = llm_call_admit(
        user=user, run_id=1, estimated_cost_usd=Decimal("1.00"), estimated_tokens=1
    )
    assert llm_call_abort(admission=admission) == 1
    assert BudgetReservation.objects.get().status == "released"
    assert UsageRecord.objects.count() == 0
    llm_call_admit(user=user, run_id=2, estimated_cost_usd=Decimal("1.00"), estimated_tokens=1)


def test_admit_rejects_negative_estimate(user):
    with pytest.raises(ValueError, match="estimated_cost_usd cannot be negative"):
        llm_call_admit(user=user, run_id=1, estimated_cost_usd=Decimal(-1), estimated_tokens=1)
    with pytest.raises(ValueError, match="tokens cannot be negative"):
        llm_call_admit(user=user, run_id=1, estimated_cost_usd=Decimal(1), estimated_tokens=-1)


def test_expired_hold_is_released_and_late_usage_still_counts(user, make_budget):
    from datetime import timedelta

    from accounts.selectors import budget_spent
    from accounts.services import budget_reservations_expire

    budget = make_budget(user=user, cost_limit_usd="1.00")
    admission = llm_call_admit(
        user=user, run_id=1, estimated_cost_usd=Decimal("0.90"), estimated_tokens=1
    )
    BudgetReservation.objects.update(
        created_at=BudgetReservation.objects.get().created_at - timedelta(hours=2)
    )
    assert budget_reservations_expire(older_than=timedelta(hours=1)) == 1
    llm_call_settle(
        admission=admission,
        conversation_id=None,
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd=Decimal("0.40"),
        latency_ms=1,
    )
    assert budget_spent(budgets=[budget], user_id=user.pk)[budget.pk] == (Decimal("0.40"), 2)


def _call(user, estimate, actual, tokens=10):
    admission = llm_call_admit(
        user=user, run_id=1, estimated_cost_usd=Decimal(estimate), estimated_tokens=tokens
    )
    return llm_call_settle(
        admission=admission,
        conversation_id=None,
        model="m",
        prompt_tokens=tokens,
        completion_tokens=0,
        cost_usd=Decimal(actual),
        latency_ms=1,
    )


def test_settle_warns_at_threshold_including_actual_above_estimate(user, make_budget):
    from accounts.models import BudgetWarning

    make_budget(user=user, cost_limit_usd="1.00", warn_at_fraction=Decimal("0.8"))
    _call(user, "0.30", "0.30")
    _call(user, "0.30", "0.30")
    assert not BudgetWarning.objects.exists()
    # The estimate was too low: the actual cost crosses 80 % anyway.
    _call(user, "0.05", "0.25")
    warning = BudgetWarning.objects.get()
    assert warning.message.startswith("You have used 85% of your monthly budget of $1.00")
    _call(user, "0.05", "0.05")
    assert BudgetWarning.objects.count() == 1
