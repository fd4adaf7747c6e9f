"""Fallbacks and the circuit breaker, against llmock: an OpenAI-compatible model
falls back to an Anthropic one, and a failing deployment is paused, then probed."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from audit.models import AuditEvent
from conversations.gateway import GatewayError, stream_chat
from conversations.models import Message, ModelConfig, Run
from tests.conversations.conftest import advance_and_push, send
from tests.factories import ConversationFactory

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(autouse=True)
def _quick(settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 3
    settings.TOLLGATE_LLM_MAX_RETRY_WAIT = 5
    settings.TOLLGATE_LLM_FALLBACK_AFTER = 2
    settings.TOLLGATE_LLM_BREAKER_FAILURES = 3
    settings.TOLLGATE_LLM_BREAKER_WINDOW = 60
    settings.TOLLGATE_LLM_BREAKER_COOLDOWN = 1


def primary_of(llmock, **fields) -> ModelConfig:
    return ModelConfig(
        **{
            "name": "Primary GPT",
            "litellm_model": "openai/gpt-4o-mini",
            "api_base": llmock.base_url("openai"),
            "api_key_env": "OPENAI_API_KEY",
            "supports_tools": False,
            **fields,
        }
    )


def fallback_of(llmock, **fields) -> ModelConfig:
    return ModelConfig(
        **{
            "name": "Fallback Claude",
            "litellm_model": "anthropic/claude-haiku-4-5",
            "api_base": llmock.base_url("anthropic"),
            "api_key_env": "ANTHROPIC_API_KEY",
            "supports_tools": False,
            **fields,
        }
    )


def calls(llmock) -> list[tuple[str, int]]:
    return [(r.provider, r.status) for r in llmock.requests]


async def test_a_fallback_answers_after_two_503s_and_says_so(llmock):
    primary, fallback = primary_of(llmock), fallback_of(llmock)
    llmock.fail(503, times=None, retry_after=0.1, provider="openai")
    llmock.reply("Hello from Claude", provider="anthropic")
    result = await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    assert result.content == "Hello from Claude"
    assert (result.answered_by, result.failed_over) == ("Fallback Claude", ["Primary GPT"])
    assert calls(llmock) == [("openai", 503), ("openai", 503), ("anthropic", 200)]
    llmock.assert_resilient()  # Retry-After was waited for


async def test_no_fallback_after_text_was_shown(llmock):
    primary, fallback = primary_of(llmock), fallback_of(llmock)
    llmock.reply("one two three four five six", provider="openai")
    llmock.disconnect(after_chunks=4, provider="openai")
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    assert "Lost the connection to Primary GPT" in excinfo.value.user_message
    assert calls(llmock) == [("openai", 200)]  # the fallback would repeat what was shown


async def test_a_non_retryable_error_does_not_fall_back(llmock):
    primary, fallback = primary_of(llmock), fallback_of(llmock)
    llmock.fail(401, times=None, provider="openai")
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    assert excinfo.value.kind == "auth"
    assert calls(llmock) == [("openai", 401)]


async def test_when_every_model_fails_the_last_cause_is_told(llmock):
    primary, fallback = primary_of(llmock), fallback_of(llmock)
    llmock.fail(503, times=None, retry_after=0.05)
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    error = excinfo.value
    assert "Fallback Claude is unavailable right now (provider error 503)" in error.user_message
    assert error.failed_over == ["Primary GPT"]
    # Two tries at the primary, then the last model gets all of its retries.
    assert calls(llmock) == [("openai", 503)] * 2 + [("anthropic", 503)] * 3


async def test_the_breaker_opens_after_repeated_failures_and_skips_until_the_cooldown(
    llmock, settings
):
    settings.TOLLGATE_LLM_MAX_RETRIES = 2
    primary, fallback = primary_of(llmock), fallback_of(llmock)
    llmock.fail(503, times=None, retry_after=0.05, provider="openai")
    with pytest.raises(GatewayError):  # three failures: the breaker opens
        await stream_chat(config=primary, messages=MESSAGES)
    assert calls(llmock) == [("openai", 503)] * 3

    # Open: the primary is not called at all, alone or with a fallback.
    llmock.reset()
    with pytest.raises(GatewayError) as excinfo:
        await stream_chat(config=primary, messages=MESSAGES)
    assert "Primary GPT failed repeatedly and is paused until" in excinfo.value.user_message
    assert "(circuit breaker)" in excinfo.value.user_message
    llmock.reply("Claude here", provider="anthropic")
    result = await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    assert (result.content, result.answered_by) == ("Claude here", "Fallback Claude")
    assert calls(llmock) == [("anthropic", 200)]

    # After the cooldown, half-open: one call probes; it fails and the breaker reopens.
    await asyncio.sleep(1.1)
    llmock.reset()
    llmock.fail(503, times=None, retry_after=0.05, provider="openai")
    with pytest.raises(GatewayError):
        await stream_chat(config=primary, messages=MESSAGES)
    assert calls(llmock) == [("openai", 503)]  # one probe, no retries into a failing one
    llmock.reset()
    with pytest.raises(GatewayError, match="paused"):
        await stream_chat(config=primary, messages=MESSAGES)
    assert llmock.requests == []

    # The next probe is answered: closed again, calls go to the primary.
    await asyncio.sleep(1.1)
    llmock.reset()
    llmock.reply("GPT is back", times=2, provider="openai")
    assert (await stream_chat(config=primary, messages=MESSAGES)).content == "GPT is back"
    result = await stream_chat(config=primary, messages=MESSAGES, fallbacks=[fallback])
    assert (result.content, result.answered_by) == ("GPT is back", "")
    assert calls(llmock) == [("openai", 200), ("openai", 200)]


async def test_only_one_call_probes_a_half_open_breaker(llmock, settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 2
    primary = primary_of(llmock)
    llmock.fail(503, times=None, retry_after=0.05, provider="openai")
    with pytest.raises(GatewayError):
        await stream_chat(config=primary, messages=MESSAGES)
    await asyncio.sleep(1.1)
    llmock.reset()
    llmock.reply("slow probe", provider="openai")
    llmock.slow_first_token(0.5, provider="openai")
    outcomes = await asyncio.gather(
        *(stream_chat(config=primary, messages=MESSAGES) for _ in range(3)),
        return_exceptions=True,
    )
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    paused = [o for o in outcomes if isinstance(o, GatewayError) and "paused" in str(o)]
    assert len(answered) == 1 and len(paused) == 2
    assert len(llmock.requests) == 1


# -- the run: the switch on the message and in the audit trail ---------------------------


@pytest.mark.django_db
def test_a_run_records_the_switch_on_its_message_and_in_the_audit_trail(user, llmock, client):
    fallback = fallback_of(llmock)
    fallback.save()
    primary = primary_of(llmock, fallbacks=[fallback.pk])
    primary.save()
    conversation = ConversationFactory(owner=user, model_config=primary)
    llmock.fail(503, times=2, retry_after=0.05, provider="openai")
    llmock.reply("Claude answers", provider="anthropic")
    run = send(conversation, "hello")
    async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    reply = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    assert reply.content == "Claude answers"
    assert reply.metadata["answered_by"] == "Fallback Claude"
    assert reply.metadata["failed_over"] == ["Primary GPT"]
    assert reply.cost_usd is not None and reply.cost_usd > 0  # at the fallback's prices
    event = AuditEvent.objects.get(action="llm.fallback")
    assert event.data["answered_by"] == "Fallback Claude"
    assert event.data["failed"] == ["Primary GPT"]
    assert event.target_id == str(run.pk)
    client.force_login(user)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "Answered by Fallback Claude after Primary GPT failed" in page


@pytest.mark.django_db
def test_admin_sets_fallbacks_by_name_in_order(admin_user, client, llmock):
    client.force_login(admin_user)
    first = fallback_of(llmock)
    first.save()
    second = fallback_of(llmock, name="Second")
    second.save()
    primary = primary_of(llmock)
    primary.save()
    url = reverse("admin:conversations_modelconfig_change", args=[primary.pk])
    form = {
        "name": primary.name,
        "litellm_model": primary.litellm_model,
        "api_base": primary.api_base,
        "api_key_env": primary.api_key_env,
        "enabled": "on",
        "context_window": 8192,
        "max_output_tokens": 1024,
        "fallback_names": "Second, Fallback Claude",
        "kind": "chat",
    }
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    primary.refresh_from_db()
    assert primary.fallbacks == [second.pk, first.pk]
    assert "Second, Fallback Claude" in client.get(url).content.decode()
    refused = client.post(url, {**form, "fallback_names": "Nobody, Primary GPT"})
    assert refused.status_code == 200
    assert "No model config named Nobody." in refused.content.decode()
    refused = client.post(url, {**form, "fallback_names": "Primary GPT"})
    assert "A model cannot be its own fallback." in refused.content.decode()
    ModelConfig.objects.create(name="Vectors", litellm_model="openai/e", kind="embedding")
    refused = client.post(url, {**form, "fallback_names": "Second, Vectors"})
    assert "Vectors: an embedding model cannot answer a chat." in refused.content.decode()
    refused = client.post(url, {**form, "kind": "embedding", "is_default": "on"})
    assert "An embedding model cannot be the default model for chats." in (refused.content.decode())
