"""Reads: the gate's rule evaluation, who may see and decide approvals."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from approvals.conditions import condition_matches
from approvals.guardrails import GuardrailOutcome, GuardrailRule, guardrails_run
from approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalVote,
    Guardrail,
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
    ``four_eyes``: the requester may never decide it. ``approvals_required``:
    approvals from different people that approve it (1 or more).
    """

    action: str
    policy_id: int | None
    explanation: str
    expires_after_seconds: int
    approver_group_id: int | None = None
    four_eyes: bool = False
    approvals_required: int = 1


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


#: Longest rule description an explanation quotes (it is stored in 500 characters).
EXPLAIN_DESCRIPTION_CHARS = 400


def _explain(policy: ApprovalPolicy) -> str:
    """Why the rule decided, for the user and the model: the rule's description,
    as its admin wrote it (whitespace collapsed), or, when it has none, the rule
    itself ("rule #2, everyone, tool code.*"). Audit events name the rule by id."""
    description = " ".join(policy.description.split())
    if description:
        if len(description) > EXPLAIN_DESCRIPTION_CHARS:
            description = description[: EXPLAIN_DESCRIPTION_CHARS - 1].rstrip() + "…"
        return f"{_VERB[policy.action]} because: {description}"
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
            four_eyes=winner.four_eyes,
            approvals_required=winner.approvals_required,
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


FORBIDDEN_MESSAGE = "You may not decide this approval."
FOUR_EYES_MESSAGE = "You asked for this tool call; under this rule someone else must decide it."


def approval_decide_refusal(
    *, user: Any, approval: ApprovalRequest, group_ids: set[int] | None = None
) -> str | None:
    """Why ``user`` may not decide ``approval`` (a sentence for people), or ``None``.

    Under four eyes (``approval.four_eyes``) the requester never decides,
    whatever else they are (a member of the approver group, staff, superuser):
    that is checked first. Otherwise, with an approver group its members decide
    (the requester only if a member); without one, the requester decides their
    own request. Being staff or superuser never lets anyone decide.

    ``group_ids``: the ids of ``user``'s groups when the caller has them (a
    list page), else one query. Whether they have voted already is not checked
    here (``approval_can_vote``; ``approval_decide`` under the lock).
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return FORBIDDEN_MESSAGE
    if approval.four_eyes and approval.requester_id == user.pk:
        return FOUR_EYES_MESSAGE
    if approval.approver_group_id is not None:
        if group_ids is not None:
            member = approval.approver_group_id in group_ids
        else:
            member = user.groups.filter(pk=approval.approver_group_id).exists()
        return None if member else FORBIDDEN_MESSAGE
    return None if approval.requester_id == user.pk else FORBIDDEN_MESSAGE


def approval_can_decide(
    *, user: Any, approval: ApprovalRequest, group_ids: set[int] | None = None
) -> bool:
    """Whether ``user`` is one of the people who decide ``approval`` (see
    ``approval_decide_refusal``; ``group_ids`` as there)."""
    return approval_decide_refusal(user=user, approval=approval, group_ids=group_ids) is None


def approval_can_view(*, user: Any, approval: ApprovalRequest) -> bool:
    """The requester sees their request (under four eyes too); approvers see the
    ones they may decide."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    return approval.requester_id == user.pk or approval_can_decide(user=user, approval=approval)


def approval_votes(*, approval: ApprovalRequest) -> list[ApprovalVote]:
    """The votes cast on ``approval``, oldest first, each with its ``voter``.

    A request needing one approval has none while pending (its first vote
    decides it), so it costs no query; otherwise ``approval.votes.all()``:
    prefetch ``votes__voter`` for lists (``approvals_for_user`` does).
    """
    if approval.approvals_required <= 1 and approval.is_pending:
        return []
    return list(approval.votes.all())


def approval_can_vote(
    *, user: Any, approval: ApprovalRequest, group_ids: set[int] | None = None
) -> bool:
    """Whether the card offers ``user`` the buttons: ``approval`` is pending, they
    decide it (``approval_can_decide``) and have not voted on it yet."""
    if not approval.is_pending:
        return False
    if not approval_can_decide(user=user, approval=approval, group_ids=group_ids):
        return False
    return all(vote.voter_id != user.pk for vote in approval_votes(approval=approval))


@dataclass(frozen=True)
class ApprovalProgress:
    """Where a request stands, for its card.

    ``approvers``: display names of those who approved, in order.
    ``required``: approvals needed. ``editor``: the display name of the approver
    who edited the arguments, or ``""``. ``who``: who may still decide, for
    people ("anyone in Approvers but Ana, Bob"; "Ana" without an approver
    group). ``may_edit``: whether the next approver may still edit the
    arguments (no approval given yet). ``viewer_approved``: whether the viewer
    passed to ``approval_progress`` is among the approvers.
    """

    approvers: list[str]
    required: int
    editor: str
    who: str
    may_edit: bool
    viewer_approved: bool = False

    @property
    def count(self) -> int:
        return len(self.approvers)

    @property
    def remaining(self) -> int:
        return max(self.required - self.count, 0)


def _name(user: Any) -> str:
    return user.get_full_name() if user is not None else "a former user"


