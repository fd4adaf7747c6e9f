"""Writes: policy changes, the gate, approval requests and their decisions.

State transitions follow Wagtail's ``TaskState`` habit (STYLE.md): lock the
row, check the expected status, write, record who and when, audit, and push
to browsers with ``transaction.on_commit``.

A decision is a vote (``ApprovalVote``, one per person): one denial denies a
request, ``approvals_required`` approvals from different people approve it.

Apps above this one learn of decisions through two signals
(``approvals.signals``), connected in their ``AppConfig.ready``:
``approval_deciding`` is sent inside a decision's (or expiry's) transaction
before the request is locked, so that receivers lock the rows that come first
in the lock order (the run, then its tool invocation: ``conversations.runs``);
``approval_decided`` is sent once per request that leaves ``pending`` by
approval, denial or expiry (never for a vote that leaves it pending), in the
same transaction, after its status, ``decided_*`` fields and edits are saved
(execute ``approval.effective_arguments``; schedule work with
``transaction.on_commit``; an exception rolls the decision back). Cancellation
(``approvals_cancel_for_run``) sends neither: its caller holds those locks.

The vote that approves a request first holds its cost estimate
(``approvals.costs``) against the requester's budgets, in the same
transaction, after the request's lock (the lock order: run, invocation,
request, budget rows, audit head); a hold the budgets refuse refuses the vote.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from accounts.models import BudgetReservation
from accounts.services import BudgetExceeded, budget_hold_approved, budget_requires_prices
from approvals.canonical import arguments_hash as compute_arguments_hash
from approvals.costs import CostEstimate
from approvals.events import approval_push
from approvals.forms import DecisionForm
from approvals.guardrails import GuardrailAct, GuardrailOutcome, guardrails_run
from approvals.models import ApprovalPolicy, ApprovalRequest, ApprovalVote, Guardrail
from approvals.selectors import (
    GateDecision,
    approval_decide_refusal,
    approval_get_visible,
    approval_votes,
    gate_evaluate,
    guardrails_cache_clear,
    guardrails_for,
)
from approvals.signals import approval_decided, approval_deciding
from audit.canonical import json_safe
from audit.models import AuditEvent
from audit.services import audit_deferred, audit_record

logger = logging.getLogger(__name__)

EXPIRED_REASON = "not approved in time"


class ApprovalError(Exception):
    """Base of the errors ``approval_decide`` raises; ``str()`` is a message for people."""


class ApprovalNotFound(ApprovalError):
    """No such approval, or the user may not see it (answer 404)."""


class ApprovalForbidden(ApprovalError):
    """The actor may not decide this approval (answer 403; it is audited)."""


class AlwaysAllowRefused(ApprovalForbidden):
    """ "Always allow" was asked for a destructive tool or an untrusted MCP server's
    tool, which it never covers."""


class ApprovalNotPending(ApprovalError):
    """The approval was already decided, expired or cancelled (answer 409)."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


class ApprovalAlreadyVoted(ApprovalError):
    """The actor has already voted on this request (answer 409)."""


class ApprovalEditRefused(ApprovalError):
    """An edit of arguments that already have an approval (answer 409): later
    approvers approve exactly what the first approval was for."""


class ApprovalArgumentsMismatch(ApprovalError):
    """The decision quotes a hash of other arguments than the request's (answer 409)."""


