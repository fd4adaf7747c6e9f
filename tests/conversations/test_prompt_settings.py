"""A conversation's settings (system prompt, parameters), what each run records, and
reformulation of a draft (charged, audited, never sent)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from accounts.models import Budget, UsageRecord
from audit.models import AuditEvent
from conversations import services
from conversations.engine import run_advance
from conversations.models import Message, Run
from prompts import services as prompt_services
from tests.factories import ModelConfigFactory, PromptFactory

pytestmark = pytest.mark.django_db

ASK = "What is your system prompt?"


def _answer(conversation, content: str = ASK) -> Run:
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content=content
    )
    async_to_sync(run_advance)(run_id=run.pk, worker="test-worker")
    run.refresh_from_db()
    return run


def _reply(run: Run) -> str:
    return Message.objects.get(run=run, role="assistant").content


def _library(conversation, prompt, **kwargs):
    return services.conversation_settings_set(
        user=conversation.owner,
        conversation_id=conversation.pk,
        source="library",
        system_prompt_id=prompt.pk,
        **kwargs,
    )


def test_the_default_system_prompt_is_used_and_recorded(conversation, settings):
    settings.TOLLGATE_SYSTEM_PROMPT = "You are the default."
    run = _answer(conversation)
    assert "> You are the default." in _reply(run)
    assert run.parameters["system_prompt"] == {"source": "default", "text": "You are the default."}
    assert run.model_config == conversation.model_config
    assert run.prompt_version is None


def test_a_library_prompt_switched_mid_conversation_is_used_from_the_next_run(conversation):
    first = _answer(conversation)
    prompt = PromptFactory(
        owner=conversation.owner, kind="system", template="You are a pirate for {{ crew }}."
    )
    _library(conversation, prompt, variables={"crew": "the Tollgate"}, temperature=Decimal("0.4"))
    second = _answer(conversation)
    assert "> You are a pirate for the Tollgate." in _reply(second)
    assert "pirate" not in _reply(first)
    version = prompt.versions.get()
    assert second.prompt_version == version
    recorded = second.parameters
    assert recorded["system_prompt"] | {"text": "…"} == {
        "source": "library",
        "text": "…",
        "prompt_id": prompt.pk,
        "prompt_name": prompt.name,
        "command": prompt.command,
        "label": "production",
        "pinned": False,
        "version_id": version.pk,
        "version_number": 1,
        "variables": {"crew": "the Tollgate"},
    }
    assert recorded["temperature"] == "0.40"
    assert recorded["max_output_tokens"] == conversation.model_config.max_output_tokens
    changed = AuditEvent.objects.get(action="conversation.settings_changed")
    assert changed.data["to"]["system_prompt_id"] == prompt.pk


def test_a_run_keeps_what_it_started_with_and_a_label_move_changes_the_next(conversation):
    prompt = PromptFactory(owner=conversation.owner, kind="system", template="Version one.")
    _library(conversation, prompt)
    user = conversation.owner
    prompt_services.prompt_version_create(
        user=user, prompt_id=prompt.pk, template="Version two.", labels=()
    )
    run = _answer(conversation)
    assert "> Version one." in _reply(run)
    prompt_services.prompt_label_move(user=user, prompt_id=prompt.pk, label="production", number=2)
    later = _answer(conversation)
    assert "> Version two." in _reply(later)
    assert (run.parameters["system_prompt"]["version_number"], later.prompt_version.number) == (
        1,
        2,
    )
    # A pinned version stays, wherever the label goes.
    _library(conversation, prompt, version_id=prompt.versions.get(number=1).pk)
    pinned = _answer(conversation)
    assert "> Version one." in _reply(pinned)
    assert pinned.parameters["system_prompt"]["pinned"] is True


def test_a_missing_variable_refuses_the_send_by_name_and_nothing_is_sent(conversation):
    prompt = PromptFactory(owner=conversation.owner, kind="system", template="Hi {{ name }}.")
    with pytest.raises(services.SettingsInvalid, match="Missing variable: name"):
        _library(conversation, prompt)
    _library(conversation, prompt, variables={"name": "Ana"})
    # The label moves to a version that needs another variable: the next send is refused.
    prompt_services.prompt_version_create(
        user=conversation.owner, prompt_id=prompt.pk, template="Hi {{ name }} of {{ team }}."
    )
    before = (Message.objects.count(), Run.objects.count(), UsageRecord.objects.count())
    with pytest.raises(services.SettingsInvalid, match="Missing variable: team"):
        services.message_send(
            user=conversation.owner, conversation_id=conversation.pk, content="hello"
        )
    assert (Message.objects.count(), Run.objects.count(), UsageRecord.objects.count()) == before


def test_a_prompt_no_longer_shared_refuses_the_send(conversation, other_user):
    theirs = PromptFactory(owner=other_user, kind="system", visibility="everyone")
    _library(conversation, theirs, variables={"audience": "me"})
    theirs.visibility = "private"
    theirs.save()
    with pytest.raises(services.SettingsInvalid, match="no longer available to you"):
        services.message_send(user=conversation.owner, conversation_id=conversation.pk, content="x")


def test_settings_refuse_another_users_private_prompt(conversation, other_user):
    theirs = PromptFactory(owner=other_user, kind="system")
    with pytest.raises(services.SettingsInvalid, match="not available"):
        _library(conversation, theirs)


def test_max_output_tokens_are_capped_at_the_models(conversation):
    services.conversation_settings_set(
        user=conversation.owner,
        conversation_id=conversation.pk,
        source="text",
        text="Be brief.",
        max_output_tokens=10**6,
    )
    run = _answer(conversation)
    assert run.parameters["max_output_tokens"] == conversation.model_config.max_output_tokens
    assert "> Be brief." in _reply(run)


def test_choosing_a_prompt_that_names_a_model_switches_to_it(conversation):
    small = ModelConfigFactory(name="Small demo", litellm_model="demo/tollgate")
    prompt = PromptFactory(owner=conversation.owner, kind="system", template="Short.")
    prompt_services.prompt_version_create(
        user=conversation.owner, prompt_id=prompt.pk, template="Short.", model_name=small.name
    )
    conversation, note = _library(conversation, prompt)
    assert conversation.model_config == small
    assert "Switched to the model Small demo" in note
    assert _answer(conversation).model_config == small


def test_the_settings_page_and_the_run_show_what_was_used(user_client, conversation):
    prompt = PromptFactory(owner=conversation.owner, kind="system", template="Sys {{ a }}.")
    url = reverse("conversations:settings", args=[conversation.pk])
    page = user_client.get(url, {"source": "library", "system_prompt": prompt.pk})
    assert b'name="var_a"' in page.content
    response = user_client.post(
        url,
        {"source": "library", "system_prompt": prompt.pk, "ref": "label:production", "var_a": "x"},
    )
    assert response.status_code == 302
    _answer(conversation)
    chat = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    assert f"{prompt.name} · production" in chat  # the header
    assert f"{prompt.name} v1 (production)" in chat  # the run's record
    assert "Sys x." in chat
    refused = user_client.post(url, {"source": "library", "system_prompt": prompt.pk})
    assert refused.status_code == 409
    assert b"Missing variable: a" in refused.content


def test_another_users_settings_are_404(client, other_user, conversation):
    client.force_login(other_user)
    url = reverse("conversations:settings", args=[conversation.pk])
    assert client.get(url).status_code == 404
    assert client.post(url, {"source": "default"}).status_code == 404


# -- reformulation ------------------------------------------------------------------------


def _reformulate(client, conversation, draft: str):
    url = reverse("conversations:reformulate", args=[conversation.pk])
    return client.post(url, {"content": draft}, HTTP_HX_REQUEST="true")


def test_reformulation_is_charged_audited_and_never_sent(user_client, conversation, settings):
    ModelConfigFactory(
        name="Small priced",
        litellm_model="demo/tollgate",
        input_cost_per_token=Decimal("0.001"),
        output_cost_per_token=Decimal("0.002"),
    )
    settings.TOLLGATE_REFORMULATION_MODEL = "Small priced"
    response = _reformulate(user_client, conversation, "what is dns   i wonder")
    assert response.status_code == 200
    html = response.content.decode()
    assert "What is DNS I wonder?" not in html  # the demo keeps the words as written
    assert "What is dns I wonder?\nPlease be specific and answer step by step." in html
    assert 'class="diff"' in html and "Nothing has been sent" in html
    assert not Message.objects.filter(conversation=conversation).exists()
    assert not Run.objects.exists()
    record = UsageRecord.objects.get()
    assert (record.user, record.conversation_id, record.run_id) == (
        conversation.owner,
        conversation.pk,
        None,
    )
    assert record.cost_usd > 0
    call = AuditEvent.objects.get(action="llm.call")
    assert call.target_type == "conversation" and call.target_id == str(conversation.pk)
    assert call.data["purpose"] == "reformulate"
    assert call.data["prompt_version_id"] is not None  # the deployment's /reformulate


def test_reformulation_is_refused_by_a_budget_with_no_model_call(user_client, conversation):
    Budget.objects.create(
        user=conversation.owner, period=Budget.Period.MONTHLY, cost_limit_usd=Decimal("0.00")
    )
    ModelConfigFactory(name="Priced", litellm_model="demo/tollgate",
                       input_cost_per_token=Decimal("0.001"))  # fmt: skip
    conversation.model_config = ModelConfigFactory(name="Priced")
    conversation.save()
    response = _reformulate(user_client, conversation, "hello there")
    assert response.status_code == 409
    assert b"budget" in response.content
    assert not UsageRecord.objects.exists()
    assert AuditEvent.objects.get(action="budget.refused").target_type == "conversation"


def test_reformulation_uses_the_users_own_instruction(user_client, conversation):
    mine = PromptFactory(
        owner=conversation.owner, kind="template", template="Make this formal: {{ draft }}"
    )
    prompt_services.reformulation_prompt_set(user=conversation.owner, prompt_id=mine.pk)
    response = _reformulate(user_client, conversation, "hey")
    assert response.status_code == 200
    assert mine.name.encode() in response.content
    call = AuditEvent.objects.get(action="llm.call")
    assert call.data["prompt_version_id"] == mine.versions.get().pk


def test_reformulating_another_users_conversation_is_404(client, other_user, conversation):
    client.force_login(other_user)
    assert _reformulate(client, conversation, "hi").status_code == 404
    assert not UsageRecord.objects.exists()


def test_an_empty_draft_is_refused_with_no_model_call(user_client, conversation):
    response = _reformulate(user_client, conversation, "   ")
    assert response.status_code == 400
    assert b"Type a draft first." in response.content
    assert not UsageRecord.objects.exists()
    assert not AuditEvent.objects.filter(action="llm.call").exists()
