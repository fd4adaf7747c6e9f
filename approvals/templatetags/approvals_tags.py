"""Template helpers: the nav badge, the approval card, its cost line and ``|pretty_json``."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.safestring import mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name

from approvals.costs import CostEstimate
from approvals.costs import cost_summary as summary_of
from approvals.forms import DecisionForm
from approvals.selectors import (
    ApprovalProgress,
    approval_can_vote,
    approvals_pending_count,
)
from approvals.selectors import approval_progress as progress_of

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for display (autoescaped by the template)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


#: Tools whose ``code`` argument is shown highlighted on the card, and its language.
CODE_LANGUAGES = {"code.python": "python", "code.shell": "bash"}


@register.filter
def code_preview(approval: Any) -> str:
    """The ``code`` argument of a code tool's request as highlighted HTML, else "".

    Highlighted with Pygments (its output escapes the source); the stylesheet
    is ``static/css/pygments.css``.
    """
    language = CODE_LANGUAGES.get(getattr(approval, "tool_name", ""))
    arguments = getattr(approval, "effective_arguments", None) or approval.arguments
    code = arguments.get("code") if isinstance(arguments, dict) else None
    if not language or not isinstance(code, str):
        return ""
    body = highlight(code, get_lexer_by_name(language), HtmlFormatter(nowrap=True))
    return mark_safe(  # noqa: S308 - Pygments escapes the source it formats
        f'<pre class="highlight code-preview"><code class="language-{language}">{body}</code></pre>'
    )


@register.filter
def cost_summary(approval: Any) -> str:
    """The card's "Estimated cost: …" line, or "" for a request stored without an
    estimate (``approvals.costs``)."""
    estimate = CostEstimate.from_json(getattr(approval, "cost_estimate", None))
    return "" if estimate is None else summary_of(estimate)


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
    """One approval card as the signed-in user sees it (for the chat page).

    The viewer's groups are read once per request (kept on the request), not once
    per card."""
    user = context.get("user")
    request = context.get("request")
    group_ids = getattr(request, "approval_viewer_group_ids", None)
    if group_ids is None and user is not None and user.is_authenticated:
        group_ids = set(user.groups.values_list("pk", flat=True))
        if request is not None:
            request.approval_viewer_group_ids = group_ids
    return {
        "approval": approval,
        "can_vote": approval_can_vote(user=user, approval=approval, group_ids=group_ids),
        "viewer": user,
        "csrf_token": context.get("csrf_token"),
    }


@register.simple_tag
def decision_form(approval: Any, form: Any = None) -> Any:
    """The bound form a view passed, or a fresh ``DecisionForm`` for the card's editor."""
    bound_to = getattr(form, "approval", None)
    if bound_to is not None and bound_to.pk == approval.pk:
        return form
    return DecisionForm(approval=approval)


@register.simple_tag
def approval_progress(approval: Any, viewer: Any = None) -> ApprovalProgress:
    """The card's "Approved by … (1 of 2)" and "may decide" lines
    (``approvals.selectors.approval_progress``)."""
    return progress_of(approval=approval, viewer=viewer)
