"""``/metrics`` (``conversations.metrics``): refused without its token or an allowed
address; the families counted from a run's loop events, refusals and pending approvals."""

from __future__ import annotations

import pytest
from django.urls import reverse
from prometheus_client import REGISTRY

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from conversations.models import Run
from tests.conversations.conftest import drive, send
from tests.conversations.test_loopevents import _deliver
from tests.factories import BudgetFactory
from tools.models import Note
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

FAMILIES = (
    "tollgate_runs_total",
    "tollgate_ttft_seconds",
    "tollgate_step_seconds",
    "tollgate_llm_tokens_total",
    "tollgate_llm_cost_usd_total",
    "tollgate_provider_errors_total",
    "tollgate_tool_seconds",
    "tollgate_approval_decision_seconds",
    "tollgate_refusals_total",
    "tollgate_approvals_pending",
)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def token(settings):
    settings.TOLLGATE_METRICS_TOKEN = "s3cret-scrape-token"
    settings.TOLLGATE_METRICS_ALLOWED_IPS = []
    return settings.TOLLGATE_METRICS_TOKEN


def test_metrics_are_refused_without_the_token_and_shown_with_it(client, token, settings):
    url = reverse("metrics")
    assert client.get(url).status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Basic {token}").status_code == 403
    page = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/plain")
    text = page.content.decode()
    for family in ("tollgate_runs", "tollgate_approvals_pending", "tollgate_refusals"):
        assert f"# TYPE {family}" in text
    # An address allowed by network; the test client comes from 127.0.0.1.
    settings.TOLLGATE_METRICS_ALLOWED_IPS = ["127.0.0.0/8"]
    assert client.get(url).status_code == 200
    settings.TOLLGATE_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "not an address"]
    assert client.get(url).status_code == 403
    settings.TOLLGATE_METRICS_TOKEN = ""
    assert client.get(url, HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_a_runs_loop_events_are_counted(
    conversation, client, token, django_capture_on_commit_callbacks
):
    tools_sync()
    model = conversation.model_config.name
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday")
    before = {
        "completed": _value("tollgate_runs_total", outcome="completed"),
        "steps": _value("tollgate_step_seconds_count", model=model),
        "ttft": _value("tollgate_ttft_seconds_count", model=model),
        "input": _value("tollgate_llm_tokens_total", model=model, direction="input"),
        "tool": _value("tollgate_tool_seconds_count", tool="notes.delete", status="succeeded"),
        "decided": _value("tollgate_approval_decision_seconds_count", decision="approved"),
    }
    with django_capture_on_commit_callbacks() as callbacks:
        run = drive(send(conversation, "forget the meeting"))
        approval = ApprovalRequest.objects.get(run_id=run.pk)
        pending = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {token}")
        assert "tollgate_approvals_pending 1.0" in pending.content.decode()
        approval_decide(
            approval_id=approval.pk,
            actor=conversation.owner,
            approve=True,
            arguments_hash=approval.arguments_hash,
        )
        run = drive(run)
        assert run.status == Run.Status.COMPLETED
    _deliver(callbacks)
    assert _value("tollgate_runs_total", outcome="completed") == before["completed"] + 1
    assert _value("tollgate_step_seconds_count", model=model) == before["steps"] + 2
    assert _value("tollgate_ttft_seconds_count", model=model) >= before["ttft"] + 1
    assert _value("tollgate_llm_tokens_total", model=model, direction="input") > before["input"]
    assert (
        _value("tollgate_tool_seconds_count", tool="notes.delete", status="succeeded")
        == before["tool"] + 1
    )
    assert (
        _value("tollgate_approval_decision_seconds_count", decision="approved")
        == before["decided"] + 1
    )
    text = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {token}").content.decode()
    for family in FAMILIES:
        assert f"# HELP {family.removesuffix('_total')}" in text or f"# HELP {family}" in text
    assert "tollgate_approvals_pending 0.0" in text


def test_a_call_refused_by_a_budget_is_counted(conversation):
    BudgetFactory(user=conversation.owner, cost_limit_usd=0)
    before = _value("tollgate_refusals_total", reason="budget")
    run = drive(send(conversation, "hello"))
    assert run.status == Run.Status.FAILED
    assert _value("tollgate_refusals_total", reason="budget") == before + 1


def test_the_grafana_dashboard_reads_only_families_that_metrics_serves(client, token):
    import json
    import re

    from tests.topology import ROOT

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for expr in exprs
        for name in re.findall(r"tollgate_[a-z_]+", expr)
    }
    served = client.get(reverse("metrics"), HTTP_AUTHORIZATION=f"Bearer {token}")
    families = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for name in re.findall(r"^# TYPE (tollgate_[a-z_]+) ", served.content.decode(), re.M)
    }
    assert used and used <= families, used - families
    assert len(dashboard["panels"]) == len(FAMILIES)
