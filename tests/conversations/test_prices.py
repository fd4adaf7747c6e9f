"""Cost that is always right: unpriced models under dollar budgets, cached and
reasoning tokens, and each conversation's total (against llmock's Anthropic and
OpenAI endpoints)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from accounts.models import Budget, UsageRecord
from conversations.gateway import cost_for, price_source
from conversations.models import Message, ModelConfig, Run
from tests.conversations.conftest import advance_and_push, send
from tests.factories import BudgetFactory, ConversationFactory

pytestmark = pytest.mark.django_db

#: Not in litellm 1.106's price list at all, and in it at $0.
UNKNOWN = "anthropic/claude-3-5-haiku-20241022"
ZERO = "anthropic/claude-sonnet-4-20250514"


def advance(run: Run) -> Run:
    async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
    run.refresh_from_db()
    return run


@pytest.fixture
def anthropic_model(llmock):
    def make(litellm_model: str, **fields) -> ModelConfig:
        return ModelConfig.objects.create(
            name=f"Mock {litellm_model}",
            litellm_model=litellm_model,
            api_base=llmock.base_url("anthropic"),
            api_key_env="ANTHROPIC_API_KEY",
            supports_tools=False,
            **fields,
        )

    return make


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (UNKNOWN, "litellm's price list does not know it"),
        (ZERO, "litellm's price list prices it at $0, which is not a real price"),
    ],
)
def test_an_unpriced_model_is_refused_under_a_dollar_budget_until_an_admin_prices_it(
    user, anthropic_model, llmock, model, why
):
    config = anthropic_model(model)
    assert price_source(config) == "unknown"
    BudgetFactory(user=user, period=Budget.Period.MONTHLY, cost_limit_usd=Decimal("5.00"))
    conversation = ConversationFactory(owner=user, model_config=config)
    run = advance(send(conversation, "hello"))
    assert run.status == Run.Status.FAILED
    assert run.error == (
        f"The model {config.name} has no known prices ({why}), and your spending is limited "
        "by a dollar budget; an administrator must confirm its prices in its model config "
        "before you can use it."
    )
    assert llmock.requests == []  # refused before any call
    assert not UsageRecord.objects.exists()

    # An admin confirms a price: the model may now be used, and is charged at it.
    config.input_cost_per_token = Decimal("0.000001")
    config.output_cost_per_token = Decimal("0.000005")
    config.save()
    assert price_source(config) == "confirmed"
    llmock.reply("Hello from a priced model")
    run = advance(send(conversation, "hello again"))
    assert run.status == Run.Status.COMPLETED, run.error
    reply = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    record = UsageRecord.objects.get(run_id=run.pk)
    expected = record.prompt_tokens * Decimal("0.000001") + record.completion_tokens * Decimal(
        "0.000005"
    )
    assert record.cost_usd == reply.cost_usd == expected > 0


def test_without_a_dollar_budget_an_unpriced_model_answers_with_its_cost_unknown(
    user, anthropic_model, llmock, client
):
    config = anthropic_model(ZERO)
    BudgetFactory(user=user, cost_limit_usd=None, token_limit=100_000)  # tokens only
    conversation = ConversationFactory(owner=user, model_config=config)
    llmock.reply("Hello")
    run = advance(send(conversation, "hello"))
    assert run.status == Run.Status.COMPLETED
    reply = Message.objects.get(run=run, role=Message.Role.ASSISTANT)
    assert reply.cost_usd is None  # never a made-up $0
    assert reply.prompt_tokens > 0
    client.force_login(user)
    assert "cost unknown" in client.get(f"/c/{conversation.pk}/").content.decode()


def test_cached_and_reasoning_tokens_are_priced_from_the_usage_fields():
    listed = ModelConfig(name="GPT", litellm_model="openai/gpt-4o-mini")
    plain = cost_for(config=listed, prompt_tokens=1000, completion_tokens=500)
    cached = cost_for(config=listed, prompt_tokens=1000, completion_tokens=500, cached_tokens=800)
    # litellm's list: gpt-4o-mini reads cached prompt tokens at half the prompt price.
    saved = 800 * (Decimal("0.00000015") - Decimal("0.000000075"))
    assert abs(plain - cached - saved) < Decimal("1e-15")  # litellm adds in floats
    reasoning = cost_for(
        config=listed, prompt_tokens=1000, completion_tokens=500, reasoning_tokens=300
    )
    assert reasoning == plain  # reasoning tokens are output tokens, already counted

    confirmed = ModelConfig(
        name="Own",
        litellm_model="openai/own",
        input_cost_per_token=Decimal("0.00001"),
        output_cost_per_token=Decimal("0.00002"),
        cached_input_cost_per_token=Decimal("0.000001"),
    )
    assert cost_for(
        config=confirmed, prompt_tokens=1000, completion_tokens=10, cached_tokens=600
    ) == 400 * Decimal("0.00001") + 600 * Decimal("0.000001") + 10 * Decimal("0.00002")
    confirmed.cached_input_cost_per_token = None  # blank: the prompt price
    assert cost_for(
        config=confirmed, prompt_tokens=1000, completion_tokens=10, cached_tokens=600
    ) == 1000 * Decimal("0.00001") + 10 * Decimal("0.00002")


def test_each_conversation_shows_its_total_cost_and_tokens(user, other_user, mock_model, llmock,
                                                          client):  # fmt: skip
    mock_model.input_cost_per_token = Decimal("0.000002")
    mock_model.output_cost_per_token = Decimal("0.000008")
    mock_model.supports_tools = False
    mock_model.save()
    conversation = ConversationFactory(owner=user, model_config=mock_model)
    client.force_login(user)
    assert "No model calls yet" in client.get(f"/c/{conversation.pk}/").content.decode()
    llmock.reply("first answer", times=2)
    advance(send(conversation, "one"))
    advance(send(conversation, "two"))
    records = UsageRecord.objects.filter(conversation_id=conversation.pk)
    assert records.count() == 2
    cost = sum(r.cost_usd for r in records)
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in records)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f"Total ${cost.normalize():f}" in page
    assert f"{tokens} tokens" in page
    assert "2 model calls" in page
    # Another user's page of its own conversation shows nothing of this one's.
    theirs = ConversationFactory(owner=other_user, model_config=mock_model)
    client.force_login(other_user)
    assert "No model calls yet" in client.get(f"/c/{theirs.pk}/").content.decode()
    assert client.get(f"/c/{conversation.pk}/").status_code == 404


def test_admin_says_where_each_models_prices_come_from(admin_client_for, anthropic_model):
    anthropic_model(ZERO)
    anthropic_model("openai/gpt-4o-mini")
    anthropic_model(UNKNOWN, input_cost_per_token=Decimal(0), output_cost_per_token=Decimal(0))
    page = admin_client_for.get(reverse("admin:conversations_modelconfig_changelist"))
    html = page.content.decode()
    assert html.count("UNKNOWN: refused under dollar budgets until you set its prices") == 1
    assert "From litellm&#x27;s price list" in html
    assert "Confirmed here" in html  # $0 set by an admin is a price


@pytest.fixture
def admin_client_for(client, admin_user):
    client.force_login(admin_user)
    return client
