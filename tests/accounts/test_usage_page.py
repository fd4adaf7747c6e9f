"""The usage page: own data only, charts, remaining budget, warnings."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse

from accounts.services import usage_record

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def spend(user, cost, model, when):
    with time_machine.travel(when, tick=False):
        return usage_record(
            user=user,
            conversation_id=1,
            run_id=1,
            model=model,
            prompt_tokens=100,
            completion_tokens=20,
            cost_usd=Decimal(cost),
            latency_ms=10,
        )


def test_usage_requires_login(client):
    response = client.get(reverse("accounts:usage"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_usage_page_shows_only_own_data(user_client, user, other_user, make_budget):
    make_budget(user=user, cost_limit_usd="5.00", warn_at_fraction=Decimal("0.5"))
    make_budget(user=other_user, cost_limit_usd="99.00")
    spend(user, "1.25", "openai/gpt-4o-mini", datetime(2026, 11, 3, 10, tzinfo=UTC))
    spend(user, "1.50", "anthropic/claude-3-5-haiku", datetime(2026, 11, 20, 9, tzinfo=UTC))
    spend(user, "0.40", "openai/gpt-4o-mini", datetime(2026, 10, 31, 23, 59, tzinfo=UTC))
    spend(other_user, "7.77", "secret/other-model", datetime(2026, 11, 20, 9, tzinfo=UTC))
    with time_machine.travel(NOW, tick=False):
        response = user_client.get(reverse("accounts:usage"))
    assert response.status_code == 200
    html = response.content.decode()
    # This month only: 1.25 + 1.50 (October's 0.40 is not counted).
    assert "<strong>$2.7500</strong>" in html
    assert "2 calls" in html
    assert 'id="chart-per-day"' in html and 'id="chart-per-model"' in html
    assert html.count("<rect ") == 20 + 2  # 20 days of November so far, 2 models
    assert "anthropic/claude-3-5-haiku" in html and "openai/gpt-4o-mini" in html
    assert "03 Nov: $1.2500" in html
    # Remaining budget and the warning crossed at 50 %.
    assert "$2.2500" in html  # 5.00 - 2.75 left
    assert "resets" in html.lower() and "2026-12-01 00:00 UTC" in html
    assert "You have used 55% of your monthly budget of $5.00" in html
    # Nothing of the other user's.
    assert "secret/other-model" not in html
    assert "7.77" not in html and "$99.00" not in html


def test_usage_page_period_choice_and_bad_value(user_client, user):
    spend(user, "0.10", "m1", datetime(2026, 11, 16, 1, tzinfo=UTC))  # Monday
    spend(user, "0.20", "m1", datetime(2026, 11, 20, 1, tzinfo=UTC))
    with time_machine.travel(NOW, tick=False):
        daily = user_client.get(reverse("accounts:usage"), {"period": "daily"}).content.decode()
        weekly = user_client.get(reverse("accounts:usage"), {"period": "weekly"}).content.decode()
        bad = user_client.get(reverse("accounts:usage"), {"period": "<script>"})
    assert "<strong>$0.2000</strong>" in daily
    assert "<strong>$0.3000</strong>" in weekly
    assert bad.status_code == 200
    assert "<strong>This month</strong>" in bad.content.decode()
    assert "<script>" not in bad.content.decode()


def test_nav_has_usage_link(user_client):
    html = user_client.get(reverse("home")).content.decode()
    assert f'href="{reverse("accounts:usage")}"' in html


def test_usage_page_query_count_does_not_grow(
    user_client, user, make_budget, django_assert_max_num_queries
):
    make_budget(user=user, cost_limit_usd="5.00")
    for i in range(15):
        spend(user, "0.01", f"model-{i}", datetime(2026, 11, 1 + i, 1, tzinfo=UTC))
    with time_machine.travel(NOW, tick=False), django_assert_max_num_queries(10):
        assert user_client.get(reverse("accounts:usage")).status_code == 200
