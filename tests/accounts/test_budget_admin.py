"""Admin: spend bar on the user list, inline budgets, validation, usage totals and CSV."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.models import Budget, RateLimit, UsageRecord
from accounts.services import usage_record
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def spend(user, cost, model="openai/gpt-4o-mini", prompt=100, completion=50):
    return usage_record(
        user=user,
        conversation_id=1,
        run_id=2,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=Decimal(cost),
        latency_ms=200,
    )


def test_user_list_shows_spend_against_tightest_cost_budget(
    admin_client, make_budget, django_assert_max_num_queries
):
    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    team = Group.objects.create(name="team")
    bob.groups.add(team)
    make_budget(user=alice, cost_limit_usd="10.00")
    make_budget(user=alice, cost_limit_usd="2.00", period="daily")  # the tightest for alice
    make_budget(group=team, cost_limit_usd="4.00")
    spend(alice, "1.50")
    spend(bob, "1.00")
    response = admin_client.get(reverse("admin:accounts_user_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Spend this period" in html
    assert 'value="75"' in html and "$1.50 / $2.00 daily" in html
    assert 'value="25"' in html and "$1.00 / $4.00 monthly" in html
    assert carol.email in html
    # The list does not query per row.
    for _ in range(10):
        spend(UserFactory(), "0.10")
    with django_assert_max_num_queries(12):
        assert admin_client.get(reverse("admin:accounts_user_changelist")).status_code == 200


def test_budget_inline_on_user_page_rejects_negative_limit(admin_client, user):
    url = reverse("admin:accounts_user_change", args=[user.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert "budgets-TOTAL_FORMS" in page.content.decode()
    data = {
        "email": user.email,
        "name": user.name,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00",
        "budgets-TOTAL_FORMS": "1",
        "budgets-INITIAL_FORMS": "0",
        "budgets-MIN_NUM_FORMS": "0",
        "budgets-MAX_NUM_FORMS": "1000",
        "budgets-0-period": "monthly",
        "budgets-0-cost_limit_usd": "-5",
        "budgets-0-token_limit": "",
        "budgets-0-warn_at_fraction": "0.8",
        "budgets-0-enabled": "on",
        "rate_limits-TOTAL_FORMS": "0",
        "rate_limits-INITIAL_FORMS": "0",
        "rate_limits-MIN_NUM_FORMS": "0",
        "rate_limits-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "The cost limit cannot be negative" in response.content.decode()
    assert not Budget.objects.exists()
    data["budgets-0-cost_limit_usd"] = "5"
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    budget = Budget.objects.get()
    assert (budget.user_id, budget.cost_limit_usd) == (user.pk, Decimal("5"))


def test_group_page_has_budget_and_rate_limit_inlines(admin_client):
    group = Group.objects.create(name="ops")
    url = reverse("admin:auth_group_change", args=[group.pk])
    html = admin_client.get(url).content.decode()
    assert "budgets-TOTAL_FORMS" in html and "rate_limits-TOTAL_FORMS" in html
    response = admin_client.post(
        url,
        {
            "name": "ops",
            "budgets-TOTAL_FORMS": "1",
            "budgets-INITIAL_FORMS": "0",
            "budgets-0-period": "weekly",
            "budgets-0-cost_limit_usd": "",
            "budgets-0-token_limit": "",
            "budgets-0-warn_at_fraction": "0.8",
            "budgets-0-enabled": "on",
            "rate_limits-TOTAL_FORMS": "1",
            "rate_limits-INITIAL_FORMS": "0",
            "rate_limits-0-requests_per_minute": "0",
            "rate_limits-0-tokens_per_minute": "",
            "rate_limits-0-enabled": "on",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Set a cost limit, a token limit, or both." in html
    assert "Requests per minute must be at least 1" in html
    assert not Budget.objects.exists() and not RateLimit.objects.exists()


def test_budget_admin_rejects_user_and_group_and_bad_fraction(admin_client, user):
    group = Group.objects.create(name="g")
    response = admin_client.post(
        reverse("admin:accounts_budget_add"),
        {
            "user": user.pk,
            "group": group.pk,
            "period": "monthly",
            "cost_limit_usd": "1",
            "warn_at_fraction": "1.5",
            "enabled": "on",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "not both" in html
    assert "at most 1" in html
    assert not Budget.objects.exists()


def test_ratelimit_admin_pages_render(admin_client, make_ratelimit):
    make_ratelimit(requests_per_minute=20)
    html = admin_client.get(reverse("admin:accounts_ratelimit_changelist")).content.decode()
    assert "20 rpm for everyone" in html
    assert admin_client.get(reverse("admin:accounts_ratelimit_add")).status_code == 200
    assert admin_client.get(reverse("admin:accounts_budget_changelist")).status_code == 200


def test_usage_records_filter_totals_and_csv(admin_client):
    alice, bob = UserFactory(), UserFactory()
    spend(alice, "0.000123456789", model="openai/gpt-4o-mini", prompt=100, completion=50)
    spend(alice, "0.5", model="=HYPERLINK(evil)", prompt=10, completion=5)
    spend(bob, "2", model="openai/gpt-4o-mini", prompt=1, completion=1)
    url = reverse("admin:accounts_usagerecord_changelist")
    html = admin_client.get(url).content.decode()
    assert 'id="usage-totals"' in html
    assert "3 calls" in html and "$2.500123" in html
    html = admin_client.get(url, {"user__id__exact": alice.pk}).content.decode()
    assert "2 calls" in html and "$0.500123" in html and "110 prompt tokens" in html
    html = admin_client.get(url, {"model": "openai/gpt-4o-mini"}).content.decode()
    assert "2 calls" in html and "$2.000123" in html
    html = admin_client.get(
        url,
        {
            "created_at__gte": "2000-01-01 00:00:00+00:00",
            "created_at__lt": "2000-01-02 00:00:00+00:00",
        },
    )
    assert "0 calls" in html.content.decode()
    # No add/change/delete on the ledger.
    assert admin_client.get(reverse("admin:accounts_usagerecord_add")).status_code == 403

    ids = list(UsageRecord.objects.filter(user=alice).values_list("pk", flat=True))
    response = admin_client.post(
        url, {"action": "export_csv", "_selected_action": [str(i) for i in ids]}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["id", "created_at", "user_email"]
    assert len(rows) == 3
    records = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    by_model = {r["model"]: r for r in records}
    assert by_model["openai/gpt-4o-mini"]["cost_usd"] == "0.000123456789"
    assert by_model["openai/gpt-4o-mini"]["user_email"] == alice.email
    assert (
        by_model["openai/gpt-4o-mini"]["run_id"],
        by_model["openai/gpt-4o-mini"]["evaluation_id"],
    ) == ("2", "")
    assert "'=HYPERLINK(evil)" in by_model  # a formula is defused
    assert all(r["user_email"] != bob.email for r in records)
