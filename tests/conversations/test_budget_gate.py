"""Budgets and rate limits around each model call of the agent loop."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from accounts.models import Budget, RateLimit, UsageRecord
from audit.models import AuditEvent
from conversations import services
from conversations.engine import run_advance
from conversations.models import Conversation, Message, Run

pytestmark = pytest.mark.django_db


def answer(conversation, content: str = "hello") -> Run:
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content=content
    )
    async_to_sync(run_advance)(run_id=run.pk, worker="test-worker")
    run.refresh_from_db()
    return run


def test_zero_budget_refuses_before_any_model_call(conversation):
    Budget.objects.create(
        user=conversation.owner, period=Budget.Period.MONTHLY, cost_limit_usd=Decimal("0.00")
    )
    run = answer(conversation)
    assert run.status == Run.Status.FAILED
    assert "monthly budget of $0.00 reached" in run.error
    assert "resets on" in run.error
    assert not Message.objects.filter(run=run).exists()  # no model call, no reply bubble
    assert not UsageRecord.objects.exists()
    refused = AuditEvent.objects.get(action="budget.refused")
    assert refused.data["reason"] == "budget"
    assert refused.target_id == str(run.pk)


def test_each_call_is_recorded_in_the_ledger(conversation):
    run = answer(conversation)
    assert run.status == Run.Status.COMPLETED
    reply = Message.objects.get(run=run)
    record = UsageRecord.objects.get(run_id=run.pk)
    assert record.user == conversation.owner
    assert record.conversation_id == conversation.pk
    assert record.prompt_tokens == reply.prompt_tokens > 0
    assert record.completion_tokens == reply.completion_tokens > 0
    assert record.cost_usd == Decimal(0)  # the demo model is priced at $0 explicitly
    call = AuditEvent.objects.get(action="llm.call")
    assert call.data["prompt_tokens"] == reply.prompt_tokens


def test_streamed_call_is_recorded_with_its_real_cost(user, mock_model, llmock):
    mock_model.input_cost_per_token = Decimal("0.000002")
    mock_model.output_cost_per_token = Decimal("0.000008")
    mock_model.supports_tools = False  # llmock may answer a tool list with a tool call
    mock_model.save()
    conversation = Conversation.objects.create(owner=user, model_config=mock_model)
    run = answer(conversation, "Say something")
    assert run.status == Run.Status.COMPLETED, run.error
    reply = Message.objects.get(run=run)
    record = UsageRecord.objects.get(run_id=run.pk)
    expected = Decimal(record.prompt_tokens) * Decimal("0.000002") + Decimal(
        record.completion_tokens
    ) * Decimal("0.000008")
    assert record.completion_tokens > 0
    assert record.cost_usd == expected > 0
    assert reply.cost_usd == expected


def test_model_without_prices_is_refused_under_a_cost_budget(conversation, demo_model):
    demo_model.input_cost_per_token = None
    demo_model.output_cost_per_token = None
    demo_model.litellm_model = "demo/unpriced-model"
    demo_model.save()
    Budget.objects.create(period=Budget.Period.MONTHLY, cost_limit_usd=Decimal("5.00"))
    run = answer(conversation)
    assert run.status == Run.Status.FAILED
    assert "no known prices" in run.error
    assert not UsageRecord.objects.exists()


def test_rate_limit_refuses_with_when_to_try_again(conversation):
    RateLimit.objects.create(user=conversation.owner, requests_per_minute=1)
    first = answer(conversation, "one")
    assert first.status == Run.Status.COMPLETED
    second = answer(conversation, "two")
    assert second.status == Run.Status.FAILED
    assert "try again in" in second.error
    assert AuditEvent.objects.filter(action="budget.refused", data__reason="rate_limit").exists()


def _status_line(run: Run) -> str:
    from conversations.events import render

    return render("run-status", {"run": run})


def test_a_run_refused_by_a_budget_offers_no_retry_until_the_budget_resets(conversation):
    """Issue 22, defect 10: Retry was offered, and could only fail until the reset."""
    import time_machine

    budget = Budget.objects.create(
        user=conversation.owner, period=Budget.Period.MONTHLY, cost_limit_usd=Decimal("0.00")
    )
    run = answer(conversation)
    assert run.status == Run.Status.FAILED
    assert run.retry_blocked
    resets = run.retry_not_before
    assert resets is not None and resets.day == 1 and resets.hour == 0
    line = _status_line(run)
    assert "Retry is possible from" in line
    assert f"{resets:%Y-%m-%d %H:%M} UTC" in line
    assert "run-retry" not in line and ">Retry</button>" not in line
    with pytest.raises(services.RunNotRetryable, match="resets at"):
        services.run_retry(user=conversation.owner, run_id=run.pk)

    with time_machine.travel(resets, tick=False):
        run.refresh_from_db()
        assert not run.retry_blocked
        assert ">Retry</button>" in _status_line(run)
        budget.delete()
        again = services.run_retry(user=conversation.owner, run_id=run.pk)
        assert again.metadata["retry_of"] == run.pk


def test_a_total_budget_says_it_does_not_reset_and_offers_no_retry(conversation):
    Budget.objects.create(
        user=conversation.owner, period=Budget.Period.TOTAL, cost_limit_usd=Decimal("0.00")
    )
    run = answer(conversation)
    assert run.status == Run.Status.FAILED
    assert run.retry_blocked and run.retry_not_before is None
    line = _status_line(run)
    assert "does not reset" in line and ">Retry</button>" not in line
    with pytest.raises(services.RunNotRetryable, match="does not reset"):
        services.run_retry(user=conversation.owner, run_id=run.pk)


def test_a_rate_limited_run_offers_retry_once_the_window_passed(conversation):
    import time_machine

    RateLimit.objects.create(user=conversation.owner, requests_per_minute=1)
    answer(conversation, "one")
    second = answer(conversation, "two")
    assert second.status == Run.Status.FAILED
    assert second.retry_blocked
    assert ">Retry</button>" not in _status_line(second)
    with time_machine.travel(second.retry_not_before, tick=False):
        second.refresh_from_db()
        assert ">Retry</button>" in _status_line(second)


def test_other_failures_still_offer_retry(conversation):
    run = answer(conversation)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED, error="The provider failed.")
    run.refresh_from_db()
    assert not run.retry_blocked
    assert ">Retry</button>" in _status_line(run)
