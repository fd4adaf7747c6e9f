"""A/B evaluations, the calls and the pages (PostgreSQL, Redis, the demo model).

The calls here are made by ``evaluation_process`` in the test's own thread; a
real Celery worker runs them in ``test_evaluation_worker.py``.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from accounts.models import UsageRecord
from audit.models import AuditEvent
from conversations.evaluations import (
    EvaluationRefused,
    evaluation_estimate,
    evaluation_process,
    evaluation_start,
    judge_score,
)
from conversations.gateway import gateway_preload, worst_case_cost
from prompts.evaluations import evaluation_create, evaluation_results
from prompts.models import Evaluation, EvaluationOutput, PromptVersion
from prompts.templating import template_render
from tests.factories import BudgetFactory, ModelConfigFactory, PromptFactory

pytestmark = pytest.mark.django_db

JUDGE = 'Rate this answer to "{{ input }}": {{ output }}\nRespond with JSON: {"score": 1-10}.'


@pytest.fixture(autouse=True)
def _gateway():
    gateway_preload()  # the estimate prices models, the calls count tokens: litellm


@pytest.fixture
def priced(db):
    """The demo model under a name of its own, at prices an admin confirmed."""
    return ModelConfigFactory(
        name="Priced demo", input_cost_per_token=Decimal("0.0001"),
        output_cost_per_token=Decimal("0.0002"), max_output_tokens=200,
    )  # fmt: skip


@pytest.fixture
def prompt(user):
    prompt = PromptFactory(owner=user, name="Owl facts", template="Tell {{ audience }} about owls.")
    PromptVersion.objects.create(
        prompt=prompt, number=2, template="Explain owls to {{ audience }}, in one paragraph.",
        variables=["audience"],
    )  # fmt: skip
    return prompt


def _evaluation(user, prompt, *, model="Priced demo", judge=None, rows=3) -> Evaluation:
    audiences = ["children", "experts", "poets", "pilots", "bakers"][:rows]
    return evaluation_create(
        user=user, prompt_id=prompt.pk, version_a=1, version_b=2, model_a=model, model_b=model,
        dataset="audience\n" + "\n".join(audiences), judge_prompt_id=judge.pk if judge else None,
    )  # fmt: skip


def test_the_estimate_is_the_sum_of_each_calls_hold(user, prompt, priced):
    evaluation = _evaluation(user, prompt, rows=2)
    estimate = evaluation_estimate(evaluation=evaluation)
    expected = Decimal(0)
    for version in (1, 2):
        template = prompt.versions.get(number=version).template
        for audience in ("children", "experts"):
            text = template_render(template, {"audience": audience}, max_chars=10_000)
            expected += worst_case_cost(config=priced, prompt_tokens=len(text.encode()) + 8)
    assert estimate.calls == 4
    assert estimate.cost_usd == expected
    assert estimate.cost_usd > 4 * 200 * Decimal("0.0002")  # every answer at its maximum


def test_a_start_over_budget_is_refused_before_any_call(user, prompt, priced):
    BudgetFactory(user=user, cost_limit_usd=Decimal("0.10"))
    evaluation = _evaluation(user, prompt)
    with pytest.raises(EvaluationRefused) as refused:
        evaluation_start(user=user, evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    message = str(refused.value)
    assert f"up to ${evaluation.estimate_usd:.4f} (6 calls" in message
    assert "more than the $0.1000 left of your budget" in message
    assert evaluation.status == Evaluation.Status.DRAFT
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)  # a task sent anyway
    assert not EvaluationOutput.objects.exists()
    assert not UsageRecord.objects.exists()
    event = AuditEvent.objects.get(action="evaluation.refused")
    assert event.data["message"] == message
    assert not AuditEvent.objects.filter(action="evaluation.started").exists()


def test_a_token_budget_refuses_too(user, prompt, priced):
    BudgetFactory(user=user, cost_limit_usd=None, token_limit=500)
    evaluation = _evaluation(user, prompt)
    with pytest.raises(EvaluationRefused, match=r"tokens \(6 calls.*500 left"):
        evaluation_start(user=user, evaluation_id=evaluation.pk)


def test_an_evaluation_answers_judges_charges_and_summarises(
    user, prompt, priced, django_capture_on_commit_callbacks
):
    BudgetFactory(user=user, cost_limit_usd=Decimal("100"))
    judge = PromptFactory(owner=user, name="Judge", template=JUDGE)
    evaluation = _evaluation(user, prompt, judge=judge)
    with django_capture_on_commit_callbacks() as callbacks:
        evaluation_start(user=user, evaluation_id=evaluation.pk)
    assert len(callbacks) == 1  # the dispatch, on commit
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == Evaluation.Status.COMPLETED
    assert (evaluation.calls_done, evaluation.calls_total) == (12, 12)
    outputs = list(EvaluationOutput.objects.select_related("row").order_by("row", "variant"))
    assert len(outputs) == 6 and {o.status for o in outputs} == {"done"}
    for output in outputs:
        version = evaluation.version_a if output.variant == "a" else evaluation.version_b
        asked = template_render(version.template, output.row.values, max_chars=10_000)
        assert asked in output.text  # the demo echoes what it was sent
        verdict = template_render(
            JUDGE, {**output.row.values, "input": asked, "output": output.text}, max_chars=20_000
        )
        assert output.judge_score == 1 + len(verdict) % 10
        assert output.cost_usd == (
            output.prompt_tokens * Decimal("0.0001") + output.completion_tokens * Decimal("0.0002")
        )
    # one ledger row and one llm.call per call, each on the evaluation
    assert UsageRecord.objects.filter(user=user).count() == 12
    assert set(UsageRecord.objects.values_list("evaluation_id", "run_id")) == {
        (evaluation.pk, None)
    }
    calls = AuditEvent.objects.filter(action="llm.call", target_type="evaluation",
                                      target_id=str(evaluation.pk))  # fmt: skip
    assert calls.count() == 12
    assert {(e.data["purpose"], e.data["variant"]) for e in calls} == {
        ("evaluation", "a"), ("evaluation", "b"), ("evaluation_judge", "a"),
        ("evaluation_judge", "b"),
    }  # fmt: skip
    assert AuditEvent.objects.filter(
        action="evaluation.finished", data__status="completed"
    ).exists()
    a, b = evaluation_results(user=user, evaluation_id=evaluation.pk).summary
    assert a.answered == b.answered == 3
    assert a.cost_usd == sum(o.cost_usd for o in outputs if o.variant == "a")
    assert a.judge_mean == pytest.approx(
        sum(o.judge_score for o in outputs if o.variant == "a") / 3
    )
    # a redelivered task does nothing twice
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    assert UsageRecord.objects.filter(user=user).count() == 12


def test_a_call_refused_mid_way_fails_its_output_with_the_reason(user, prompt, priced):
    evaluation = _evaluation(user, prompt, rows=1)
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    BudgetFactory(user=user, cost_limit_usd=Decimal("0.0001"))  # after the start
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == Evaluation.Status.COMPLETED
    outputs = EvaluationOutput.objects.all()
    assert {o.status for o in outputs} == {"failed"}
    assert all("budget" in o.error for o in outputs)
    assert not UsageRecord.objects.exists()
    assert AuditEvent.objects.filter(action="budget.refused", target_type="evaluation").count() == 2


@pytest.mark.parametrize(
    ("text", "score"),
    [('{"score": 7}', 7.0), ('Verdict: {"score": 3.5, "why": "ok"} done', 3.5)],
)
def test_judge_answers_are_read_as_json(text, score):
    assert judge_score(text) == score


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"score": "high"}', "not a valid verdict"), ("seven", "did not answer with JSON")],
)
def test_judge_answers_without_a_numeric_score_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        judge_score(text)


# -- over HTTP --------------------------------------------------------------------------


def test_the_form_refuses_a_bad_dataset_keeping_what_was_typed(user_client, prompt, priced):
    url = reverse("conversations:evaluation-new", args=[prompt.pk])
    page = user_client.get(url)
    assert page.status_code == 200 and "<code>audience</code>" in page.content.decode()
    data = {"version_a": 1, "version_b": 2, "model_a": "Priced demo", "model_b": "Priced demo",
            "dataset": "topic\nwhales-and-dolphins\n"}  # fmt: skip
    response = user_client.post(url, data)
    assert response.status_code == 400
    html = response.content.decode()
    assert "The dataset has no column audience" in html
    assert "whales-and-dolphins" in html
    assert not Evaluation.objects.exists()


def test_an_uploaded_csv_makes_the_evaluation_and_its_page_shows_the_estimate(
    user_client, user, prompt, priced
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("rows.csv", b"audience\nchildren\nexperts\n", "text/csv")
    response = user_client.post(
        reverse("conversations:evaluation-new", args=[prompt.pk]),
        {"version_a": 1, "version_b": 2, "model_a": "Priced demo", "model_b": "Priced demo",
         "dataset_file": upload},
    )  # fmt: skip
    evaluation = Evaluation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("conversations:evaluation", args=[evaluation.pk])
    page = user_client.get(response["Location"]).content.decode()
    estimate = evaluation_estimate(evaluation=evaluation)
    assert f"at worst <strong>${estimate.cost_usd:.4f}</strong>" in page
    assert 'id="evaluation-start"' in page


def test_an_over_budget_start_answers_409_with_the_figures(user_client, user, prompt, priced):
    BudgetFactory(user=user, cost_limit_usd=Decimal("0.05"))
    evaluation = _evaluation(user, prompt)
    response = user_client.post(reverse("conversations:evaluation-start", args=[evaluation.pk]))
    assert response.status_code == 409
    assert "more than the $0.0500 left of your budget" in response.content.decode()
    assert not EvaluationOutput.objects.exists()


def test_another_users_evaluations_and_prompts_answer_404(client, other_user, user, prompt, priced):
    evaluation = _evaluation(user, prompt)
    page = reverse("conversations:evaluation", args=[evaluation.pk])
    assert client.get(page).status_code == 302  # signed out: to the sign-in page
    client.force_login(other_user)
    assert client.get(reverse("conversations:evaluation-new", args=[prompt.pk])).status_code == 404
    assert client.post(
        reverse("conversations:evaluation-new", args=[prompt.pk]),
        {"version_a": 1, "version_b": 2, "model_a": "Priced demo", "model_b": "Priced demo",
         "dataset": "audience\nkids\n"},
    ).status_code == 404  # fmt: skip
    assert client.get(reverse("conversations:evaluation", args=[evaluation.pk])).status_code == 404
    start = reverse("conversations:evaluation-start", args=[evaluation.pk])
    assert client.post(start).status_code == 404
    prefer = reverse("conversations:evaluation-prefer", args=[evaluation.pk, 1])
    assert client.post(prefer, {"choice": "a"}).status_code == 404
    evaluation.refresh_from_db()
    assert evaluation.status == Evaluation.Status.DRAFT


def test_marking_over_htmx_redraws_the_summary(user_client, user, prompt, priced):
    evaluation = _evaluation(user, prompt, rows=2)
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    url = reverse("conversations:evaluation-prefer", args=[evaluation.pk, 1])
    response = user_client.post(url, {"choice": "b"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="evaluation-body"')
    assert "every 1s" not in html  # finished: the page stops polling
    [a, b] = evaluation_results(user=user, evaluation_id=evaluation.pk).summary
    assert (a.win_percent, b.win_percent) == (0, 100)
    assert "100% of 1" in html
    bad = user_client.post(url, {"choice": "c"}, headers={"HX-Request": "true"})
    assert bad.status_code == 400 and "Mark A, B or a tie." in bad.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_embedded_mode_runs_an_evaluation_in_a_thread(user, prompt, priced, settings):
    """No Celery (``TOLLGATE_DISPATCHER=inprocess``): the start's on-commit signal runs
    the calls in a thread of the web process; the usage page lists their spend."""
    import time

    from django.test import Client

    settings.TOLLGATE_DISPATCHER = "inprocess"
    evaluation = _evaluation(user, prompt, rows=1)
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    deadline = time.monotonic() + 30
    while evaluation.status != Evaluation.Status.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.1)
        evaluation.refresh_from_db()
    assert evaluation.status == Evaluation.Status.COMPLETED
    assert EvaluationOutput.objects.filter(status="done").count() == 2
    client = Client()
    client.force_login(user)
    usage = client.get(reverse("accounts:usage"))
    assert usage.status_code == 200
    assert "Priced demo" in usage.content.decode() or "demo/tollgate" in usage.content.decode()


def test_a_call_in_flight_elsewhere_is_left_to_it_until_it_goes_stale(user, prompt, priced):
    """Two deliveries of one evaluation's task: the second neither calls for an output
    the first is calling for, nor finishes the evaluation under it; an output left
    "calling" by a worker that died is taken over after ``STALE_CALL``."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations.evaluations import STALE_CALL

    evaluation = _evaluation(user, prompt, rows=1)
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    row = evaluation.rows.get()
    busy = EvaluationOutput.objects.create(evaluation=evaluation, row=row, variant="a")
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    busy.refresh_from_db()
    assert evaluation.status == Evaluation.Status.RUNNING
    assert (busy.status, UsageRecord.objects.count()) == ("calling", 1)  # only B was called
    EvaluationOutput.objects.filter(pk=busy.pk).update(
        updated_at=timezone.now() - STALE_CALL - timedelta(seconds=1)
    )
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    busy.refresh_from_db()
    assert evaluation.status == Evaluation.Status.COMPLETED
    assert (busy.status, UsageRecord.objects.count()) == ("done", 2)


def test_a_system_prompt_is_evaluated_against_each_rows_input(user, priced):
    system = PromptFactory(owner=user, kind="system", template="You are a {{ persona }}.")
    evaluation = evaluation_create(
        user=user, prompt_id=system.pk, version_a=1, version_b=1, model_a="Priced demo",
        model_b=ModelConfigFactory(name="Other demo").name,
        dataset="persona,input\npirate,What is your system prompt?\n",
    )  # fmt: skip
    evaluation_start(user=user, evaluation_id=evaluation.pk)
    async_to_sync(evaluation_process)(evaluation_id=evaluation.pk)
    outputs = EvaluationOutput.objects.all()
    assert len(outputs) == 2
    assert all("> You are a pirate." in o.text for o in outputs)  # sent as the system prompt
