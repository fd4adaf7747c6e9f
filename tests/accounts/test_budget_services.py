"""Budget reservations, settlement and the usage ledger on PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from accounts.models import BudgetReservation, BudgetWarning, UsageRecord
from accounts.selectors import budget_spent, budget_statuses
from accounts.services import (
    BudgetExceeded,
    budget_release,
    budget_requires_prices,
    budget_reserve,
    budgets_applicable,
    usage_record,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

D = Decimal


def record(user, cost, *, reservations=None, prompt=10, completion=5, model="openai/gpt-4o-mini"):
    return usage_record(
        user=user,
        conversation_id=7,
        run_id=11,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        latency_ms=321,
        reservations=reservations,
    )


def test_no_budget_reserves_nothing(user):
    assert budget_reserve(user=user, cost_usd=D("100"), tokens=10**6) == []


def test_reserve_holds_then_refuses_with_message(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="5.00")
    held = budget_reserve(user=user, cost_usd=D("3.00"), tokens=100, run_id=42)
    assert [(r.budget_id, r.status, r.cost_usd, r.run_id) for r in held] == [
        (budget.pk, "held", D("3.00"), 42)
    ]
    with pytest.raises(BudgetExceeded) as info:
        budget_reserve(user=user, cost_usd=D("2.50"), tokens=100)
    exc = info.value
    assert exc.budget_id == budget.pk
    assert exc.message.startswith("monthly budget of $5.00 reached ($3.00 used")
    assert exc.resets_at is not None
    assert exc.message.endswith(f"resets on {exc.resets_at:%Y-%m-%d} 00:00 UTC")
    assert exc.resets_at.day == 1
    # The refused call held nothing.
    assert BudgetReservation.objects.count() == 1
    # Exactly up to the limit passes.
    budget_reserve(user=user, cost_usd=D("2.00"), tokens=100)
    with pytest.raises(BudgetExceeded, match=r"^monthly budget of \$5.00 reached; resets on"):
        budget_reserve(user=user, cost_usd=D("0"), tokens=0)


def test_zero_budget_refuses_even_a_free_call(user, make_budget):
    make_budget(user=user, cost_limit_usd="0.00", period="daily")
    with pytest.raises(BudgetExceeded, match=r"^daily budget of \$0.00 reached; resets on"):
        budget_reserve(user=user, cost_usd=D(0), tokens=0)


def test_token_limit(user, make_budget):
    make_budget(user=user, token_limit=1000, period="total")
    budget_reserve(user=user, cost_usd=D(0), tokens=600)
    with pytest.raises(BudgetExceeded) as info:
        budget_reserve(user=user, cost_usd=D(0), tokens=500)
    assert info.value.message == (
        "total budget of 1,000 tokens reached (600 tokens used, this call needs up to "
        "500 tokens); it does not reset"
    )
    assert info.value.resets_at is None


def test_release_frees_the_hold(user, make_budget):
    make_budget(user=user, cost_limit_usd="1.00")
    held = budget_reserve(user=user, cost_usd=D("1.00"), tokens=1)
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, cost_usd=D("0.01"), tokens=1)
    assert budget_release(reservation_ids=[r.pk for r in held]) == 1
    assert budget_release(reservation_ids=[r.pk for r in held]) == 0
    budget_reserve(user=user, cost_usd=D("1.00"), tokens=1)


def test_settle_replaces_estimate_with_actual_exact_decimal(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00")
    held = budget_reserve(user=user, cost_usd=D("0.90"), tokens=5000)
    # A real litellm figure for 1234 prompt + 567 completion tokens of gpt-4o-mini:
    # 1234 * 0.00000015 + 567 * 0.0000006 = 0.0005253
    rec = record(user, D("0.000525300000"), reservations=[r.pk for r in held])
    rec.refresh_from_db()
    assert rec.cost_usd == D("0.0005253")
    assert str(rec.cost_usd) == "0.000525300000"
    assert (rec.conversation_id, rec.run_id, rec.latency_ms) == (7, 11, 321)
    r = BudgetReservation.objects.get(pk=held[0].pk)
    assert (r.status, r.cost_usd, r.tokens, r.usage_id) == ("settled", D("0.0005253"), 15, rec.pk)
    assert r.settled_at is not None
    assert budget_spent(budgets=[budget], user_id=user.pk) == {budget.pk: (D("0.0005253"), 15)}
    # The estimate no longer counts: most of the dollar is free again.
    budget_reserve(user=user, cost_usd=D("0.99"), tokens=1)


def test_usage_record_takes_a_float_cost_through_its_repr(user):
    rec = record(user, 1.5e-05)
    rec.refresh_from_db()
    assert rec.cost_usd == D("0.000015")


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"cost_usd": D("-1")}, "cannot be negative"),
        ({"cost_usd": "abc"}, "number of US dollars"),
        ({"cost_usd": D("NaN")}, "finite"),
        ({"prompt_tokens": -1}, "cannot be negative"),
        ({"completion_tokens": 1.5}, "whole number"),
        ({"model": ""}, "model"),
    ],
)
def test_usage_record_rejects_bad_input(user, kwargs, text):
    args = {
        "user": user,
        "conversation_id": None,
        "run_id": None,
        "model": "m",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cost_usd": D(0),
        "latency_ms": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=text):
        usage_record(**args)
    assert UsageRecord.objects.count() == 0


def test_usage_without_reservation_still_counts(user, make_budget):
    budget = make_budget(user=user, cost_limit_usd="1.00")
    record(user, D("0.75"))
    assert budget_spent(budgets=[budget], user_id=user.pk)[budget.pk] == (D("0.75"), 15)
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, cost_usd=D("0.30"), tokens=1)


def test_group_and_user_budgets_combined_tightest_wins_each_charged(make_budget):
    alice, bob = UserFactory(), UserFactory()
    team = Group.objects.create(name="Research")
    alice.groups.add(team)
    bob.groups.add(team)
    own = make_budget(user=alice, cost_limit_usd="10.00")
    shared = make_budget(group=team, cost_limit_usd="3.00")
    default = make_budget(cost_limit_usd="2.00", period="daily")
    assert [b.pk for b in budgets_applicable(user=alice)] == [own.pk, shared.pk, default.pk]
    assert [b.pk for b in budgets_applicable(user=bob)] == [shared.pk, default.pk]

    held = budget_reserve(user=alice, cost_usd=D("1.50"), tokens=10)
    assert sorted(r.budget_id for r in held) == [own.pk, shared.pk, default.pk]
    record(alice, D("1.50"), reservations=[r.pk for r in held])
    # The default counts each user alone: alice has 0.50 left there; the
    # group pool has 1.50 left for both.
    with pytest.raises(BudgetExceeded) as info:
        budget_reserve(user=alice, cost_usd=D("0.60"), tokens=10)
    assert info.value.budget_id == default.pk
    assert info.value.message.startswith("daily budget of $2.00 reached")
    budget_reserve(user=bob, cost_usd=D("1.50"), tokens=10)  # group pool now full
    with pytest.raises(BudgetExceeded) as info:
        budget_reserve(user=alice, cost_usd=D("0.01"), tokens=10)
    assert info.value.budget_id == shared.pk
    assert info.value.message.startswith("monthly budget of $3.00 reached")
    statuses = {s.budget.pk: s for s in budget_statuses(user=alice)}
    assert statuses[own.pk].spent_usd == D("1.50")
    assert statuses[shared.pk].spent_usd == D("3.00")
    assert statuses[shared.pk].remaining_usd == D(0)
    assert statuses[default.pk].spent_usd == D("1.50")


def test_disabled_budget_does_not_apply(user, make_budget):
    make_budget(user=user, cost_limit_usd="0", enabled=False)
    assert budgets_applicable(user=user) == []
    budget_reserve(user=user, cost_usd=D(1), tokens=1)


def test_budget_requires_prices(user, make_budget):
    team = Group.objects.create(name="t")
    assert budget_requires_prices(user=user) is False
    make_budget(user=user, token_limit=100)
    assert budget_requires_prices(user=user) is False  # a token budget needs no prices
    group_budget = make_budget(group=team, cost_limit_usd="1")
    assert budget_requires_prices(user=user) is False  # not a member
    user.groups.add(team)
    assert budget_requires_prices(user=user) is True
    group_budget.enabled = False
    group_budget.save()
    assert budget_requires_prices(user=user) is False
    make_budget(cost_limit_usd="5")  # a default cost budget binds everyone
    assert budget_requires_prices(user=user) is True


def test_warning_stored_once_per_period_and_pushed_on_commit(
    user, make_budget, django_capture_on_commit_callbacks
):
    from tests.listening import GroupListener

    with GroupListener(f"user.{user.pk}") as listener:
        budget = make_budget(user=user, cost_limit_usd="1.00", warn_at_fraction=D("0.5"))
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            record(user, D("0.40"))
        assert callbacks == []
        assert BudgetWarning.objects.count() == 0
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            record(user, D("0.20"))
        assert len(callbacks) == 1
        warning = BudgetWarning.objects.get()
        assert warning.budget_id == budget.pk
        assert warning.message.startswith("You have used 60% of your monthly budget of $1.00")
        message = listener.receive()
        assert message["type"] == "html.push"
        assert f'id="budget-warning-{warning.pk}"' in message["html"]
        assert 'hx-swap-oob="afterbegin:#notifications"' in message["html"]
        assert "You have used 60%" in message["html"]
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            record(user, D("0.20"))
        assert callbacks == []
        assert BudgetWarning.objects.count() == 1


def test_group_warning_reaches_each_member_once(make_budget):
    alice, bob = UserFactory(), UserFactory()
    team = Group.objects.create(name="Ops")
    alice.groups.add(team)
    bob.groups.add(team)
    make_budget(group=team, token_limit=100, warn_at_fraction=D("0.8"))
    record(alice, D(0), prompt=50, completion=35)
    assert list(BudgetWarning.objects.values_list("user_id", flat=True)) == [alice.pk]
    assert "the group Ops's monthly budget of 100 tokens" in BudgetWarning.objects.get().message
    record(bob, D(0), prompt=1, completion=0)
    record(alice, D(0), prompt=1, completion=0)
    assert sorted(BudgetWarning.objects.values_list("user_id", flat=True)) == sorted(
        [alice.pk, bob.pk]
    )
