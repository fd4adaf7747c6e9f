"""A/B evaluations run by a real Celery worker (PostgreSQL, Redis, the demo model):
the start is refused over budget before any call, and a started evaluation ends
with every output, its ledger rows and the summary table."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.models import UsageRecord
from audit.models import AuditEvent
from conversations.evaluations import EvaluationRefused, evaluation_start
from conversations.gateway import gateway_preload
from conversations.tasks import evaluation_run
from prompts.evaluations import evaluation_create, evaluation_mark, evaluation_results
from prompts.models import Evaluation, EvaluationOutput
from tests.conversations.test_worker import celery_worker_process  # noqa: F401 (a fixture)
from tests.factories import BudgetFactory, ModelConfigFactory, PromptFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def models(transactional_db):
    gateway_preload()
    prices = {"input_cost_per_token": Decimal("0.0001"), "output_cost_per_token": Decimal("0.0002")}
    return (
        ModelConfigFactory(name="Demo A", max_output_tokens=200, **prices),
        ModelConfigFactory(name="Demo B", max_output_tokens=200, **prices),
    )


def _evaluation(user, *, judge: bool) -> Evaluation:
    prompt = PromptFactory(owner=user, template="Tell {{ audience }} about owls.")
    scorer = PromptFactory(
        owner=user,
        template='Rate "{{ output }}" for {{ audience }}. Respond with JSON {"score": n}',
    )
    return evaluation_create(
        user=user, prompt_id=prompt.pk, version_a=1, version_b=1, model_a="Demo A",
        model_b="Demo B", dataset="audience\nchildren\nexperts\npoets\n",
        judge_prompt_id=scorer.pk if judge else None,
    )  # fmt: skip


def _wait(evaluation: Evaluation, worker, timeout: float = 60) -> Evaluation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evaluation.refresh_from_db()
        if evaluation.status in {Evaluation.Status.COMPLETED, Evaluation.Status.FAILED}:
            return evaluation
        assert worker.poll() is None, "worker died"
        time.sleep(0.2)
    raise AssertionError(f"evaluation {evaluation.pk} still {evaluation.status}")


def test_an_evaluation_over_budget_is_refused_before_any_call(
    celery_worker_process,  # noqa: F811
    user,
    models,
):
    BudgetFactory(user=user, cost_limit_usd=Decimal("0.10"))
    evaluation = _evaluation(user, judge=True)
    with pytest.raises(EvaluationRefused, match=r"may cost up to \$.* more than the \$0\.1000"):
        evaluation_start(user=user, evaluation_id=evaluation.pk)
    evaluation_run.delay(evaluation.pk)  # even a task sent by mistake makes no call
    time.sleep(3)
    evaluation.refresh_from_db()
    assert evaluation.status == Evaluation.Status.DRAFT
    assert not EvaluationOutput.objects.exists()
    assert not UsageRecord.objects.exists()
    assert AuditEvent.objects.filter(action="evaluation.refused").count() == 1


def test_a_worker_runs_the_evaluation_once_and_the_summary_table_follows(
    celery_worker_process,  # noqa: F811
    user,
    client,
    models,
):
    BudgetFactory(user=user, cost_limit_usd=Decimal("50"))
    evaluation = _evaluation(user, judge=True)
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    evaluation_run.delay(evaluation.pk)  # a duplicate delivery
    evaluation = _wait(evaluation, celery_worker_process)
    assert evaluation.status == Evaluation.Status.COMPLETED, evaluation.error
    assert (evaluation.calls_done, evaluation.calls_total) == (12, 12)
    outputs = EvaluationOutput.objects.all()
    assert outputs.count() == 6
    assert {(o.status, o.judge_score is not None) for o in outputs} == {("done", True)}
    assert UsageRecord.objects.filter(user=user).count() == 12  # each call charged once
    spent = sum((r.cost_usd for r in UsageRecord.objects.all()), Decimal(0))
    assert spent == sum(o.cost_usd + o.judge_cost_usd for o in outputs)
    assert spent <= evaluation.estimate_usd
    for action in ("evaluation.created", "evaluation.started", "evaluation.finished"):
        assert AuditEvent.objects.filter(action=action, target_id=str(evaluation.pk)).exists()
    for position, choice in ((1, "a"), (2, "a"), (3, "b")):
        evaluation_mark(user=user, evaluation_id=evaluation.pk, position=position, choice=choice)
    a, b = evaluation_results(user=user, evaluation_id=evaluation.pk).summary
    assert (a.win_percent, b.win_percent) == (67, 33)
    assert a.latency_p50_ms is not None and a.tokens > 0 and a.cost_usd > 0
    client.force_login(user)
    page = client.get(reverse("conversations:evaluation", args=[evaluation.pk])).content.decode()
    assert 'id="evaluation-summary"' in page
    assert "67% of 3" in page and "33% of 3" in page
    assert f"{a.judge_mean:.2f}" in page
