"""Fixtures for budget, usage and rate-limit tests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import Budget, RateLimit


@pytest.fixture
def make_budget(db):
    def make(**kwargs) -> Budget:
        kwargs.setdefault("period", Budget.Period.MONTHLY)
        if "cost_limit_usd" in kwargs and kwargs["cost_limit_usd"] is not None:
            kwargs["cost_limit_usd"] = Decimal(kwargs["cost_limit_usd"])
        budget = Budget(**kwargs)
        budget.full_clean()
        budget.save()
        return budget

    return make


@pytest.fixture
def make_ratelimit(db):
    def make(**kwargs) -> RateLimit:
        limit = RateLimit(**kwargs)
        limit.full_clean()
        limit.save()
        return limit

    return make