def approval_progress(*, approval: ApprovalRequest, viewer: Any = None) -> ApprovalProgress:
    """The approvals gathered on ``approval`` and who may still decide it, as
    ``viewer`` (a user, optional) sees it.

    Reads ``approval_votes`` (prefetch ``votes__voter``) and the joined
    ``requester`` and ``approver_group``. Those who may still decide: the
    approver group's members but the requester under four eyes and those who
    have voted; without a group, the requester.
    """
    approvals = [
        vote
        for vote in approval_votes(approval=approval)
        if vote.decision == ApprovalVote.Decision.APPROVE
    ]
    editor = next((vote for vote in approvals if vote.edited), None)
    group = approval.approver_group if approval.approver_group_id is not None else None
    if group is None:
        who = _name(approval.requester)
    else:
        # Under four eyes the requester never votes, so no name comes twice.
        but = [_name(approval.requester)] if approval.four_eyes else []
        but += [_name(vote.voter) for vote in approvals]
        who = f"anyone in {group.name}" + (" but " + ", ".join(but) if but else "")
    return ApprovalProgress(
        approvers=[_name(vote.voter) for vote in approvals],
        required=approval.approvals_required,
        editor=_name(editor.voter) if editor is not None else "",
        who=who,
        may_edit=not approvals,
        viewer_approved=viewer is not None
        and any(vote.voter_id == getattr(viewer, "pk", None) for vote in approvals),
    )


def votes_prefetch() -> Prefetch:
    """Prefetch of ``ApprovalRequest.votes`` with their voters, oldest first."""
    return Prefetch(
        "votes", queryset=ApprovalVote.objects.select_related("voter").order_by("created_at", "id")
    )


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
    group and policy are joined and the votes prefetched with their voters, so
    a page's query count does not grow.
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
    return (
        qs.select_related("requester", "decided_by", "approver_group", "policy")
        .prefetch_related(votes_prefetch())
        .order_by("-created_at", "-id")
    )


def approval_get_visible(*, user: Any, approval_id: int) -> ApprovalRequest | None:
    """The approval if ``user`` may see it, else ``None`` (callers answer 404)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return (
        ApprovalRequest.objects.filter(_visible_q(user), pk=approval_id)
        .select_related("requester", "decided_by", "approver_group", "policy")
        .prefetch_related(votes_prefetch())
        .first()
    )


def approvals_pending_count(*, user: Any) -> int:
    """Pending, unexpired approvals that ``user`` may still vote on (the nav badge
    number): not their own under four eyes, not those they have voted on."""
    if user is None or not getattr(user, "is_authenticated", False):
        return 0
    decidable = Q(approver_group__isnull=True, requester=user) | (
        Q(approver_group__isnull=False, approver_group__in=user.groups.all())
        & ~Q(four_eyes=True, requester=user)
    )
    return (
        ApprovalRequest.objects.filter(decidable)
        .filter(status=ApprovalRequest.Status.PENDING, expires_at__gt=timezone.now())
        .exclude(Exists(ApprovalVote.objects.filter(approval=OuterRef("pk"), voter=user)))
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


# --- Guardrails --------------------------------------------------------------------

#: Seconds a process keeps the enabled guardrails before reading them again. The
#: admin's save clears this process's copy at once; other processes see a change
#: within this time.
GUARDRAILS_CACHE_SECONDS = 5.0

#: (monotonic expiry, every enabled guardrail as a rule)
_guardrails_cache: list[tuple[float, list[GuardrailRule]]] = []


def guardrails_cache_clear(**_signal: Any) -> None:
    """Forget this process's copy of the guardrails (a ``Guardrail`` save/delete
    receiver, connected in ``ApprovalsConfig.ready``; tests call it too)."""
    _guardrails_cache.clear()


def _rule(guardrail: Guardrail) -> GuardrailRule:
    return GuardrailRule(
        id=guardrail.pk,
        name=guardrail.name,
        stage=guardrail.stage,
        kind=guardrail.kind,
        action=guardrail.action,
        config=guardrail.config or {},
        order=guardrail.order,
        description=guardrail.description,
        user_id=guardrail.user_id,
        group_id=guardrail.group_id,
    )


def _guardrails_enabled() -> list[GuardrailRule]:
    now = time.monotonic()
    if _guardrails_cache and _guardrails_cache[0][0] > now:
        return _guardrails_cache[0][1]
    rules = [_rule(g) for g in Guardrail.objects.filter(enabled=True).order_by("order", "id")]
    _guardrails_cache[:] = [(now + GUARDRAILS_CACHE_SECONDS, rules)]
    return rules


def guardrails_for(*, user: Any, stage: str) -> list[GuardrailRule]:
    """The enabled guardrails of ``stage`` that apply to ``user``, in order.

    Everyone's, the user's own, and those of the user's groups. At most one
    query for the guardrails every ``GUARDRAILS_CACHE_SECONDS`` per process,
    and one for the user's groups only when a group's guardrail exists for the
    stage: a message with no guardrails costs no query.
    """
    rules = [r for r in _guardrails_enabled() if r.stage == stage]
    if not rules:
        return []
    group_ids: set[int] = set()
    if any(r.group_id is not None for r in rules):
        group_ids = set(user.groups.values_list("pk", flat=True))
    return [
        r
        for r in rules
        if (r.user_id is None and r.group_id is None)
        or r.user_id == user.pk
        or (r.group_id is not None and r.group_id in group_ids)
    ]


def guardrail_preview(*, guardrail: Guardrail, text: str) -> GuardrailOutcome:
    """What ``guardrail`` (saved or not, its config valid) does to ``text``: the
    admin's "test this guardrail" form. No query, no audit."""
    return guardrails_run(rules=[_rule(guardrail)], text=text, stage=guardrail.stage)


def approvals_of_run(*, run_id: int) -> list[tuple[int, str, str]]:
    """``(id, tool name, status)`` of run ``run_id``'s approval requests, oldest
    first; one query."""
    return list(
        ApprovalRequest.objects.filter(run_id=run_id)
        .order_by("id")
        .values_list("pk", "tool_name", "status")
    )
