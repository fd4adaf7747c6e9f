"""Admin (issue 22, defect 12): one section per name on the index, no Celery beat
schedules where beat does not run, users' notes not written by admins, and every
admin change to budgets, rate limits, model configs and tools audited."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.models import Budget, RateLimit
from audit.models import AuditEvent
from conversations.models import ModelConfig
from tests.factories import UserFactory
from tools.models import Note, Tool

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def _changes(name: str) -> list[dict]:
    return [
        event.data
        for event in AuditEvent.objects.filter(action=f"{name}.changed").order_by("sequence")
    ]


def test_the_admin_index_names_each_section_once(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    sections = re.findall(r'<caption>\s*<a [^>]*class="section"[^>]*>([^<]+)</a>', html)
    assert sections, html[:2000]
    assert len(sections) == len(set(sections)), sections
    assert "Users, budgets and usage" in sections
    assert "Sign-in email addresses" in sections


def _beat_registered(env: dict[str, str]) -> str:
    code = (
        "from django.contrib import admin; from django_celery_beat.models import PeriodicTask;"
        " print(admin.site.is_registered(PeriodicTask))"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_celery_beat_schedules_are_shown_only_where_beat_runs(tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    base.update(TOLLGATE_DATA_DIR=str(tmp_path), SECRET_KEY="x" * 50)
    assert _beat_registered(base) == "False"  # embedded: in-process, no beat
    with_celery = {**base, "TOLLGATE_DISPATCHER": "celery"}
    assert _beat_registered(with_celery) == "True"


def test_admins_may_read_and_delete_users_notes_but_not_write_them(admin_client, user):
    note = Note.objects.create(user=user, key="diary", value="private")
    assert admin_client.get(reverse("admin:tools_note_add")).status_code == 403
    response = admin_client.post(
        reverse("admin:tools_note_add"), {"user": user.pk, "key": "x", "value": "planted"}
    )
    assert response.status_code == 403
    change = reverse("admin:tools_note_change", args=[note.pk])
    page = admin_client.get(change)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    admin_client.post(change, {"user": user.pk, "key": "diary", "value": "edited"})
    note.refresh_from_db()
    assert note.value == "private"
    admin_client.post(reverse("admin:tools_note_delete", args=[note.pk]), {"post": "yes"})
    assert not Note.objects.exists()


BUDGET = {
    "period": "monthly",
    "cost_limit_usd": "5.00",
    "token_limit": "",
    "warn_at_fraction": "0.8",
    "enabled": "on",
}


def test_adding_changing_and_deleting_a_budget_is_audited(admin_client, admin_user, user):
    response = admin_client.post(reverse("admin:accounts_budget_add"), {"user": user.pk, **BUDGET})
    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get()
    [created] = _changes("budget")
    assert created["operation"] == "created"
    assert created["after"]["cost_limit_usd"] == "5.0000"
    assert created["after"]["user_id"] == user.pk
    event = AuditEvent.objects.get(action="budget.changed")
    assert (event.actor_id, event.target_id) == (admin_user.pk, str(budget.pk))

    change = reverse("admin:accounts_budget_change", args=[budget.pk])
    admin_client.post(change, {"user": user.pk, **BUDGET, "cost_limit_usd": "7.50"})
    updated = _changes("budget")[-1]
    assert updated["operation"] == "updated"
    assert updated["diff"] == {"cost_limit_usd": ["5.0000", "7.5000"]}

    admin_client.post(reverse("admin:accounts_budget_delete", args=[budget.pk]), {"post": "yes"})
    deleted = _changes("budget")[-1]
    assert deleted["operation"] == "deleted" and deleted["before"]["cost_limit_usd"] == "7.5000"
    assert AuditEvent.objects.filter(action="budget.changed").last().target_id == str(budget.pk)


def test_budgets_and_rate_limits_edited_inline_are_audited(admin_client):
    group = Group.objects.create(name="ops")
    url = reverse("admin:auth_group_change", args=[group.pk])
    response = admin_client.post(
        url,
        {
            "name": "ops",
            "budgets-TOTAL_FORMS": "1",
            "budgets-INITIAL_FORMS": "0",
            **{f"budgets-0-{key}": value for key, value in BUDGET.items()},
            "rate_limits-TOTAL_FORMS": "1",
            "rate_limits-INITIAL_FORMS": "0",
            "rate_limits-0-requests_per_minute": "10",
            "rate_limits-0-tokens_per_minute": "",
            "rate_limits-0-enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    budget, limit = Budget.objects.get(), RateLimit.objects.get()
    [created] = _changes("budget")
    assert created["operation"] == "created" and created["after"]["group_id"] == group.pk
    assert _changes("rate_limit")[0]["after"]["requests_per_minute"] == 10

    response = admin_client.post(
        url,
        {
            "name": "ops",
            "budgets-TOTAL_FORMS": "1",
            "budgets-INITIAL_FORMS": "1",
            "budgets-0-id": budget.pk,
            "budgets-0-group": group.pk,
            **{f"budgets-0-{key}": value for key, value in BUDGET.items()},
            "budgets-0-cost_limit_usd": "9.00",
            "rate_limits-TOTAL_FORMS": "1",
            "rate_limits-INITIAL_FORMS": "1",
            "rate_limits-0-id": limit.pk,
            "rate_limits-0-group": group.pk,
            "rate_limits-0-requests_per_minute": "10",
            "rate_limits-0-enabled": "on",
            "rate_limits-0-DELETE": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert _changes("budget")[-1]["diff"] == {"cost_limit_usd": ["5.0000", "9.0000"]}
    removed = _changes("rate_limit")[-1]
    assert removed["operation"] == "deleted" and removed["before"]["requests_per_minute"] == 10
    assert AuditEvent.objects.filter(action="rate_limit.changed").last().target_id == str(limit.pk)


def test_adding_a_model_config_is_audited(admin_client):
    response = admin_client.post(
        reverse("admin:conversations_modelconfig_add"),
        {
            "name": "GPT mini",
            "litellm_model": "openai/gpt-4o-mini",
            "enabled": "on",
            "supports_tools": "on",
            "api_base": "",
            "api_key_env": "OPENAI_API_KEY",
            "context_window": "128000",
            "max_output_tokens": "1024",
            "input_cost_per_token": "",
            "output_cost_per_token": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    config = ModelConfig.objects.get(name="GPT mini")
    [created] = _changes("model_config")
    assert created["operation"] == "created"
    assert created["after"]["api_key_env"] == "OPENAI_API_KEY"
    assert AuditEvent.objects.get(action="model_config.changed").target_id == str(config.pk)


def test_deleting_a_tool_row_is_audited(admin_client):
    tool = Tool.objects.create(name="zz.gone", description="an old tool")
    admin_client.post(reverse("admin:tools_tool_delete", args=[tool.pk]), {"post": "yes"})
    assert not Tool.objects.filter(name="zz.gone").exists()
    [deleted] = _changes("tool")
    assert deleted["operation"] == "deleted" and deleted["before"]["name"] == "zz.gone"


def test_a_user_with_budgets_inline_keeps_working(admin_client):
    someone = UserFactory()
    page = admin_client.get(reverse("admin:accounts_user_change", args=[someone.pk]))
    assert page.status_code == 200
