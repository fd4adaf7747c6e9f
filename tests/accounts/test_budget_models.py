"""Budget and rate-limit validation: model clean(), DB constraints, periods."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import Budget, RateLimit
from accounts.periods import EPOCH, format_reset, period_bounds

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"cost_limit_usd": Decimal("-1")}, "cost_limit_usd", "cannot be negative"),
        ({"token_limit": -5}, "token_limit", "cannot be negative"),
        ({}, "cost_limit_usd", "Set a cost limit, a token limit, or both"),
        (
            {"cost_limit_usd": Decimal(1), "warn_at_fraction": Decimal(0)},
            "warn_at_fraction",
            "above 0",
        ),
        (
            {"cost_limit_usd": Decimal(1), "warn_at_fraction": Decimal("1.5")},
            "warn_at_fraction",
            "at most 1",
        ),
    ],
)
def test_budget_clean_rejects_nonsense(fields, field, text):
    budget = Budget(period="monthly", **fields)
    with pytest.raises(ValidationError) as info:
        budget.full_clean()
    assert any(text in m for m in info.value.message_dict[field])


def test_budget_clean_rejects_user_and_group(user):
    group = Group.objects.create(name="g")
    budget = Budget(user=user, group=group, cost_limit_usd=Decimal(1))
    with pytest.raises(ValidationError) as info:
        budget.full_clean()
    assert "not both" in info.value.message_dict["group"][0]


def test_budget_zero_limit_and_default_are_valid():
    Budget(cost_limit_usd=Decimal("0.00")).full_clean()
    Budget(token_limit=0, period="total").full_clean()


@pytest.mark.parametrize(
    "fields",
    [
        {"cost_limit_usd": Decimal("-0.01")},
        {"token_limit": -1},
        {},
        {"cost_limit_usd": Decimal(1), "warn_at_fraction": Decimal("1.2")},
        {"cost_limit_usd": Decimal(1), "period": "yearly"},
    ],
)
def test_budget_db_constraints(fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(**fields)


def test_budget_db_constraint_user_xor_group(user):
    group = Group.objects.create(name="g")
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(user=user, group=group, cost_limit_usd=1)


def test_ratelimit_validation():
    with pytest.raises(ValidationError) as info:
        RateLimit().full_clean()
    assert "requests per minute" in str(info.value.message_dict["requests_per_minute"])
    with pytest.raises(ValidationError) as info:
        RateLimit(requests_per_minute=0).full_clean()
    assert "at least 1" in str(info.value.message_dict["requests_per_minute"])
    RateLimit(tokens_per_minute=1000).full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        RateLimit.objects.create(requests_per_minute=0, tokens_per_minute=None)


def test_period_bounds_utc():
    now = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period_bounds("daily", now=now) == (
        datetime(2026, 11, 18, tzinfo=UTC),
        datetime(2026, 11, 19, tzinfo=UTC),
    )
    assert period_bounds("weekly", now=now) == (
        datetime(2026, 11, 16, tzinfo=UTC),
        datetime(2026, 11, 23, tzinfo=UTC),
    )
    assert period_bounds("monthly", now=now) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert period_bounds("monthly", now=datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))[1] == (
        datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert period_bounds("total", now=now) == (EPOCH, None)
    assert format_reset(datetime(2026, 12, 1, tzinfo=UTC)) == "resets on 2026-12-01 00:00 UTC"
    with pytest.raises(ValueError, match="unknown budget period"):
        period_bounds("yearly", now=now)
    with pytest.raises(ValueError, match="aware"):
        period_bounds("daily", now=datetime(2026, 1, 1))  # noqa: DTZ001