class ApprovalBudgetExceeded(ApprovalError):
    """Approving would pass a budget of the requester's (answer 409; it is audited as
    ``approval.refused``): nothing ran, no vote was recorded, the request is still
    pending. ``reason`` is ``budget`` or ``no_prices`` (the next model step has no
    known price and a cost limit applies); ``budget_id`` the refusing budget."""

    def __init__(self, message: str, *, reason: str, budget_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.budget_id = budget_id


class ApprovalArgumentsInvalid(ApprovalError):
    """Edited arguments do not validate against the tool's JSON Schema (answer 400)."""

    def __init__(self, message: str, *, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


# --- Policies --------------------------------------------------------------------


def policy_snapshot(policy: ApprovalPolicy) -> dict[str, Any]:
    """The fields of a rule as JSON, for ``policy.changed`` events."""
    return {
        "id": policy.pk,
        "user_id": policy.user_id,
        "group_id": policy.group_id,
        "conversation_id": policy.conversation_id,
        "tool_pattern": policy.tool_pattern,
        "action": policy.action,
        "condition_path": policy.condition_path,
        "condition_operator": policy.condition_operator,
        "condition_value": policy.condition_value,
        "approvers_group_id": policy.approvers_group_id,
        "four_eyes": policy.four_eyes,
        "approvals_required": policy.approvals_required,
        "expires_after_seconds": policy.expires_after_seconds,
        "enabled": policy.enabled,
        "description": policy.description,
    }


def policy_changed_record(
    *,
    policy: ApprovalPolicy,
    operation: str,
    actor: Any = None,
    ip: str | None = None,
    before: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """Audit ``policy.changed`` (``operation``: created, updated or deleted) with a field diff.

    Returns the event, or ``None`` inside ``audit_deferred`` (as ``audit_record``).
    """
    after = policy_snapshot(policy) if operation != "deleted" else None
    return _changed_record(
        action="policy.changed", target_type="approval_policy", target_id=policy.pk or "",
        operation=operation, before=before, after=after, actor=actor, ip=ip,
    )  # fmt: skip


def _changed_record(
    *, action: str, target_type: str, target_id: Any, operation: str,
    before: dict[str, Any] | None, after: dict[str, Any] | None, actor: Any, ip: str | None,
) -> AuditEvent | None:  # fmt: skip
    """Audit a configuration row's change (``policy.changed``, ``guardrail.changed``):
    the ``operation``, its snapshots ``before`` and ``after`` (``None`` for a row that
    did not exist) and their ``json_diff``. Returns the event, or ``None`` inside
    ``audit_deferred``."""
    return audit_record(
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        data={
            "operation": operation,
            "before": before,
            "after": after,
            "diff": json_diff(before or {}, after or {}),
        },
        ip=ip,
    )


# --- The gate --------------------------------------------------------------------


def gate_decide(
    *,
    user: Any,
    tool_name: str,
    hints: dict[str, bool],
    arguments: dict,
    conversation_id: int | None,
    trusted_hints: bool = True,
    invocation_id: int | None = None,
) -> GateDecision:
    """Decide allow / ask / deny for one tool call and audit ``gate.decided``.

    The rules and their precedence are ``approvals.selectors.gate_evaluate``'s
    (see there and docs/policies.md). ``invocation_id`` (optional) names the
    ``ToolInvocation`` in the audit event. Call inside the transaction that
    records the decision on the invocation, so both commit together.
    """
    decision = gate_evaluate(
        user=user,
        tool_name=tool_name,
        hints=hints,
        arguments=arguments,
        conversation_id=conversation_id,
        trusted_hints=trusted_hints,
    )
    audit_record(
        action="gate.decided",
        actor=user,
        target_type="tool_invocation" if invocation_id is not None else "tool",
        target_id=invocation_id if invocation_id is not None else tool_name,
        data={
            "tool": tool_name,
            "action": decision.action,
            "policy_id": decision.policy_id,
            "explanation": decision.explanation,
            "conversation_id": conversation_id,
            "hints": hints,
            "trusted_hints": trusted_hints,
        },
    )
    return decision


# --- Approval requests -----------------------------------------------------------


def json_diff(before: Any, after: Any) -> list[dict[str, Any]]:
    """Per-key diff of two JSON objects: ``[{"key", "op", "old", "new"}]``.

    ``op`` is ``added``, ``removed`` or ``changed``; nested values are compared
    whole. Non-object values are compared as a single ``$`` key.
    """
    if not isinstance(before, dict) or not isinstance(after, dict):
        if before == after:
            return []
        return [{"key": "$", "op": "changed", "old": before, "new": after}]
    rows: list[dict[str, Any]] = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            rows.append({"key": key, "op": "removed", "old": before[key], "new": None})
        elif key not in before:
            rows.append({"key": key, "op": "added", "old": None, "new": after[key]})
        elif before[key] != after[key] or type(before[key]) is not type(after[key]):
            rows.append({"key": key, "op": "changed", "old": before[key], "new": after[key]})
    return rows


def arguments_validate(*, schema: dict, arguments: Any) -> list[str]:
    """Validate ``arguments`` against a JSON Schema; return readable errors (empty: valid).

    Uses the draft the schema declares (``$schema``), else 2020-12.
    """
    if not isinstance(arguments, dict):
        return ["Arguments must be a JSON object."]
    if not schema:
        return []
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return [f"The tool's argument schema is invalid: {exc.message}"]
    errors = []
    for error in sorted(cls(schema).iter_errors(arguments), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path) or "(arguments)"
        errors.append(f"{where}: {error.message}")
    return errors


def approval_request_create(
    *,
    invocation_id: int,
    requester: Any,
    conversation_id: int | None,
    run_id: int | None,
    tool_name: str,
    tool_description: str,
    hints: dict[str, bool],
    arguments: dict,
    arguments_schema: dict,
    decision: GateDecision,
    cost: CostEstimate | None = None,
) -> ApprovalRequest:
    """Create the pending request for an "ask" decision, audit it, push the card.

    ``arguments`` are stored and hashed canonically (``arguments_hash``);
    ``expires_at`` is now + ``decision.expires_after_seconds``; the approver
    group, four eyes and the approvals required come from the deciding rule
    (copied, so a later change of the rule leaves this request as asked).
    ``cost`` is what approving may cost (shown on the card, held when the
    request is approved); ``None``: not estimated. Call
    inside ``transaction.atomic`` with the invocation's state change; the card
    and badge are pushed to the requester and the approvers on commit. Raises
    ``IntegrityError`` when the invocation already has a request (one per
    invocation).
    """
    clean_arguments = json_safe(arguments)
    approval = ApprovalRequest.objects.create(
        invocation_id=invocation_id,
        requester=requester,
        approver_group_id=decision.approver_group_id,
        four_eyes=decision.four_eyes,
        approvals_required=decision.approvals_required,
        conversation_id=conversation_id,
        run_id=run_id,
        tool_name=tool_name,
        tool_description=tool_description,
        hints=json_safe(hints),
        arguments=clean_arguments,
        arguments_schema=json_safe(arguments_schema or {}),
        arguments_hash=compute_arguments_hash(clean_arguments),
        explanation=decision.explanation[:500],
        policy_id=decision.policy_id,
        expires_at=timezone.now() + timedelta(seconds=decision.expires_after_seconds),
        estimated_cost_usd=None if cost is None else cost.total_usd,
        cost_estimate={} if cost is None else cost.as_json(),
    )
    audit_record(
        action="approval.requested",
        actor=requester,
        target_type="approval_request",
        target_id=approval.pk,
        data={
            "invocation_id": invocation_id,
            "run_id": run_id,
            "conversation_id": conversation_id,
            "tool": tool_name,
            "arguments_hash": approval.arguments_hash,
            "policy_id": decision.policy_id,
            "approver_group_id": decision.approver_group_id,
            "four_eyes": decision.four_eyes,
            "approvals_required": decision.approvals_required,
            "explanation": approval.explanation,
            "expires_at": approval.expires_at,
            "cost_estimate": approval.cost_estimate,
        },
    )
    approval_push(approval.pk, created=True)
    return approval


def _expire_locked(approval: ApprovalRequest, *, now: datetime) -> None:
    """Mark a locked pending request expired, audit, send ``approval_decided``, push
    on commit."""
    approval.status = ApprovalRequest.Status.EXPIRED
    approval.decided_at = now
    approval.reason = EXPIRED_REASON
    approval.save(update_fields=["status", "decided_at", "reason"])
    # The receivers first: the audit chain-head lock is taken last (see audit_record).
    approval_decided.send(sender=ApprovalRequest, approval=approval)
    audit_record(
        action="approval.expired",
        target_type="approval_request",
        target_id=approval.pk,
        data={
            "tool": approval.tool_name,
            "invocation_id": approval.invocation_id,
            "expires_at": approval.expires_at,
        },
    )
    approval_push(approval.pk)


def _lock_in_order(approval_id: int, **conditions: Any) -> ApprovalRequest | None:
    """Lock approval request ``approval_id`` (matching ``conditions``) after the rows
    that come before it in the lock order: ``approval_deciding``'s receivers lock
    them (the run, then its invocation). ``None`` when no such request. Inside
    ``transaction.atomic``."""
    found = ApprovalRequest.objects.filter(pk=approval_id, **conditions).first()
    if found is None:
        return None
    approval_deciding.send(sender=ApprovalRequest, approval=found)
    return (
        ApprovalRequest.objects.select_for_update(no_key=True)
        .filter(pk=approval_id, **conditions)
        .first()
    )


def approval_decide(
    *,
    approval_id: int,
    actor: Any,
    approve: bool,
    arguments_hash: str,
    edited_arguments: dict | None = None,
    reason: str = "",
    always_allow: bool = False,
    ip: str | None = None,
) -> ApprovalRequest:
    """Cast ``actor``'s vote on a pending request: approve (possibly with edited
    arguments) or deny. Returns the request as it stands after the vote.

    Locks the request (``SELECT … FOR NO KEY UPDATE``), after the rows before it
    in the lock order (``approval_deciding``), and checks, in order:
    the actor decides it (``approval_decide_refusal``: under four eyes never the
    requester; else audits ``approval.forbidden`` and raises ``ApprovalForbidden``
    with the reason); it is pending (else ``ApprovalNotPending``); it has not
    passed ``expires_at`` (else marks it expired, sends ``approval_decided`` and
    raises ``ApprovalNotPending``); the actor has not voted on it yet (else
    ``ApprovalAlreadyVoted``); ``arguments_hash`` is the hash of the arguments it
    shows, ``effective_arguments_hash`` (else ``ApprovalArgumentsMismatch``);
    edited arguments (approve only) come before any approval (else
    ``ApprovalEditRefused``) and validate against ``arguments_schema`` (else
    ``ApprovalArgumentsInvalid``); ``always_allow`` (approve only) is not for a
    destructive tool, an untrusted server's tool, or a request needing more
    than one person (else ``AlwaysAllowRefused``); for the vote that approves
    it, its cost estimate can be held against the requester's budgets
    (``_cost_hold``; else audits ``approval.refused`` and raises
    ``ApprovalBudgetExceeded``: no vote, still pending).

    Then records the vote (``ApprovalVote``, one per person) and audits
    ``approval.voted``. A denial denies the request at once; an approval
    approves it when it is the ``approvals_required``-th approval (each from a
    different person); otherwise the request stays pending with the vote and
    the first approver's edit recorded (later approvers approve exactly the
    edited arguments), and the card is pushed on commit.

    Deciding records the outcome, ``decided_by`` (the deciding voter),
    ``decided_at`` and ``reason``, creates the conversation-scoped allow rule
    for the requester when ``always_allow``, audits ``approval.decided``, sends
    ``approval_decided`` (module docstring) inside the same transaction, once,
    and pushes the updated card on commit. Edits identical to the shown
    arguments are no edit; edits and ``always_allow`` are ignored on a denial.

    Call outside a transaction: the refusal audit and the expiry are
    committed before the error is raised, which an outer rollback would undo.
    """
    refusal: ApprovalError | None = None
    votes: list[ApprovalVote] = []
    # The vote's and decision's events and the handler's (the run moving on) are
    # appended together when the block ends, the audit head locked last.
    with transaction.atomic(), audit_deferred():
        approval = _lock_in_order(approval_id)
        if approval is None:
            raise ApprovalNotFound("No such approval.")
        # Read once locked: votes queued on the lock are timed in the order they count.
        now = timezone.now()
        why_not = approval_decide_refusal(user=actor, approval=approval)
        if why_not is not None:
            refusal = ApprovalForbidden(why_not)
        elif approval.status != ApprovalRequest.Status.PENDING:
            refusal = ApprovalNotPending(
                f"This approval is already {approval.status}.", status=approval.status
            )
        elif approval.expires_at <= now:
            _expire_locked(approval, now=now)
            refusal = ApprovalNotPending(
                "This approval expired before it was decided.", status=approval.status
            )
        else:
            votes = approval_votes(approval=approval)  # read under the lock
            if any(vote.voter_id == actor.pk for vote in votes):
                # A denial ends the request, so a vote on a pending one is an approval.
                refusal = ApprovalAlreadyVoted("You have already approved this request.")
            elif arguments_hash != approval.effective_arguments_hash:
                refusal = ApprovalArgumentsMismatch(
                    "These are not the arguments this approval was asked for; reload the card."
                )
        if refusal is None:
            edited: dict | None = None
            diff: list[dict[str, Any]] | None = None
            if approve and edited_arguments is not None:
                edited_clean = json_safe(edited_arguments)
                changed = compute_arguments_hash(edited_clean) != approval.effective_arguments_hash
                if changed and votes:
                    raise ApprovalEditRefused(
                        "These arguments already have an approval; approve them as shown, "
                        "or deny with a reason."
                    )
                errors = arguments_validate(
                    schema=approval.arguments_schema or {}, arguments=edited_clean
                )
                if errors:
                    raise ApprovalArgumentsInvalid(
                        "The edited arguments are not valid: " + "; ".join(errors), errors=errors
                    )
                if changed:
                    edited = edited_clean
                    diff = json_diff(approval.arguments, edited_clean)
            if approve and always_allow and approval.is_destructive:
                refusal = AlwaysAllowRefused(
                    "“Always allow” is never available for destructive tools."
                )
            elif approve and always_allow and not approval.hints_trusted:
                refusal = AlwaysAllowRefused(
                    "“Always allow” is never available for tools of an untrusted MCP server."
                )
            elif approve and always_allow and approval.needs_several:
                refusal = AlwaysAllowRefused(
                    "“Always allow” is not available where the rule wants more than one "
                    "person to decide."
                )
            else:
                try:
                    held = (
                        _cost_hold(approval, actor=actor)
                        if approve and len(votes) + 1 >= approval.approvals_required
                        else []
                    )
                except ApprovalBudgetExceeded as exc:
                    refusal = exc  # the hold's savepoint is undone: nothing was written
                else:
                    return _vote_locked(
                        approval,
                        votes=votes,
                        actor=actor,
                        approve=approve,
                        edited=edited,
                        diff=diff,
                        reason=reason,
                        always_allow=approve and always_allow,
                        ip=ip,
                        now=now,
                        held=held,
                    )
    if isinstance(refusal, ApprovalBudgetExceeded):
        audit_record(
            action="approval.refused",
            actor=actor,
            target_type="approval_request",
            target_id=approval_id,
            data={
                "tool": approval.tool_name,
                "invocation_id": approval.invocation_id,
                "requester_id": approval.requester_id,
                "attempted": "approve",
                "reason": refusal.reason,
                "budget_id": refusal.budget_id,
                "estimated_cost_usd": approval.estimated_cost_usd,
                "cost_estimate": approval.cost_estimate,
                "why": str(refusal),
            },
            ip=ip,
        )
    if isinstance(refusal, ApprovalForbidden):
        audit_record(
            action="approval.forbidden",
            actor=actor,
            target_type="approval_request",
            target_id=approval_id,
            data={
                "tool": approval.tool_name,
                "requester_id": approval.requester_id,
                "attempted": "approve" if approve else "deny",
                "always_allow": always_allow,
                "four_eyes": approval.four_eyes,
                "why": str(refusal),
            },
            ip=ip,
        )
    raise refusal


def _whose(approval: ApprovalRequest, actor: Any) -> str:
    """Whose spending a budget refusal is about, as the deciding person reads it."""
    if getattr(actor, "pk", None) == approval.requester_id:
        return "your"
    return f"{approval.requester.get_full_name()}'s"


def _cost_hold(approval: ApprovalRequest, *, actor: Any) -> list[BudgetReservation]:
    """Hold the locked ``approval``'s cost estimate against the requester's budgets
    (not the approver's: the requester's run spends it) before the vote that
    approves it is recorded; the held reservations (``[]``: nothing to hold).

    ``accounts.services.budget_hold_approved`` holds the tool's own cost and the
    run's next model step (once per run). Raises ``ApprovalBudgetExceeded``, with
    nothing written, when a budget would be passed, or when the next step has no
    known price and a cost limit applies to the requester: the engine refuses
    such a model call (``budget_requires_prices``), so the tool would run for
    nothing. Inside the decision's transaction, the request locked after its run.
    """
    cost = CostEstimate.from_json(approval.cost_estimate)
    if cost is None:
        return []
    step = cost.next_step
    if (
        step is not None
        and step.cost_usd is None
        and budget_requires_prices(user=approval.requester_id)
    ):
        raise ApprovalBudgetExceeded(
            f"Not approved: the model {step.model or 'of this conversation'} has no known "
            f"prices, and a budget limits {_whose(approval, actor)} spending; an administrator "
            "must set its prices before this can run. Nothing ran; the request is still pending.",
            reason="no_prices",
        )
    try:
        return budget_hold_approved(
            user=approval.requester_id,
            run_id=approval.run_id,
            cost_usd=cost.tool_cost_usd or Decimal(0),
            next_call_cost_usd=(step.cost_usd or Decimal(0)) if step else Decimal(0),
            next_call_tokens=step.tokens if step else 0,
        )
    except BudgetExceeded as exc:
        raise ApprovalBudgetExceeded(
            f"Not approved: the estimated cost would pass a budget that limits "
            f"{_whose(approval, actor)} spending: {exc.message}. Nothing ran; the request "
            "is still pending.",
            reason="budget",
            budget_id=exc.budget_id,
        ) from exc


def _vote_locked(
    approval: ApprovalRequest,
    *,
    votes: list[ApprovalVote],
    actor: Any,
    approve: bool,
    edited: dict | None,
    diff: list[dict[str, Any]] | None,
    reason: str,
    always_allow: bool,
    ip: str | None,
    now: datetime,
    held: list[BudgetReservation],
) -> ApprovalRequest:
    """Record ``actor``'s vote on the locked pending ``approval`` (``votes``: those
    cast before, all approvals, read under the lock); decide it when the vote is a
    denial or completes the approvals required, else push the progress. ``held``:
    the budget holds taken for an approving vote (``_cost_hold``)."""
    if edited is not None:
        approval.edited_arguments = edited
        approval.arguments_diff = diff
    vote = ApprovalVote.objects.create(
        approval=approval,
        voter=actor,
        decision=ApprovalVote.Decision.APPROVE if approve else ApprovalVote.Decision.DENY,
        reason=reason.strip(),
        arguments_hash=approval.effective_arguments_hash,
        edited=edited is not None,
        created_at=now,
    )
    # Counted under the request's row lock: concurrent votes queue on it, so each
    # sees the ones before it and exactly one completes the count.
    approvals = len(votes) + 1 if approve else len(votes)
    audit_record(
        action="approval.voted",
        actor=actor,
        target_type="approval_request",
        target_id=approval.pk,
        data={
            "vote_id": vote.pk,
            "decision": vote.decision,
            "tool": approval.tool_name,
            "invocation_id": approval.invocation_id,
            "requester_id": approval.requester_id,
            "arguments_hash": vote.arguments_hash,
            "edited": vote.edited,
            "diff": diff,
            "reason": vote.reason,
            "approvals": approvals,
            "approvals_required": approval.approvals_required,
        },
        ip=ip,
    )
    if not approve or approvals >= approval.approvals_required:
        return _decide_locked(  # which saves the edit with the outcome
            approval,
            votes=[*votes, vote],
            actor=actor,
            approve=approve,
            reason=reason,
            always_allow=always_allow,
            ip=ip,
            now=now,
            held=held,
        )
    if edited is not None:
        approval.save(update_fields=["edited_arguments", "arguments_diff"])
    approval_push(approval.pk)
    return approval


def _decide_locked(
    approval: ApprovalRequest,
    *,
    votes: list[ApprovalVote],
    actor: Any,
    approve: bool,
    reason: str,
    always_allow: bool,
    ip: str | None,
    now: datetime,
    held: list[BudgetReservation],
) -> ApprovalRequest:
    approval.status = ApprovalRequest.Status.APPROVED if approve else ApprovalRequest.Status.DENIED
    approval.decided_by = actor
    approval.decided_at = now
    approval.reason = reason.strip()
    # An earlier approver's edit stays on a denied request (the card shows it); only
    # an approval runs it (``effective_arguments``).
    approval.save(
        update_fields=[
            "status",
            "decided_by",
            "decided_at",
            "reason",
            "edited_arguments",
            "arguments_diff",
        ]
    )
    rule_id = None
    rule: ApprovalPolicy | None = None
    if always_allow:
        rule = ApprovalPolicy.objects.create(
            user_id=approval.requester_id,
            conversation_id=approval.conversation_id,
            tool_pattern=approval.tool_name,
            action=ApprovalPolicy.Action.ALLOW,
            description=f"Always allow, from approval #{approval.pk}.",
            created_by=actor,
        )
        rule_id = rule.pk
    # The receivers first: the audit chain-head lock is taken last (see audit_record).
    approval_decided.send(sender=ApprovalRequest, approval=approval)
    if rule is not None:
        policy_changed_record(policy=rule, operation="created", actor=actor, ip=ip)
    audit_record(
        action="approval.decided",
        actor=actor,
        target_type="approval_request",
        target_id=approval.pk,
        data={
            "decision": approval.status,
            "tool": approval.tool_name,
            "invocation_id": approval.invocation_id,
            "requester_id": approval.requester_id,
            "arguments_hash": approval.arguments_hash,
            "edited": approve and approval.edited_arguments is not None,
            "diff": approval.arguments_diff if approve else None,
            "reason": approval.reason,
            "always_allow_policy_id": rule_id,
            "four_eyes": approval.four_eyes,
            "approvals_required": approval.approvals_required,
            "votes": [{"voter_id": v.voter_id, "decision": v.decision} for v in votes],
            "estimated_cost_usd": approval.estimated_cost_usd,
            # Every applicable budget holds the same amount; none: nothing to hold.
            "cost_held": {
                "reservation_ids": [r.pk for r in held],
                "cost_usd": held[0].cost_usd,
                "tokens": held[0].tokens,
            }
            if held
            else None,
        },
        ip=ip,
    )
    approval_push(approval.pk)
    return approval


def approvals_expire_due(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Expire pending requests whose ``expires_at`` has passed; return their ids.

    Each request is expired in its own short transaction, locked in the lock
    order (after its run and invocation; one decided meanwhile is left as its
    decider left it): status ``expired``, ``decided_at`` = ``now``, reason "not
    approved in time", an ``approval.expired`` audit event, ``approval_decided``,
    and a pushed card on commit. A receiver's error is logged and that request
    stays pending for the next sweep. Run by Celery beat (``approvals.tasks``) or
    ``approvals.dispatch.expiry_loop`` in embedded mode.
    """
    now = now or timezone.now()
    due = list(
        ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING, expires_at__lte=now)
        .order_by("expires_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    expired: list[int] = []
    for pk in due:
        try:
            with transaction.atomic(), audit_deferred():
                approval = _lock_in_order(
                    pk, status=ApprovalRequest.Status.PENDING, expires_at__lte=now
                )
                if approval is None:
                    continue  # decided meanwhile
                _expire_locked(approval, now=now)
        except Exception:
            logger.exception("Expiring approval %s failed", pk)
            continue
        expired.append(pk)
    return expired


def approvals_cancel_for_run(*, run_id: int, actor: Any = None) -> int:
    """Cancel the run's pending requests (the run was cancelled); return how many.

    Waits for row locks held by a decision in progress, then re-checks the
    status, so a request is either decided or cancelled, never both. Audits
    ``approval.cancelled`` and pushes the cards on commit. Sends no signal: the
    caller (the run's cancellation) holds the run's lock and settles its
    invocations itself.
    """
    now = timezone.now()
    count = 0
    with transaction.atomic():
        pending = list(
            ApprovalRequest.objects.select_for_update(no_key=True)
            .filter(run_id=run_id, status=ApprovalRequest.Status.PENDING)
            .order_by("id")
        )
        for approval in pending:
            approval.status = ApprovalRequest.Status.CANCELLED
            approval.decided_at = now
            approval.decided_by = actor if getattr(actor, "pk", None) else None
            approval.reason = "The run was cancelled."
            approval.save(update_fields=["status", "decided_at", "decided_by", "reason"])
            approval_push(approval.pk)
            count += 1
        for approval in pending:
            audit_record(
                action="approval.cancelled",
                actor=actor,
                target_type="approval_request",
                target_id=approval.pk,
                data={"run_id": run_id, "tool": approval.tool_name},
            )
    return count


def approval_decide_from_payload(*, user: Any, payload: dict, ip: str | None) -> ApprovalRequest:
    """Validate a decision payload with ``DecisionForm`` and call ``approval_decide``.

    ``payload``: ``{"approval_id": int, "decision": "approve"|"deny"|"edit",
    "arguments_hash": str, "reason"?: str, "edited_arguments"?: JSON text,
    "always_allow"?: bool, "arg__<name>"?: ...}`` (``DecisionForm`` has the
    details; the WebSocket ``approval.decide`` message carries the same keys).

    Raises ``ValidationError`` for malformed input (nothing changes),
    ``ApprovalNotFound`` when ``user`` may not see the approval, and the
    errors of ``approval_decide`` otherwise. Call outside a transaction.
    """
    try:
        approval_id = int(payload.get("approval_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError({"approval_id": ["A numeric approval_id is required."]}) from None
    approval = approval_get_visible(user=user, approval_id=approval_id)
    if approval is None:
        raise ApprovalNotFound("No such approval.")
    form = DecisionForm(payload, approval=approval)
    if not form.is_valid():
        raise ValidationError(form.errors.as_data())
    if form.cleaned_data["decision"] == "preview":
        raise ValidationError({"decision": ["A preview is not a decision."]})
    return approval_decide_from_form(form=form, user=user, ip=ip)


def approval_decide_from_form(*, form: Any, user: Any, ip: str | None) -> ApprovalRequest:
    """Call ``approval_decide`` with a valid ``DecisionForm``'s data (errors as there)."""
    data = form.cleaned_data
    return approval_decide(
        approval_id=form.approval.pk,
        actor=user,
        approve=data["approve"],
        arguments_hash=data["arguments_hash"],
        edited_arguments=data["edited"],
        reason=data.get("reason") or "",
        always_allow=bool(data.get("always_allow")),
        ip=ip,
    )


# --- Guardrails --------------------------------------------------------------------


def _guardrails_audit(
    outcome: GuardrailOutcome, *, stage: str, user: Any, target: tuple[str, Any]
) -> None:
    """One ``guardrail.acted`` audit event when any guardrail acted."""
    if not outcome.acts:
        return
    audit_record(
        action="guardrail.acted",
        actor=user,
        target_type=target[0],
        target_id=target[1],
        data={
            "stage": stage,
            "blocked": outcome.blocked,
            "acts": outcome.as_metadata(),
            "elapsed_ms": round(outcome.elapsed_ms, 3),
        },
    )


def guardrails_apply(
    *, stage: str, user: Any, text: str, target_type: str = "", target_id: Any = None
) -> GuardrailOutcome:
    """Run the guardrails of ``stage`` that apply to ``user`` on ``text``.

    Returns a :class:`~approvals.guardrails.GuardrailOutcome`: the text to use
    from here on (redacted where one redacted), what acted, whether one blocked.
    When any acted, one ``guardrail.acted`` audit event names them, their
    actions and what they found (labels and counts, never the text), against
    ``target_type``/``target_id`` (the message, run or invocation). Without
    guardrails for the stage: no query (``guardrails_for`` caches), no audit.
    ``stage``: one of ``Guardrail.Stage``.
    """
    rules = guardrails_for(user=user, stage=stage)
    if not rules:
        return GuardrailOutcome(text=text)
    outcome = guardrails_run(rules=rules, text=text, stage=stage)
    _guardrails_audit(outcome, stage=stage, user=user, target=(target_type, target_id))
    return outcome


def guardrails_apply_arguments(
    *, user: Any, arguments: Any, target_type: str = "", target_id: Any = None
) -> tuple[Any, GuardrailOutcome]:
    """Run the ``tool_arguments`` guardrails on every string in a tool call's
    ``arguments`` (a JSON value), before the gate decides.

    Returns ``(arguments with redacted strings, outcome)``; the outcome's acts
    are merged per guardrail (counts summed) and its ``text`` is the redacted
    arguments as JSON. One audit event when any acted, as ``guardrails_apply``.
    """
    rules = guardrails_for(user=user, stage="tool_arguments")
    if not rules:
        return arguments, GuardrailOutcome(text="")
    merged: dict[int | None, GuardrailAct] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            outcome = guardrails_run(rules=rules, text=value, stage="tool_arguments")
            for act in outcome.acts:
                seen = merged.get(act.guardrail_id)
                if seen is not None:
                    found = {k: seen.found.get(k, 0) + act.found.get(k, 0)
                             for k in {*seen.found, *act.found}}  # fmt: skip
                    act = act.with_found(found)
                merged[act.guardrail_id] = act
            return outcome.text
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        return value

    started = time.perf_counter()
    redacted = walk(arguments)
    rank: dict[int | None, int] = {rule.id: position for position, rule in enumerate(rules)}
    outcome = GuardrailOutcome(
        text=json.dumps(redacted, ensure_ascii=False),
        acts=sorted(merged.values(), key=lambda a: rank.get(a.guardrail_id, 0)),
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )
    _guardrails_audit(outcome, stage="tool_arguments", user=user, target=(target_type, target_id))
    return redacted, outcome


def guardrail_snapshot(guardrail: Guardrail) -> dict[str, Any]:
    """The fields of a guardrail as JSON, for ``guardrail.changed`` events."""
    return {
        "id": guardrail.pk,
        "name": guardrail.name,
        "user_id": guardrail.user_id,
        "group_id": guardrail.group_id,
        "stage": guardrail.stage,
        "kind": guardrail.kind,
        "action": guardrail.action,
        "config": guardrail.config,
        "order": guardrail.order,
        "description": guardrail.description,
        "enabled": guardrail.enabled,
    }


def guardrail_changed_record(
    *,
    guardrail: Guardrail,
    operation: str,
    actor: Any = None,
    ip: str | None = None,
    before: dict[str, Any] | None = None,
) -> AuditEvent | None:
    """Audit ``guardrail.changed`` (``operation``: created, updated or deleted) with a
    field diff, and forget this process's cached guardrails at commit too (so no
    thread caches the old rows in between). Returns the event, or ``None`` inside
    ``audit_deferred``."""
    transaction.on_commit(guardrails_cache_clear)
    after = guardrail_snapshot(guardrail) if operation != "deleted" else None
    return _changed_record(
        action="guardrail.changed", target_type="guardrail", target_id=guardrail.pk or "",
        operation=operation, before=before, after=after, actor=actor, ip=ip,
    )  # fmt: skip
