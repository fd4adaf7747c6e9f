"""What approving a request may cost: the estimate stored on it and its card text.

The app that asks for approval computes the estimate where the knowledge is
(conversations' gate step knows the model, its prices and the history) and
hands it to ``approval_request_create``; approvals stores it on the request
(``ApprovalRequest.cost_estimate``), shows it on the card and holds it against
the requester's budget when the request is approved. Approvals knows nothing
of models: the next step is a number of tokens, an amount (or none) and the
name of what prices it.

Two parts, each possibly unknown, and unknown is never $0:

- the tool call's own cost (``tools.registry.ToolSpec.cost_usd_estimate``;
  none for built-ins and MCP tools);
- the run's next model step at its worst case: the input tokens so far at the
  model's input price plus the most it may write at its output price (the
  figure the engine reserves before that call).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from accounts.services import format_usd

#: Below this an estimate is shown as "less than" it (``format_usd`` shows 6 decimals).
SMALLEST_SHOWN = Decimal("0.000001")


@dataclass(frozen=True, kw_only=True)
class NextStepEstimate:
    """The worst case of the model call that follows the tool call.

    ``cost_usd`` is ``None`` when no price is known for the model; the prices
    are USD per token as the estimate used them (``None``: unknown).
    """

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None
    input_price_usd: Decimal | None = None
    output_price_usd: Decimal | None = None

    @property
    def tokens(self) -> int:
        """Tokens the call may use at most: held against token budgets."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, kw_only=True)
class CostEstimate:
    """What approving may cost: the tool call's own cost (``None``: no estimate) and
    the next model step (``None``: no model step follows, the request has no run)."""

    tool_cost_usd: Decimal | None
    next_step: NextStepEstimate | None

    @property
    def total_usd(self) -> Decimal | None:
        """The sum of the parts that have an amount; ``None`` when none has."""
        parts = [self.tool_cost_usd]
        if self.next_step is not None:
            parts.append(self.next_step.cost_usd)
        known = [part for part in parts if part is not None]
        return sum(known, Decimal(0)) if known else None

    def as_json(self) -> dict[str, Any]:
        """The stored form (amounts as decimal strings, never floats)."""
        step = self.next_step
        return {
            "tool": {"cost_usd": _text(self.tool_cost_usd)},
            "next_step": None
            if step is None
            else {
                "model": step.model,
                "input_tokens": step.input_tokens,
                "output_tokens": step.output_tokens,
                "cost_usd": _text(step.cost_usd),
                "input_price_usd": _text(step.input_price_usd),
                "output_price_usd": _text(step.output_price_usd),
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> CostEstimate | None:
        """The estimate stored by ``as_json``; ``None`` for a request stored without one."""
        if not isinstance(data, dict) or "tool" not in data:
            return None
        step = data.get("next_step")
        return cls(
            tool_cost_usd=_amount((data.get("tool") or {}).get("cost_usd")),
            next_step=None
            if not isinstance(step, dict)
            else NextStepEstimate(
                model=str(step.get("model") or ""),
                input_tokens=int(step.get("input_tokens") or 0),
                output_tokens=int(step.get("output_tokens") or 0),
                cost_usd=_amount(step.get("cost_usd")),
                input_price_usd=_amount(step.get("input_price_usd")),
                output_price_usd=_amount(step.get("output_price_usd")),
            ),
        )


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _amount(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def usd_estimate(amount: Decimal) -> str:
    """An estimate in dollars with no false precision: two significant digits under
    a dollar (``$0.0021``), cents from a dollar up (``$1.23``)."""
    if amount >= 1 or amount == 0:
        return format_usd(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    if amount < SMALLEST_SHOWN:
        return f"less than {format_usd(SMALLEST_SHOWN)}"
    step = Decimal(1).scaleb(amount.adjusted() - 1)
    return format_usd(amount.quantize(step, rounding=ROUND_HALF_UP))


def cost_summary(estimate: CostEstimate) -> str:
    """The card's line, e.g. "Estimated cost: about $0.0021 (next model step: 1,234
    input + up to 1,024 output tokens; this tool: no estimate)"."""
    total = estimate.total_usd
    head = "no estimate" if total is None else f"about {usd_estimate(total)}"
    parts = []
    step = estimate.next_step
    if step is not None:
        tokens = f"{step.input_tokens:,} input + up to {step.output_tokens:,} output tokens"
        if step.cost_usd is None:
            tokens += f", no known prices for {step.model or 'the model'}"
        parts.append(f"next model step: {tokens}")
    tool = "no estimate" if estimate.tool_cost_usd is None else usd_estimate(estimate.tool_cost_usd)
    parts.append(f"this tool: {tool}")
    return f"Estimated cost: {head} ({'; '.join(parts)})"
