"""The entry points the agent loop calls around every LLM call.

::

    admission = llm_call_admit(user=..., run_id=..., estimated_cost_usd=..., estimated_tokens=...)
    try:
        response = <the LLM call>
    except Exception:
        llm_call_abort(admission=admission)      # no usage: release the hold
        raise
    llm_call_settle(admission=admission, conversation_id=..., model=..., prompt_tokens=...,
                    completion_tokens=..., cost_usd=..., latency_ms=...)

The caller computes the worst case before the call:
``estimated_tokens = prompt_tokens + max_tokens`` and
``estimated_cost_usd = prompt_tokens * input_price + max_tokens * output_price``
(USD per token, from the ``ModelConfig`` override or litellm's price map).
When ``budget_requires_prices(user=...)`` is True and the model has no known
prices, the caller refuses the model instead of calling it (no silent $0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from accounts.models import Budget, RateLimit, UsageRecord, User
from accounts.services.budgets import (
    budget_admit,
    budget_release,
    to_tokens,
    to_usd,
    usage_record,
)
from accounts.services.ratelimits import ratelimit_add_tokens, ratelimit_check


@dataclass(frozen=True)
class Admission:
    """Permission for one LLM call: who, which run, and the held reservations.

    The public fields are plain values (ints, Decimal), so a caller may store
    ``reservation_ids`` on its run and rebuild an ``Admission`` from them. The
    private fields carry what admit already loaded (budgets, rate limits) so
    that settle does not read it again; a rebuilt admission reads it afresh.
    """

    user_id: int
    run_id: int | None
    estimated_cost_usd: Decimal
    estimated_tokens: int
    reservation_ids: tuple[int, ...] = field(default_factory=tuple)
    _budgets: tuple[Budget, ...] | None = field(default=None, repr=False, compare=False)
    _ratelimits: tuple[RateLimit, ...] | None = field(default=None, repr=False, compare=False)


def llm_call_admit(
    *,
    user: User | int,
    run_id: int | None,
    estimated_cost_usd: Decimal | int | str,
    estimated_tokens: int,
) -> Admission:
    """Reserve the worst case against every budget and check the rate limits.

    One transaction: the hold is written (``budget_admit``), the rate limits
    are checked in Redis, then the hold commits; a refused rate limit rolls
    the hold back.

    Args:
        user: who the call is for.
        run_id: the run making the call (plain id).
        estimated_cost_usd: worst-case USD (see this module's docstring).
        estimated_tokens: worst-case tokens (prompt + max_tokens).

    Returns:
        An ``Admission`` to pass to ``llm_call_settle`` or ``llm_call_abort``.

    Raises:
        BudgetExceeded: a budget would be passed; nothing was held and no
            rate limit counted the request.
        RateLimited: too many requests/tokens this minute; nothing was held
            (the refused request is not counted).
        ValueError: negative or non-numeric estimates.
    """
    user_id = user if isinstance(user, int) else user.pk
    cost = to_usd(estimated_cost_usd, name="estimated_cost_usd")
    tokens = to_tokens(estimated_tokens, name="tokens")

    def check(ratelimits: list[RateLimit]) -> None:
        ratelimit_check(user=user_id, tokens=tokens, _limits=ratelimits)

    # Refusals (RateLimited, BudgetExceeded) propagate; the caller audits them
    # (accounts does not import approvals).
    budgets, ratelimits, reservations = budget_admit(
        user_id=user_id, cost=cost, tokens=tokens, run_id=run_id, check=check
    )
    return Admission(
        user_id=user_id,
        run_id=run_id,
        estimated_cost_usd=cost,
        estimated_tokens=tokens,
        reservation_ids=tuple(r.pk for r in reservations),
        _budgets=tuple(budgets),
        _ratelimits=tuple(ratelimits),
    )


def llm_call_settle(
    *,
    admission: Admission,
    conversation_id: int | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal | int | str,
    latency_ms: int | None,
    evaluation_id: int | None = None,
) -> UsageRecord:
    """Record the finished call's actual usage and settle its reservations.

    Writes the ``UsageRecord`` (``usage_record``), turns the held amounts into
    the actual ones, may push a threshold warning on commit, and counts
    ``prompt_tokens + completion_tokens`` against tokens-per-minute limits.

    Args:
        model: the litellm model string or ModelConfig name.
        cost_usd: actual USD (Decimal; a float goes through its repr).
        latency_ms: wall time of the call in milliseconds.
        evaluation_id: the prompt evaluation that made the call (plain id), if any;
            a run's call is known by the admission's ``run_id``.
    """
    record = usage_record(
        **_usage_kwargs(
            admission, conversation_id, model, prompt_tokens, completion_tokens, cost_usd,
            latency_ms,
        ),
        evaluation_id=evaluation_id,
    )  # fmt: skip
    ratelimit_add_tokens(
        user=admission.user_id,
        tokens=prompt_tokens + completion_tokens,
        _limits=None if admission._ratelimits is None else list(admission._ratelimits),
    )
    return record


def _usage_kwargs(
    admission: Admission,
    conversation_id: int | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal | int | str,
    latency_ms: int | None,
) -> dict:
    """``usage_record``'s arguments for the call ``admission`` admitted."""
    return {
        "user": admission.user_id,
        "conversation_id": conversation_id,
        "run_id": admission.run_id,
        "model": model,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost_usd,
        "latency_ms": latency_ms,
        "reservations": list(admission.reservation_ids),
        "_budgets": None if admission._budgets is None else list(admission._budgets),
    }


def llm_call_abort(*, admission: Admission) -> int:
    """Release the holds of a call that produced no usage. Returns rows released.

    A call that failed after the provider reported usage should be settled
    with that usage instead.
    """
    return budget_release(reservation_ids=list(admission.reservation_ids))
