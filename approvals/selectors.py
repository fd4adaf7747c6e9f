"""Reads: the gate's rule evaluation, who may see and decide approvals."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from approvals.conditions import condition_matches
from approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    hints_destructive,
    tool_pattern_is_glob,
    tool_pattern_literal_prefix,
)

# --- The gate --------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one tool call.

    ``action``: ``"allow"``, ``"ask"`` or ``"deny"``. ``policy_id``: the rule
    that decided, or ``None`` for the default. ``explanation``: one line for
    people ("asked because: rule #4, group Staff, tool notes.*").
    ``expires_after_seconds``: how long an "ask" stays open (seconds).
    ``approver_group_id``: who decides an "ask" (``None``: the requester).
    """

    action: str
    policy_id: int | None
    explanation: str
    expires_after_seconds: int
    approver_group_id: int | None = None


_SUBJECT_RANK = {"conversation": 3, "user": 2, "group": 1, "everyone": 0}
_ACTION_RANK = {"deny": 2, "ask": 1, "allow": 0}
_VERB = {"allow": "allowed", "ask": "asked", "deny": "denied"}


def _subject(policy: ApprovalPolicy) -> str:
    if policy.conversation_id is not None:
        return "conversation"
    if policy.user_id is not None:
        return "user"
    if policy.group_id is not None:
        return "group"
    return "everyone"


def policy_specificity(policy: ApprovalPolicy) -> tuple[int, int, int, int]:
    """Sort key of a matching rule; the greatest wins (see ``gate_evaluate``)."""
    pattern = policy.tool_pattern
    exact = 0 if tool_pattern_is_glob(pattern) else 1
    return (
        _SUBJECT_RANK[_subject(policy)],
        exact,
        tool_pattern_literal_prefix(pattern),
        _ACTION_RANK[policy.action],
    )


def _default_expiry() -> int:
    return int(getattr(settings, "TOLLGATE_APPROVAL_EXPIRY_SECONDS", 1800))


def _explain(policy: ApprovalPolicy) -> str:
    subject = {
        "conversation": f"user {policy.user} in this conversation",
        "user": f"user {policy.user}",
        "group": f"group {policy.group}",
        "everyone": "everyone",
    }[_subject(policy)]
    text = (
        f"{_VERB[policy.action]} because: rule #{policy.pk}, {subject}, tool {policy.tool_pattern}"
    )
    if policy.condition_path:
        text += f", when {policy.condition_label}"
    return text


def policies_candidate(*, user: Any, conversation_id: int | None) -> QuerySet[ApprovalPolicy]:
    """Enabled rules whose subject covers ``user`` (tool and condition not yet checked)."""
    subject = Q(user__isnull=True, group__isnull=True, conversation_id__isnull=True)
    if user is not None and getattr(user, "is_authenticated", False):
        subject |= Q(user=user, conversation_id__isnull=True)
        subject |= Q(group__isnull=False, group__in=user.groups.all())
        if conversation_id is not None:
            subject |= Q(user=user, conversation_id=conversation_id)
    return (
        ApprovalPolicy.objects.filter(enabled=True)
        .filter(subject)
        .filter(Q(group__isnull=True) | Q(conversation_id__isnull=True))
        .select_related("user", "group")
    )


