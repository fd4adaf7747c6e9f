"""Rate limits: hit and recovered, on the real Redis (and in memory for embedded mode)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import override_settings

from accounts.models import BudgetReservation
from accounts.services import (
    RateLimited,
    llm_call_admit,
    ratelimit_add_tokens,
    ratelimit_check,
)
from accounts.services.ratelimits import ratelimit_limiters
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def test_uses_redis_when_configured():
    assert settings.REDIS_URL.startswith("redis://")
    requests, _ = ratelimit_limiters()
    assert type(requests.storage).__name__ == "RedisStorage"
    assert requests.storage.check()


def test_requests_per_minute_hit_and_recovered(user, make_ratelimit):
    make_ratelimit(user=user, requests_per_minute=3)
    with time_machine.travel(T0, tick=False) as traveller:
        for _ in range(3):
            ratelimit_check(user=user)
        with pytest.raises(RateLimited) as info:
            ratelimit_check(user=user)
        assert info.value.message == (
            "rate limit of 3 requests per minute reached; try again in 60 s"
        )
        assert info.value.retry_after_seconds == pytest.approx(60, abs=0.01)
        traveller.shift(timedelta(seconds=45))
        with pytest.raises(RateLimited, match="try again in 15 s"):
            ratelimit_check(user=user)
        traveller.shift(timedelta(seconds=15, milliseconds=1))
        ratelimit_check(user=user)  # recovered: the first three left the window
        ratelimit_check(user=user)
        ratelimit_check(user=user)
        with pytest.raises(RateLimited):
            ratelimit_check(user=user)


def test_tokens_per_minute_on_redis(user, make_ratelimit):
    make_ratelimit(user=user, tokens_per_minute=1000)
    ratelimit_check(user=user, tokens=1000)  # an empty minute admits the full amount
    ratelimit_add_tokens(user=user, tokens=900)
    ratelimit_check(user=user, tokens=50)
    with pytest.raises(RateLimited) as info:
        ratelimit_check(user=user, tokens=200)
    assert info.value.message.startswith("rate limit of 1,000 tokens per minute reached; try")
    assert 0 < info.value.retry_after_seconds <= 120
    # Usage past the limit fills the window rather than being lost.
    ratelimit_add_tokens(user=user, tokens=5000)
    with pytest.raises(RateLimited):
        ratelimit_check(user=user, tokens=0)


@override_settings(REDIS_URL="")
def test_embedded_mode_counts_in_memory_and_recovers(user, make_ratelimit):
    requests, _ = ratelimit_limiters()
    assert type(requests.storage).__name__ == "MemoryStorage"
    make_ratelimit(user=user, requests_per_minute=2, tokens_per_minute=100)
    with time_machine.travel(T0 + timedelta(days=1), tick=False) as traveller:
        ratelimit_check(user=user, tokens=10)
        ratelimit_add_tokens(user=user, tokens=100)
        with pytest.raises(RateLimited, match="100 tokens per minute"):
            ratelimit_check(user=user, tokens=10)
        traveller.shift(timedelta(minutes=2, seconds=1))
        ratelimit_check(user=user, tokens=10)
        ratelimit_check(user=user, tokens=10)
        with pytest.raises(RateLimited, match="2 requests per minute"):
            ratelimit_check(user=user, tokens=10)


def test_group_limit_is_shared_and_default_is_per_user(make_ratelimit):
    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    team = Group.objects.create(name="team")
    alice.groups.add(team)
    bob.groups.add(team)
    make_ratelimit(group=team, requests_per_minute=2)
    make_ratelimit(requests_per_minute=5)  # default: each user alone
    with time_machine.travel(T0 + timedelta(days=2), tick=False):
        ratelimit_check(user=alice)
        ratelimit_check(user=bob)
        with pytest.raises(RateLimited, match="2 requests per minute"):
            ratelimit_check(user=alice)
        for _ in range(5):
            ratelimit_check(user=carol)
        with pytest.raises(RateLimited, match="5 requests per minute"):
            ratelimit_check(user=carol)


def test_disabled_limit_does_not_apply(user, make_ratelimit):
    make_ratelimit(user=user, requests_per_minute=1, enabled=False)
    for _ in range(3):
        ratelimit_check(user=user)


def test_admit_refused_by_rate_limit_holds_no_budget(user, make_ratelimit, make_budget):
    make_budget(user=user, cost_limit_usd="10")
    make_ratelimit(user=user, requests_per_minute=1)
    with time_machine.travel(T0 + timedelta(days=3), tick=False):
        llm_call_admit(user=user, run_id=1, estimated_cost_usd=Decimal("0.1"), estimated_tokens=10)
        with pytest.raises(RateLimited, match="1 request per minute reached"):
            llm_call_admit(
                user=user, run_id=2, estimated_cost_usd=Decimal("0.1"), estimated_tokens=10
            )
    assert BudgetReservation.objects.filter(user=user).count() == 1
