"""Template helpers: the nav badge, the approval card and ``|pretty_json``."""

from __future__ import annotations

import json
from typing import Any

from django import template

from approvals.selectors import approval_can_decide, approvals_pending_count

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for display (autoescaped by the template)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@register.filter
def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@register.inclusion_tag("approvals/panel.html#approval-badge", takes_context=True)
def approval_badge(context: template.Context) -> dict[str, Any]:
    """The nav badge with the signed-in user's pending count (one query)."""
    user = context.get("user")
    return {"approvals_pending_count": approvals_pending_count(user=user), "oob": False}


@register.inclusion_tag("approvals/panel.html#approval-card", takes_context=True)
def approval_card(context: template.Context, approval: Any) -> dict[str, Any]:
    """One approval card as the signed-in user sees it (for the chat page)."""
    user = context.get("user")
    return {
        "approval": approval,
        "can_decide": approval_can_decide(user=user, approval=approval),
        "viewer": user,
        "csrf_token": context.get("csrf_token"),
    }


@register.simple_tag
def decision_form(approval: Any, form: Any = None) -> Any:
    """The bound form a view passed, or a fresh ``DecisionForm`` for the card's editor."""
    from approvals.forms import DecisionForm

    bound_to = getattr(form, "approval", None)
    if bound_to is not None and bound_to.pk == approval.pk:
        return form
    return DecisionForm(approval=approval)