def gate_evaluate(
    *,
    user: Any,
    tool_name: str,
    hints: dict[str, bool],
    arguments: Any,
    conversation_id: int | None,
    trusted_hints: bool = True,
) -> GateDecision:
    """Decide allow / ask / deny for one tool call, without writing anything.

    Precedence (docs/policies.md):

    1. Only enabled rules whose subject covers the user, whose tool pattern
       matches ``tool_name`` (exact, or an ``fnmatch`` glob, case-sensitive) and
       whose condition (if any) holds for ``arguments`` are considered.
    2. The most specific subject wins: a conversation-scoped rule for this user
       in this conversation > a rule for this user > a rule for one of the
       user's groups > a rule for everyone.
    3. Then the most specific tool pattern: an exact name > a glob; among
       globs, the longer literal prefix (the text before the first ``*?[``).
    4. At equal specificity deny beats ask beats allow.
    5. No rule: a ``read_only`` tool is allowed, anything else asks.

    A conversation-scoped ``allow`` rule never applies to a ``destructive``
    tool (it is skipped, so the next rule or the default decides). With
    ``trusted_hints=False`` (hints from an untrusted MCP server, as the MCP
    spec advises) ``read_only`` counts as false and ``destructive`` as true
    unless stated otherwise.

    Returns a ``GateDecision``; ``expires_after_seconds`` is the rule's
    override or ``settings.TOLLGATE_APPROVAL_EXPIRY_SECONDS``.
    """
    read_only = bool(hints.get("read_only")) and trusted_hints
    effective_hints = {**hints, "read_only": read_only}
    destructive = hints_destructive(effective_hints)

    matching: list[ApprovalPolicy] = []
    for policy in policies_candidate(user=user, conversation_id=conversation_id):
        if not fnmatch.fnmatchcase(tool_name, policy.tool_pattern):
            continue
        if policy.condition_path and not condition_matches(
            arguments=arguments,
            path=policy.condition_path,
            operator=policy.condition_operator,
            value=policy.condition_value,
        ):
            continue
        if (
            policy.conversation_id is not None
            and policy.action == ApprovalPolicy.Action.ALLOW
            and destructive
        ):
            continue
        matching.append(policy)

    if matching:
        winner = max(matching, key=lambda p: (policy_specificity(p), -p.pk))
        return GateDecision(
            action=winner.action,
            policy_id=winner.pk,
            explanation=_explain(winner),
            expires_after_seconds=winner.expires_after_seconds or _default_expiry(),
            approver_group_id=winner.approvers_group_id,
        )
    if read_only:
        return GateDecision(
            action="allow",
            policy_id=None,
            explanation="allowed because: no rule matched and the tool is read-only",
            expires_after_seconds=_default_expiry(),
        )
    why = (
        "read-only hint not trusted (untrusted server)"
        if hints.get("read_only") and not trusted_hints
        else "the tool is not read-only"
    )
    return GateDecision(
        action="ask",
        policy_id=None,
        explanation=f"asked because: no rule matched and {why}",
        expires_after_seconds=_default_expiry(),
    )


# --- Approvals: who may see and decide -------------------------------------------


def approval_can_decide(*, user: Any, approval: ApprovalRequest) -> bool:
    """Whether ``user`` may approve or deny ``approval``.

    With an approver group, its members decide (the requester only if a
    member); without one, the requester decides their own request.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if approval.approver_group_id is not None:
        return user.groups.filter(pk=approval.approver_group_id).exists()
    return approval.requester_id == user.pk


def approval_can_view(*, user: Any, approval: ApprovalRequest) -> bool:
    """The requester sees their request; approvers see the ones they may decide."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    return approval.requester_id == user.pk or approval_can_decide(user=user, approval=approval)


def _visible_q(user: Any) -> Q:
    return Q(requester=user) | Q(approver_group__isnull=False, approver_group__in=user.groups.all())


def approvals_for_user(
    *,
    user: Any,
    status: str | None = None,
    tool: str | None = None,
    conversation_id: int | None = None,
) -> QuerySet[ApprovalRequest]:
    """Approvals ``user`` may see: their own plus those their groups approve.

    Optional filters: ``status`` (an ``ApprovalRequest.Status`` value), ``tool``
    (exact tool name), ``conversation_id``. Newest first; related users,
    group and policy are joined so a page's query count does not grow.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return ApprovalRequest.objects.none()
    qs = ApprovalRequest.objects.filter(_visible_q(user))
    if status:
        qs = qs.filter(status=status)
    if tool:
        qs = qs.filter(tool_name=tool)
    if conversation_id is not None:
        qs = qs.filter(conversation_id=conversation_id)
    return qs.select_related("requester", "decided_by", "approver_group", "policy").order_by(
        "-created_at", "-id"
    )


def approval_get_visible(*, user: Any, approval_id: int) -> ApprovalRequest | None:
    """The approval if ``user`` may see it, else ``None`` (callers answer 404)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return (
        ApprovalRequest.objects.filter(_visible_q(user), pk=approval_id)
        .select_related("requester", "decided_by", "approver_group", "policy")
        .first()
    )


def approvals_pending_count(*, user: Any) -> int:
    """Pending, unexpired approvals that ``user`` may decide (the nav badge number)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return 0
    decidable = Q(approver_group__isnull=True, requester=user) | Q(
        approver_group__isnull=False, approver_group__in=user.groups.all()
    )
    return (
        ApprovalRequest.objects.filter(decidable)
        .filter(status=ApprovalRequest.Status.PENDING, expires_at__gt=timezone.now())
        .count()
    )


def approval_tools_for_user(*, user: Any) -> list[str]:
    """Distinct tool names among the approvals ``user`` may see (for the filter)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return []
    return list(
        ApprovalRequest.objects.filter(_visible_q(user))
        .order_by("tool_name")
        .values_list("tool_name", flat=True)
        .distinct()
    )
