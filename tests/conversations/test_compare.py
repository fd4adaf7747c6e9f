"""Compare mode (issue 24): one message answered by several models, then a summary;
the conversation goes on with the one answer picked. Steps driven in this process
(``drive``); ``test_compare_worker.py`` runs them on a real Celery worker."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from conversations import compare, selectors, services
from conversations.engine import history_messages, history_with_ids
from conversations.models import Message, ModelConfig, Run
from tests.conversations.conftest import drive, send
from tests.factories import ModelConfigFactory

pytestmark = pytest.mark.django_db

S = Run.Status


def demo_models(count: int = 3) -> list[ModelConfig]:
    """The demo model under ``count`` names."""
    return [ModelConfigFactory(name=f"Demo {chr(65 + i)}") for i in range(count)]


def failing_model() -> ModelConfig:
    """A model whose provider fails at once, every time: litellm knows no such provider."""
    return ModelConfigFactory(name="Broken", litellm_model="nosuchprovider/model")


def compare_send(conversation, content: str, models: list[ModelConfig]) -> Run:
    return services.message_send(
        user=conversation.owner,
        conversation_id=conversation.pk,
        content=content,
        compare_model_ids=[m.pk for m in models],
    )


def parts_of(run: Run) -> list[Run]:
    return list(run.parts.order_by("position"))


def answer_of(run: Run) -> Message:
    return Message.objects.filter(run=run, role=Message.Role.ASSISTANT).latest("id")


def finish(orchestrator: Run) -> Run:
    """Drive every part, tell the compare run (as ``run_part_ended`` does on commit),
    then drive its summary."""
    for part in parts_of(orchestrator):
        drive(part)
    compare.compare_advance(orchestrator_id=orchestrator.pk)
    orchestrator.refresh_from_db()
    if orchestrator.status == S.CALLING_LLM:
        orchestrator = drive(orchestrator)
    return orchestrator


def test_a_compare_send_makes_a_waiting_compare_run_and_one_queued_part_per_model(conversation):
    models = demo_models()
    run = compare_send(conversation, "Which is larger, 2 or 3?", models)
    assert (run.kind, run.status) == (Run.Kind.COMPARE, S.AWAITING_PARTS)
    parts = parts_of(run)
    assert [(p.kind, p.status, p.position) for p in parts] == [
        (Run.Kind.ANSWER, S.QUEUED, i) for i in range(3)
    ]
    assert [p.model_config for p in parts] == models
    assert {p.user_message_id for p in parts} == {run.user_message_id}
    assert {p.parent_id for p in parts} == {run.parent_id}
    assert run.model_config == conversation.model_config  # the default summarizer
    assert run.parameters["system_prompt"]["command"] == "compare-summary"
    sent = AuditEvent.objects.get(action="message.sent")
    assert [c["model"] for c in sent.data["compare"]] == ["Demo A", "Demo B", "Demo C"]
    assert AuditEvent.objects.filter(action="run.awaiting_parts", target_id=str(run.pk)).exists()
    # Nothing moves until every part has ended.
    drive(parts[0])
    assert compare.compare_advance(orchestrator_id=run.pk) is None
    run.refresh_from_db()
    assert run.status == S.AWAITING_PARTS


def test_the_summary_waits_for_every_answer_and_names_each_model(conversation):
    run = compare_send(conversation, "Name a prime number", demo_models())
    run = finish(run)
    assert run.status == S.COMPLETED, run.error
    summary = answer_of(run)
    assert summary.content.startswith("Summary of 3 answers:")
    for name in ("Demo A", "Demo B", "Demo C"):
        assert name in summary.content
    assert all(p.status == S.COMPLETED for p in parts_of(run))
    summary_began = summary.created_at
    assert all(p.finished_at <= summary_began for p in parts_of(run))
    # The summary is charged and audited as the compare run's own model call.
    assert AuditEvent.objects.filter(action="llm.call", target_id=str(run.pk)).exists()
    for part in parts_of(run):
        assert AuditEvent.objects.filter(action="llm.call", target_id=str(part.pk)).exists()


def test_summary_request_holds_the_question_and_every_answer_and_says_which_failed(
    conversation,
):
    models = [*demo_models(2), failing_model()]
    run = compare_send(conversation, "Why is the sky blue?", models)
    for part in parts_of(run):
        drive(part)
    statuses = [p.status for p in parts_of(run)]
    assert statuses == [S.COMPLETED, S.COMPLETED, S.FAILED]
    messages = compare.compare_messages(run=run, history=[{"role": "user", "content": "Q?"}])
    text = messages[-1]["content"]
    assert text.startswith("Question:\nQ?")
    assert "### Answer from Demo A" in text and "### Answer from Demo B" in text
    assert "### Answer from Broken\n(This model failed:" in text


def test_one_model_failing_still_yields_a_summary_of_the_others(conversation):
    models = [demo_models(1)[0], failing_model(), ModelConfigFactory(name="Demo C")]
    run = finish(compare_send(conversation, "Tell me a colour", models))
    assert run.status == S.COMPLETED, run.error
    broken = parts_of(run)[1]
    assert broken.status == S.FAILED and "Broken" in broken.error
    assert answer_of(run).content.startswith("Summary of 3 answers:")
    assert "**Broken**: (This model failed" in answer_of(run).content


def test_every_model_failing_fails_the_compare_run_with_a_clear_message(conversation):
    broken = [
        failing_model(),
        ModelConfigFactory(
            name="Broken 2",
            litellm_model="nosuchprovider/x",
        ),
    ]
    run = finish(compare_send(conversation, "Anything", broken))
    assert run.status == S.FAILED
    assert "No model answered" in run.error


def test_without_a_summary_the_compare_run_completes_when_its_answers_end(conversation, settings):
    settings.TOLLGATE_COMPARE_SUMMARY_SHOWN = False
    run = finish(compare_send(conversation, "Hello there", demo_models(2)))
    assert run.status == S.COMPLETED
    assert not Message.objects.filter(run=run).exists()


def test_the_summary_model_is_the_setting_when_it_names_an_enabled_model(conversation, settings):
    judge = ModelConfigFactory(name="Summariser")
    settings.TOLLGATE_COMPARE_SUMMARY_MODEL = "Summariser"
    run = compare_send(conversation, "Hi", demo_models(2))
    assert run.model_config == judge


@pytest.mark.parametrize("count", [0, 1, 7])
def test_two_to_six_models_or_a_clear_refusal_and_nothing_written(conversation, count):
    models = demo_models(count)
    with pytest.raises(services.CompareInvalid, match="Pick 2 to 6 models"):
        compare_send(conversation, "Hi", models)
    assert not Run.objects.exists() and not Message.objects.exists()


def test_a_disabled_or_repeated_model_is_refused(conversation):
    a, b = demo_models(2)
    with pytest.raises(services.CompareInvalid, match="once"):
        compare_send(conversation, "Hi", [a, a])
    ModelConfig.objects.filter(pk=b.pk).update(enabled=False)
    with pytest.raises(services.CompareInvalid, match="not available"):
        compare_send(conversation, "Hi", [a, b])


def test_continue_with_one_answer_puts_only_that_answer_in_the_next_context(conversation):
    owner = conversation.owner
    run = finish(compare_send(conversation, "Pick a fruit", demo_models()))
    parts = parts_of(run)
    chosen = parts[1]
    services.compare_choose(user=owner, run_id=chosen.pk)
    run.refresh_from_db()
    assert run.metadata["chosen_run_id"] == chosen.pk
    event = AuditEvent.objects.get(action="compare.chosen")
    assert event.data["chosen_run_id"] == chosen.pk and event.data["model"] == "Demo B"

    follow = send(conversation, "And why?")
    assert follow.parent_id == chosen.pk
    sent, ids = history_with_ids(conversation=conversation, system_prompt="S", run=follow)
    # The question once, the chosen answer only (not the others, not the summary).
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert ids == [None, run.user_message_id, answer_of(chosen).pk, follow.user_message_id]
    follow = drive(follow)
    assert follow.status == S.COMPLETED
    # And the model was sent exactly that (the demo repeats the history's length).
    assert follow.metadata.get("context_dropped_messages") is None


def test_continue_with_the_summary_puts_the_summary_in_the_next_context(conversation):
    run = finish(compare_send(conversation, "Pick a fruit", demo_models(2)))
    services.compare_choose(user=conversation.owner, run_id=run.pk)
    follow = send(conversation, "Go on")
    assert follow.parent_id == run.pk
    sent = history_messages(conversation=conversation, system_prompt="S", run=follow)
    assert [m["content"] for m in sent if m["role"] == "assistant"] == [answer_of(run).content]


def test_continue_refuses_while_answers_run_a_failed_answer_and_another_users_run(
    conversation, other_user
):
    owner = conversation.owner
    run = compare_send(conversation, "Hi", [demo_models(1)[0], failing_model()])
    a, broken = parts_of(run)
    with pytest.raises(services.RunInProgress):
        services.compare_choose(user=owner, run_id=a.pk)
    run = finish(run)
    with pytest.raises(services.CompareInvalid, match="finished"):
        services.compare_choose(user=owner, run_id=broken.pk)
    with pytest.raises(services.NotFound):
        services.compare_choose(user=other_user, run_id=a.pk)
    plain = drive(send(conversation, "plain"))
    with pytest.raises(services.NotFound, match="comparison"):
        services.compare_choose(user=owner, run_id=plain.pk)


def test_stop_on_the_compare_run_stops_its_answers(conversation):
    run = compare_send(conversation, "Hi", demo_models())
    drive(parts_of(run)[0])
    services.run_cancel(user=conversation.owner, run_id=run.pk)
    run.refresh_from_db()
    assert run.status == S.CANCELLED
    assert [p.status for p in parts_of(run)] == [S.COMPLETED, S.CANCELLED, S.CANCELLED]
    assert compare.compare_advance(orchestrator_id=run.pk) is None  # late part ends: nothing


def test_the_timeline_draws_the_compare_with_its_columns_and_marks_the_chosen_one(
    conversation, user_client
):
    run = finish(compare_send(conversation, "Compare me", demo_models()))
    conversation.refresh_from_db()
    timeline = selectors.conversation_timeline(conversation=conversation)
    [_, item] = timeline.items
    assert item.run.pk == run.pk
    assert [p.pk for p in item.run.compare_parts] == [p.pk for p in parts_of(run)]
    assert item.run.compare_chosen == run.pk  # the summary until one is picked
    page = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content
    page = page.decode()
    for part in parts_of(run):
        assert f'id="compare-column-{part.pk}"' in page
        assert f'id="run-{part.pk}-messages"' in page
    assert f'id="compare-summary-{run.pk}"' in page
    assert "Summary of 3 answers" in page
    assert page.count("Continue with this") == 4

    chosen = parts_of(run)[2]
    response = user_client.post(reverse("conversations:compare-choose", args=[chosen.pk]))
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.current_run_id == chosen.pk
    timeline = selectors.conversation_timeline(conversation=conversation)
    assert timeline.items[1].run.pk == run.pk  # still drawn whole, the part marked
    assert timeline.items[1].run.compare_chosen == chosen.pk


def test_compare_over_http_validates_and_keeps_the_typed_text(conversation, user_client):
    url = reverse("conversations:message-send", args=[conversation.pk])
    a = demo_models(1)[0]
    response = user_client.post(
        url, {"content": "keep me", "compare": "on", "compare_models": [a.pk]}
    )
    assert response.status_code == 400
    assert "Pick 2 to 6 models" in response.content.decode()
    assert "keep me" in response.content.decode()
    response = user_client.post(
        url, {"content": "keep me", "compare": "on", "compare_models": ["x"]}
    )
    assert response.status_code == 400
    b = ModelConfigFactory(name="Demo B")
    response = user_client.post(
        url, {"content": "go", "compare": "on", "compare_models": [a.pk, b.pk]}
    )
    assert response.status_code == 302
    assert Run.objects.get(kind=Run.Kind.COMPARE).parts.count() == 2


def test_another_users_run_cannot_be_continued_over_http(conversation, client, other_user):
    run = finish(compare_send(conversation, "Hi", demo_models(2)))
    client.force_login(other_user)
    response = client.post(reverse("conversations:compare-choose", args=[run.pk]))
    assert response.status_code == 404


def test_a_conversation_overrides_the_summary_model_prompt_and_whether_it_is_written(
    conversation, user_client
):
    from prompts.models import Prompt
    from tests.factories import PromptFactory

    owner = conversation.owner
    judge = ModelConfigFactory(name="Judge")
    mine = PromptFactory(owner=owner, kind=Prompt.Kind.SYSTEM, command="judge")
    url = reverse("conversations:compare-settings", args=[conversation.pk])
    response = user_client.post(
        url, {"summary_model": judge.pk, "summary_prompt": mine.pk, "summary_shown": "no"}
    )
    assert response.status_code == 302
    run = compare_send(conversation, "Hi", demo_models(2))
    assert run.model_config == judge
    assert run.parameters["system_prompt"]["command"] == "judge"
    assert run.metadata["summary"] is False
    assert AuditEvent.objects.filter(action="conversation.compare_settings_changed").exists()
    page = user_client.get(reverse("conversations:settings", args=[conversation.pk])).content
    assert f'<option value="{judge.pk}" selected>Judge</option>' in page.decode()


def test_compare_settings_refuse_what_is_not_usable_and_another_users_conversation(
    conversation, client, user_client, other_user
):
    from prompts.models import Prompt
    from tests.factories import PromptFactory

    url = reverse("conversations:compare-settings", args=[conversation.pk])
    theirs = PromptFactory(owner=other_user, kind=Prompt.Kind.SYSTEM, command="theirs")
    response = user_client.post(url, {"summary_prompt": theirs.pk})
    assert response.status_code == 409
    assert "That prompt is not available." in response.content.decode()
    template = PromptFactory(owner=conversation.owner, kind=Prompt.Kind.TEMPLATE, command="t")
    response = user_client.post(url, {"summary_prompt": template.pk})
    assert response.status_code == 409 and "not a system prompt" in response.content.decode()
    response = user_client.post(url, {"summary_model": "x"})
    assert response.status_code == 400
    response = user_client.post(url, {"summary_shown": "maybe"})
    assert response.status_code == 400
    client.force_login(other_user)
    assert client.post(url, {"summary_shown": "no"}).status_code == 404
    conversation.refresh_from_db()
    assert conversation.compare_summary_prompt_id is None
    assert conversation.compare_summary_shown is None


def test_the_recovery_job_moves_on_a_compare_whose_last_part_end_was_lost(conversation):
    from conversations.runs import runs_recover_stale

    run = compare_send(conversation, "Hi", demo_models(2))
    for part in parts_of(run):
        drive(part)  # their ends are told on commit: never, in this test's transaction
    run.refresh_from_db()
    assert run.status == S.AWAITING_PARTS
    assert run.pk in runs_recover_stale(grace_seconds=0)
    run.refresh_from_db()
    assert run.status == S.CALLING_LLM  # its summary's step, for a worker
    assert runs_recover_stale(grace_seconds=0).count(run.pk) <= 1
    run.refresh_from_db()
    assert run.status == S.CALLING_LLM  # told again: nothing more happens
