"""Cached replies: a repeated tool-free, temperature-0 question is answered from
the cache, with no provider call, shown as such and charged nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from accounts.models import UsageRecord
from conversations.gateway import stream_chat
from conversations.models import Message, ModelConfig, Run
from tests.conversations.conftest import advance_and_push, send
from tests.factories import ConversationFactory

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def cached_model(llmock, **fields) -> ModelConfig:
    return ModelConfig(
        **{
            "name": "Cached GPT",
            "litellm_model": "openai/gpt-4o-mini",
            "api_base": llmock.base_url("openai"),
            "api_key_env": "OPENAI_API_KEY",
            "supports_tools": False,
            "temperature": 0,
            "cache_replies": True,
            **fields,
        }
    )


async def test_a_repeated_question_is_answered_from_the_cache(llmock):
    config = cached_model(llmock)
    llmock.reply("Paris.")
    first = await stream_chat(config=config, messages=MESSAGES)
    assert (first.content, first.cache_hit) == ("Paris.", False)
    assert llmock.last_request.body["temperature"] == 0
    shown: list[str] = []

    async def on_delta(text: str) -> None:
        shown.append(text)

    second = await stream_chat(config=config, messages=MESSAGES, on_delta=on_delta)
    assert (second.content, second.cache_hit, "".join(shown)) == ("Paris.", True, "Paris.")
    assert second.cost_usd == 0 and second.prompt_tokens == second.completion_tokens == 0
    assert len(llmock.requests) == 1  # no provider call


@pytest.mark.parametrize(
    ("fields", "tools"),
    [
        ({"cache_replies": False}, None),  # not opted in
        ({"temperature": 0.7}, None),  # sampled: another answer each time
        ({"temperature": None}, None),  # the provider's default temperature
        ({}, [{"type": "function", "function": {"name": "t", "parameters": {}}}]),
    ],
)
async def test_other_calls_are_never_cached(llmock, fields, tools):
    config = cached_model(llmock, **fields)
    llmock.tool_mode("off")
    llmock.reply("Paris.", times=2)
    await stream_chat(config=config, messages=MESSAGES, tools=tools)
    second = await stream_chat(config=config, messages=MESSAGES, tools=tools)
    assert not second.cache_hit
    assert len(llmock.requests) == 2


async def test_a_cut_answer_is_not_cached(llmock, settings):
    settings.TOLLGATE_LLM_MAX_RETRIES = 0
    config = cached_model(llmock)
    llmock.reply("one two three four five", times=None)
    llmock.truncate(after_chunks=3)
    with pytest.raises(Exception, match="stopped before finishing"):
        await stream_chat(config=config, messages=MESSAGES)
    result = await stream_chat(config=config, messages=MESSAGES)
    assert (result.content, result.cache_hit) == ("one two three four five", False)


@pytest.mark.django_db
def test_a_cached_reply_in_a_chat_is_shown_as_such_and_free(user, llmock, client):
    config = cached_model(llmock, input_cost_per_token=Decimal("0.000002"))
    config.save()
    llmock.reply("Paris.")
    runs = []
    for _ in range(2):  # the same first question in two chats
        conversation = ConversationFactory(owner=user, model_config=config)
        run = send(conversation, "What is the capital of France?")
        async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
        run.refresh_from_db()
        assert run.status == Run.Status.COMPLETED
        runs.append(run)
    assert len(llmock.requests) == 1
    first, second = (Message.objects.get(run=r, role=Message.Role.ASSISTANT) for r in runs)
    assert first.content == second.content == "Paris."
    assert first.cost_usd > 0 and "cache_hit" not in first.metadata
    assert second.cost_usd == 0 and second.metadata["cache_hit"] is True
    assert UsageRecord.objects.get(run_id=runs[1].pk).cost_usd == 0
    client.force_login(user)
    page = client.get(f"/c/{runs[1].conversation_id}/").content.decode()
    assert "from the cache, free" in page
