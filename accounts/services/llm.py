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
from accounts.selectors import budgets_applicable, ratelimits_applicable
from accounts.services.budgets import budget_release, budget_reserve, to_usd, usage_record
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
    _reserved_budget_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    _ratelimits: tuple[RateLimit, ...] | None = field(default=None, repr=False, compare=False)
    _spent_hint: dict | None = field(default=None, repr=False, compare=False)


def llm_call_admit(
    *,
    user: User | int,
    run_id: int | None,
    estimated_cost_usd: Decimal | int | str,
    estimated_tokens: int,
) -> Admission:
    """Check the rate limits and reserve the worst case against every budget.

    Args:
        user: who the call is for.
        run_id: the run making the call (plain id).
        estimated_cost_usd: worst-case USD (see this module's docstring).
        estimated_tokens: worst-case tokens (prompt + max_tokens).

    Returns:
        An ``Admission`` to pass to ``llm_call_settle`` or ``llm_call_abort``.

    Raises:
        RateLimited: too many requests/tokens this minute; nothing was held
            (the refused request is not counted).
        BudgetExceeded: a budget would be passed; nothing was held (the
            request does count against requests per minute).
        ValueError: negative or non-numeric estimates.
    """
    user_id = user if isinstance(user, int) else user.pk
    cost = to_usd(estimated_cost_usd, name="estimated_cost_usd")
    ratelimits = ratelimits_applicable(user=user_id)
    budgets = budgets_applicable(user=user_id)
    # Refusals propagate; the caller audits them (accounts does not import approvals).
    ratelimit_check(user=user_id, tokens=estimated_tokens, _limits=ratelimits)
    reservations = budget_reserve(
        user=user_id, cost_usd=cost, tokens=estimated_tokens, run_id=run_id, _budgets=budgets
    )
    return Admission(
        user_id=user_id,
        run_id=run_id,
        estimated_cost_usd=cost,
        estimated_tokens=estimated_tokens,
        reservation_ids=tuple(r.pk for r in reservations),
        _budgets=tuple(budgets),
        _reserved_budget_ids=tuple(r.budget_id for r in reservations),
        _ratelimits=tuple(ratelimits),
        _spent_hint={r.budget_id: (*r.spent_with_hold, r.cost_usd, r.tokens) for r in reservations},
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
) -> UsageRecord:
    """Record the finished call's actual usage and settle its reservations.

    Writes the ``UsageRecord`` (``usage_record``), turns the held amounts into
    the actual ones, may push a threshold warning on commit, and counts
    ``prompt_tokens + completion_tokens`` against tokens-per-minute limits.

    Args:
        model: the litellm model string or ModelConfig name.
        cost_usd: actual USD (Decimal; a float goes through its repr).
        latency_ms: wall time of the call in milliseconds.
    """
    record = usage_record(
        user=admission.user_id,
        conversation_id=conversation_id,
        run_id=admission.run_id,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        reservations=list(admission.reservation_ids),
        _budgets=None if admission._budgets is None else list(admission._budgets),
        _reserved_budget_ids=(
            None if admission._reserved_budget_ids is None else list(admission._reserved_budget_ids)
        ),
    )
    ratelimit_add_tokens(
        user=admission.user_id,
        tokens=prompt_tokens + completion_tokens,
        _limits=None if admission._ratelimits is None else list(admission._ratelimits),
    )
    return record


def llm_call_abort(*, admission: Admission) -> int:
    """Release the holds of a call that produced no usage. Returns rows released.

    A call that failed after the provider reported usage should be settled
    with that usage instead.
    """
    return budget_release(reservation_ids=list(admission.reservation_ids))
