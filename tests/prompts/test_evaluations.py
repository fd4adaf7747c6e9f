"""A/B evaluations, the prompts side: the dataset's checks, the evaluation's creation
and marks, and the summary per variant (PostgreSQL)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from audit.models import AuditEvent
from prompts.errors import PromptError, PromptNotFound
from prompts.evaluations import (
    MAX_ROWS,
    dataset_columns,
    dataset_parse,
    evaluation_create,
    evaluation_mark,
    evaluation_results,
)
from prompts.models import Evaluation, EvaluationRow, PromptVersion
from tests.factories import (
    EvaluationFactory,
    EvaluationOutputFactory,
    EvaluationRowFactory,
    ModelConfigFactory,
    PromptFactory,
)

pytestmark = pytest.mark.django_db


def test_dataset_rows_keep_the_needed_columns_and_skip_blank_lines():
    text = "topic,tone,extra\nowls,dry,x\n\n bees , warm ,y\n"
    assert dataset_parse(text, columns=["topic", "tone"]) == [
        {"topic": "owls", "tone": "dry"},
        {"topic": "bees", "tone": "warm"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The dataset is empty"),
        ("   \n", "The dataset is empty"),
        ("topic\n", "has a header but no rows"),
        ("topic,subject\nowls,x\n", "no column tone"),
        ("topic,tone\nowls,\n", "Line 2: no value for tone."),
        ('topic,tone\n"owls,dry\n', "not valid CSV"),
    ],
)
def test_a_bad_dataset_is_refused_with_what_is_wrong(text, message):
    columns = ["topic"] if text.startswith("topic\n") else ["topic", "tone"]
    with pytest.raises(PromptError, match=message):
        dataset_parse(text, columns=columns)


def test_a_missing_column_is_named_with_the_header_expected():
    with pytest.raises(PromptError) as refused:
        dataset_parse("topic\nowls\n", columns=["topic", "tone", "length"])
    assert "no columns tone, length" in str(refused.value)
    assert "must name topic, tone, length" in str(refused.value)


def test_more_rows_than_the_limit_are_refused_naming_it():
    text = "topic\n" + "\n".join(f"t{i}" for i in range(MAX_ROWS + 1))
    with pytest.raises(PromptError, match=f"more than {MAX_ROWS} rows"):
        dataset_parse(text, columns=["topic"])
    assert len(dataset_parse(text.rsplit("\n", 1)[0], columns=["topic"])) == MAX_ROWS


def test_columns_are_both_versions_variables_and_a_system_prompts_input(user):
    prompt = PromptFactory(owner=user, kind="system", template="Be {{ tone }}.")
    second = PromptVersion.objects.create(
        prompt=prompt, number=2, template="Be {{ tone }} about {{ topic }}.",
        variables=["tone", "topic"],
    )  # fmt: skip
    assert dataset_columns(prompt=prompt, versions=[prompt.versions.get(number=1), second]) == [
        "tone",
        "topic",
        "input",
    ]


@pytest.fixture
def models(db):
    return ModelConfigFactory(name="Demo A"), ModelConfigFactory(name="Demo B")


def test_create_makes_the_rows_and_audits(user, models):
    prompt = PromptFactory(owner=user, template="Tell {{ audience }} about owls.")
    evaluation = evaluation_create(
        user=user, prompt_id=prompt.pk, version_a=1, version_b=1, model_a="Demo A",
        model_b="Demo B", dataset="audience\nchildren\nexperts\n",
    )  # fmt: skip
    assert evaluation.status == Evaluation.Status.DRAFT
    assert evaluation.calls_total == 4
    assert [r.values for r in evaluation.rows.order_by("position")] == [
        {"audience": "children"},
        {"audience": "experts"},
    ]
    event = AuditEvent.objects.get(action="evaluation.created")
    assert event.target_type == "evaluation" and event.target_id == str(evaluation.pk)
    assert event.data["rows"] == 2


def test_create_refuses_the_same_variant_twice_an_unknown_model_and_others_prompts(
    user, other_user, models
):
    prompt = PromptFactory(owner=user, template="Hi {{ audience }}")
    args = {"user": user, "prompt_id": prompt.pk, "version_a": 1, "version_b": 1,
            "dataset": "audience\nkids\n"}  # fmt: skip
    with pytest.raises(PromptError, match="two versions, or two models"):
        evaluation_create(**args, model_a="Demo A", model_b="Demo A")
    with pytest.raises(PromptError, match="available model"):
        evaluation_create(**args, model_a="Demo A", model_b="Nope")
    with pytest.raises(PromptError, match="has no version 7"):
        evaluation_create(**{**args, "version_b": 7}, model_a="Demo A", model_b="Demo B")
    secret = PromptFactory(owner=other_user, template="{{ audience }}")
    with pytest.raises(PromptNotFound):
        evaluation_create(**{**args, "prompt_id": secret.pk}, model_a="Demo A", model_b="Demo B")
    with pytest.raises(PromptError, match="judge prompt you can see"):
        evaluation_create(**args, model_a="Demo A", model_b="Demo B", judge_prompt_id=secret.pk)
    assert not Evaluation.objects.exists()


def test_summary_per_variant_win_rate_judge_tokens_cost_and_latency_p50(user):
    evaluation = EvaluationFactory(prompt=PromptFactory(owner=user))
    rows = [EvaluationRowFactory(evaluation=evaluation, position=n) for n in (1, 2, 3, 4)]
    for row, (lat_a, lat_b), preferred in zip(
        rows, [(10, 400), (30, 100), (20, 300), (1000, 200)], ["a", "a", "tie", ""], strict=True
    ):
        EvaluationOutputFactory(row=row, variant="a", latency_ms=lat_a, judge_score=8)
        EvaluationOutputFactory(
            row=row, variant="b", latency_ms=lat_b, judge_score=4, cost_usd=Decimal("0.01"),
            completion_tokens=50,
        )  # fmt: skip
        EvaluationRow.objects.filter(pk=row.pk).update(preferred=preferred)
    a, b = evaluation_results(user=user, evaluation_id=evaluation.pk).summary
    assert (a.win_rate, b.win_rate) == (pytest.approx(2.5 / 3), pytest.approx(0.5 / 3))
    assert (a.win_percent, b.win_percent, a.marked) == (83, 17, 3)
    assert (a.judge_mean, b.judge_mean) == (8, 4)
    assert (a.tokens, b.tokens) == (4 * 15, 4 * 60)
    assert (a.cost_usd, b.cost_usd) == (Decimal("0.004"), Decimal("0.04"))
    assert (a.latency_p50_ms, b.latency_p50_ms) == (25, 250)


def test_results_take_the_same_queries_for_more_rows(user, django_assert_num_queries):
    evaluation = EvaluationFactory(prompt=PromptFactory(owner=user))
    for n in range(1, 6):
        row = EvaluationRowFactory(evaluation=evaluation, position=n)
        EvaluationOutputFactory(row=row, variant="a")
        EvaluationOutputFactory(row=row, variant="b")
    with django_assert_num_queries(3):
        results = evaluation_results(user=user, evaluation_id=evaluation.pk)
        assert all(row.both_done for row in results.rows)


def test_marks_need_both_outputs_and_are_the_owners_only(user, other_user):
    evaluation = EvaluationFactory(prompt=PromptFactory(owner=user))
    row = EvaluationRowFactory(evaluation=evaluation, position=1)
    EvaluationOutputFactory(row=row, variant="a")
    with pytest.raises(PromptError, match="Both outputs"):
        evaluation_mark(user=user, evaluation_id=evaluation.pk, position=1, choice="a")
    EvaluationOutputFactory(row=row, variant="b")
    with pytest.raises(PromptNotFound):
        evaluation_mark(user=other_user, evaluation_id=evaluation.pk, position=1, choice="a")
    with pytest.raises(PromptError, match="Mark A, B"):
        evaluation_mark(user=user, evaluation_id=evaluation.pk, position=1, choice="c")
    evaluation_mark(user=user, evaluation_id=evaluation.pk, position=1, choice="b")
    row.refresh_from_db()
    assert row.preferred == "b"
    assert AuditEvent.objects.filter(action="evaluation.marked", data__preferred="b").exists()


def test_deleting_a_prompt_takes_its_evaluations_and_a_judges_leaves_them(user):
    from prompts.services import prompt_delete

    judge = PromptFactory(owner=user, template="{{ output }}")
    evaluation = EvaluationFactory(
        prompt=PromptFactory(owner=user), judge=judge.versions.get(number=1)
    )
    EvaluationOutputFactory(row=EvaluationRowFactory(evaluation=evaluation))
    prompt_delete(user=user, prompt_id=judge.pk)
    evaluation.refresh_from_db()
    assert evaluation.judge is None
    prompt_delete(user=user, prompt_id=evaluation.prompt_id)
    assert not Evaluation.objects.exists() and not EvaluationRow.objects.exists()


def test_admin_lists_and_shows_evaluations_read_only(client, admin_user, user):
    from django.urls import reverse

    evaluation = EvaluationFactory(prompt=PromptFactory(owner=user, name="Owl facts"))
    EvaluationOutputFactory(row=EvaluationRowFactory(evaluation=evaluation), text="Hoot hoot")
    client.force_login(admin_user)
    listed = client.get(reverse("admin:prompts_evaluation_changelist"))
    assert listed.status_code == 200 and "Owl facts" in listed.content.decode()
    page = client.get(reverse("admin:prompts_evaluation_change", args=[evaluation.pk]))
    assert page.status_code == 200 and "Hoot hoot" in page.content.decode()
    assert client.get(reverse("admin:prompts_evaluation_add")).status_code == 403
