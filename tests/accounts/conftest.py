"""Fixtures for budget, usage and rate-limit tests."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings

from accounts.models import Budget, RateLimit


@pytest.fixture(autouse=True)
def _clean_ratelimit_keys():
    """Forget rate-limit counters of earlier runs (user ids repeat per test database)."""

    def clean():
        if settings.REDIS_URL:
            import redis

            client = redis.Redis.from_url(settings.REDIS_URL)
            keys = list(
                client.scan_iter(match=f"{settings.TOLLGATE_RATELIMIT_KEY_PREFIX}*", count=1000)
            )
            if keys:
                client.delete(*keys)
            client.close()

    clean()
    yield
    clean()


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
