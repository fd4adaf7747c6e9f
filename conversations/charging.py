"""Charging a model call to its user: one rule for every call Tollgate makes
(a run's steps, a draft's reformulation).

Before the call, :func:`call_admit`: the rate limits and the budget hold of
its worst case (``accounts.services.llm_call_admit``; the prompt's tokens plus
the most the call may answer, at the model's prices: ``gateway.worst_case_cost``),
or a refusal, audited as ``budget.refused``, and no call. After it,
:func:`call_settle`: the usage recorded and the hold settled
(``llm_call_settle``), audited as ``llm.call``; a call that produced no usage
gives its hold back with ``accounts.services.llm_call_abort``.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.errors import BudgetExceeded, RateLimited
from accounts.selectors import budget_requires_prices
from accounts.services import Admission, llm_call_abort, llm_call_admit, llm_call_settle
from audit.services import audit_record
from conversations.gateway import CallUsage, litellm_listed, worst_case_cost
from conversations.metrics import metrics_refusal
from conversations.models import ModelConfig
from project.dbthreads import db_async


def unpriced_message(config: ModelConfig) -> str:
    """What a user is told when ``config`` has no known price and a dollar budget
    limits them: why, and who can fix it."""
    why = (
        "litellm's price list prices it at $0, which is not a real price"
        if litellm_listed(config.litellm_model)
        else "litellm's price list does not know it"
    )
    return (
        f"The model {config.name} has no known prices ({why}), and your spending is "
        "limited by a dollar budget; an administrator must confirm its prices in its "
        "model config before you can use it."
    )


def call_admit(
    *,
    user: Any,
    config: ModelConfig,
    prompt_tokens: int,
    max_tokens: int,
    run_id: int | None,
    target_type: str,
    target_id: int,
    fallbacks: list[ModelConfig] | None = None,
    retry: dict[str, Any] | None = None,
) -> tuple[Admission | None, str]:
    """Rate limits and the budget hold before a call of ``config``'s model that
    reads ``prompt_tokens`` and may answer ``max_tokens`` (tokens).

    ``fallbacks`` (other ModelConfigs the call may move on to, in order): the hold
    is the worst case of the dearest model the call may reach; under a dollar
    budget a fallback with no known price is dropped from the list (in place).
    Returns ``(admission, "")`` or ``(None, message for the user)``. A refusal
    (a budget, a rate limit, a model with no known prices, or priced $0 by
    litellm's list, while a dollar budget limits the user: ``unpriced_message``)
    is audited as ``budget.refused`` on ``target_type`` / ``target_id``; no model
    call may be made after it. ``retry``, when given, is filled on a refusal with
    ``refused`` (the reason: ``budget``, ``rate_limit`` or ``no_prices``) and when
    the same call may be admitted: ``retry_not_before`` (ISO time: the budget's
    period ends, the rate limit's window passes) or ``retry_never`` (a total
    budget); neither for a model without prices, which an administrator may
    price any time (``Run.retry_blocked``).
    """
    fallbacks = fallbacks if fallbacks is not None else []
    estimate = worst_case_cost(config=config, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    tokens = prompt_tokens + max_tokens
    others = []
    for fallback in fallbacks:
        limit = min(max_tokens, fallback.max_output_tokens)
        cost = worst_case_cost(config=fallback, prompt_tokens=prompt_tokens, max_tokens=limit)
        others.append((fallback, cost, limit))
    priced_only = (estimate is None or any(cost is None for _, cost, _ in others)) and (
        budget_requires_prices(user=user)
    )
    if priced_only:
        fallbacks[:] = [f for f, cost, _ in others if cost is not None]
    for fallback, cost, limit in others:
        if cost is not None and estimate is not None and fallback in fallbacks:
            estimate = max(estimate, cost)
            tokens = max(tokens, prompt_tokens + limit)
    refusal: dict[str, Any]
    if estimate is None and priced_only:
        refusal = {"reason": "no_prices", "message": unpriced_message(config)}
    else:
        try:
            admission = llm_call_admit(
                user=user,
                run_id=run_id,
                estimated_cost_usd=estimate or Decimal(0),
                estimated_tokens=tokens,
            )
            return admission, ""
        except BudgetExceeded as exc:
            refusal = {"reason": "budget", "message": exc.message, "budget_id": exc.budget_id}
            if retry is not None and exc.resets_at is not None:
                retry["retry_not_before"] = exc.resets_at.isoformat()
            elif retry is not None:
                retry["retry_never"] = True
        except RateLimited as exc:
            refusal = {
                "reason": "rate_limit",
                "message": exc.message,
                "retry_after_seconds": exc.retry_after_seconds,
            }
            if retry is not None:
                until = timezone.now() + timedelta(seconds=exc.retry_after_seconds)
                retry["retry_not_before"] = until.isoformat()
    metrics_refusal(reason=refusal["reason"])
    if retry is not None:
        retry["refused"] = refusal["reason"]
    audit_record(
        action="budget.refused",
        actor=user,
        target_type=target_type,
        target_id=target_id,
        data={
            **refusal,
            "model": config.litellm_model,
            "estimated_cost_usd": str(estimate) if estimate is not None else None,
            "estimated_tokens": tokens,
        },
    )
    return None, refusal["message"]


def usage_of(usage: CallUsage, latency_ms: int | None) -> dict[str, Any]:
    """A call's usage as accounts' ``llm_call_settle`` takes it (tokens, USD, ms); a
    model with no known price counts as 0 (it cannot be used under a dollar budget)."""
    return {
        "prompt_tokens": usage.prompt_tokens or 0,
        "completion_tokens": usage.completion_tokens or 0,
        "cost_usd": usage.cost_usd if usage.cost_usd is not None else Decimal(0),
        "latency_ms": latency_ms or 0,
    }


def call_settle(
    *,
    admission: Admission,
    user: Any,
    conversation_id: int | None,
    model: str,
    usage: CallUsage,
    latency_ms: int | None,
    target_type: str,
    target_id: int,
    data: dict[str, Any],
    evaluation_id: int | None = None,
) -> None:
    """Record what a call used and settle its hold (``llm_call_settle``), then audit
    it as ``llm.call`` (``data`` added to the usage).

    ``usage``: what is charged (a finished answer's ``ChatResult.charged``, or what
    a stopped or broken call used so far: the prompt and the output counted, plus
    broken attempts before it); ``latency_ms``: milliseconds. Call inside the
    transaction that stores the call's result, after the rows the lock order puts
    first (``conversations.runs``). ``evaluation_id``: the prompt evaluation that
    made the call, kept on its usage row."""
    llm_call_settle(
        admission=admission,
        conversation_id=conversation_id,
        evaluation_id=evaluation_id,
        model=model,
        **usage_of(usage, latency_ms),
    )
    audit_record(
        action="llm.call",
        actor=user,
        target_type=target_type,
        target_id=target_id,
        data={
            **data,
            "model": model,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": str(usage.cost_usd) if usage.cost_usd is not None else None,
            "latency_ms": latency_ms,
        },
    )


@db_async
def call_abort(admission: Admission) -> None:
    """Give back the budget hold of a call :func:`call_admit` admitted that was never
    made, or whose provider never began answering (awaited from async code; its own
    transaction)."""
    with transaction.atomic():
        llm_call_abort(admission=admission)
