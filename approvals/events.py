"""Pushes to browsers: the approval card and the pending badge, as htmx OOB fragments.

Every push goes to users' groups on commit through the one push path
(``project.pushes.send_event_on_commit``; DESIGN.md, "Events to the browser"). Each recipient gets
their own rendering: the buttons only for those who may still vote (the
progress of a request needing several approvals is pushed on every vote),
their own badge count.

Where a pushed card lands:
- an update replaces the element ``#approval-<id>`` wherever it is (OOB by id);
- a new request (``created=True``) is also put into ``#approval-slot-<invocation id>``
  (innerHTML: the chat page's place for it under the tool call) and prepended to
  ``#approvals-live`` (the approvals page). A page holds at most one of the two.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.template.loader import render_to_string

from approvals.models import ApprovalRequest
from approvals.selectors import approval_can_vote, approvals_pending_count, votes_prefetch
from project.pushes import send_event_on_commit, user_group

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "approvals/panel.html#approval-card"
BADGE_TEMPLATE = "approvals/panel.html#approval-badge"


def approval_card_html(*, approval: ApprovalRequest, user: Any, oob: bool = False) -> str:
    """The card as ``user`` sees it (buttons only if they may still vote)."""
    return render_to_string(
        CARD_TEMPLATE,
        {
            "approval": approval,
            "can_vote": approval_can_vote(user=user, approval=approval),
            "viewer": user,
            "oob": oob,
        },
    )


def approval_badge_html(*, user: Any, oob: bool = False) -> str:
    """The navigation badge with ``user``'s pending count."""
    return render_to_string(
        BADGE_TEMPLATE,
        {"approvals_pending_count": approvals_pending_count(user=user), "oob": oob},
    )


def approval_push_html(*, approval: ApprovalRequest, user: Any, created: bool = False) -> str:
    """The whole push for one recipient: card (OOB) and badge (OOB)."""
    parts: list[str] = []
    if created:
        card = approval_card_html(approval=approval, user=user)
        parts.append(
            f'<div hx-swap-oob="innerHTML:#approval-slot-{approval.invocation_id}">{card}</div>'
        )
        parts.append(f'<div hx-swap-oob="afterbegin:#approvals-live">{card}</div>')
    else:
        parts.append(approval_card_html(approval=approval, user=user, oob=True))
    parts.append(approval_badge_html(user=user, oob=True))
    return "\n".join(parts)


def approval_recipients(approval: ApprovalRequest) -> list[Any]:
    """The requester and every active member of the approver group."""
    user_model = get_user_model()
    ids = {approval.requester_id}
    if approval.approver_group_id is not None:
        ids |= set(
            user_model.objects.filter(groups=approval.approver_group_id).values_list(
                "pk", flat=True
            )
        )
    return list(user_model.objects.filter(pk__in=ids, is_active=True))


def approval_pairs(approval_id: int, *, created: bool = False) -> list[tuple[str, str]]:
    """The ``(group, html)`` pushes of one approval: card and badge per recipient."""
    approval = (
        ApprovalRequest.objects.select_related("requester", "decided_by", "approver_group")
        .prefetch_related(votes_prefetch())
        .filter(pk=approval_id)
        .first()
    )
    if approval is None:
        return []
    return [
        (user_group(user.pk), approval_push_html(approval=approval, user=user, created=created))
        for user in approval_recipients(approval)
    ]


def approval_push(approval_id: int, *, created: bool = False) -> None:
    """Schedule the card and badge pushes for when the current transaction commits.

    Outside a transaction they are scheduled at once. They go through the
    outbox (``project.pushes``): the deciding transaction does not wait for
    them. Failures (Redis down) are logged, never raised: the database is the
    truth and a reload shows the state.
    """
    send_event_on_commit(
        lambda: approval_pairs(approval_id, created=created), lane=f"approval.{approval_id}"
    )
