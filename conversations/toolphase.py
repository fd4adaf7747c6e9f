"""The tool phase of a run: gate each tool call, wait for people, execute, answer.

DESIGN.md, "The agent loop": the model's tool calls become ``ToolInvocation``
rows keyed by (run, ``tool_call_id``); the gate (``approvals.services.gate_decide``)
allows, denies or asks for each; "ask" creates an ``ApprovalRequest`` and leaves
the run in ``awaiting_approval`` with no worker waiting; each decision (or
expiry) comes back through :func:`approval_decided`; approved invocations of
one turn run concurrently; when every invocation of the turn is settled their
results become tool messages and the next model call is scheduled.

Every function here that changes state runs inside ``transaction.atomic`` with
the run row locked (``select_for_update``), taking the run's lock before any
invocation's, so decisions, executions and the engine never deadlock.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, TypedDict, cast

from django.conf import settings
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import approval_request_create, approvals_cancel_for_run, gate_decide
from conversations import events
from conversations.engine import run_finish, run_llm_call_schedule
from conversations.models import Message, Run
from tools.models import ToolInvocation
from tools.registry import ToolSpec, registry
from tools.selectors import invocation_tool_message, tools_offered_for_user
from tools.services import invocation_mark, invocations_record

logger = logging.getLogger(__name__)

S = Run.Status
IS = ToolInvocation.Status


class _DecisionFields(TypedDict):
    """The gate's decision as ``invocation_mark`` stores it."""

    decision: str
    decision_explanation: str


DENIED_BY_POLICY = "Denied by policy ({explanation}). The tool was not run."
DENIED_BY_USER = "The user denied this tool call; the tool was not run."
EXPIRED_RESULT = (
    "Not approved in time: nobody approved this tool call before its approval request "
    "expired, so the tool was not run."
)
CANCELLED_RESULT = "Cancelled: the run was stopped before this tool call ran."


def tool_hints(spec: ToolSpec) -> dict[str, bool]:
    """The gate's view of a tool's MCP-style hints (snake_case keys).

    ``trusted`` is false for tools of an MCP server not marked trusted: approvals
    then never offers (nor accepts) "always allow" for them.
    """
    return {
        "read_only": spec.read_only,
        "destructive": spec.destructive,
        "idempotent": spec.idempotent,
        "open_world": spec.open_world,
        "trusted": bool(spec.metadata.get("trusted", True)),
    }


def tools_offered(*, run: Run) -> list[dict[str, Any]] | None:
    """The OpenAI ``tools`` list for the run's next model call, or ``None``.

    The tools this user may use (enabled, in their groups, available), when the
    conversation's model supports tools (``tools_offered_for_user``: cached for
    a few seconds).
    """
    if not run.conversation.model_config.supports_tools:
        return None
    specs = tools_offered_for_user(user=run.conversation.owner)
    return [spec.openai_tool() for spec in specs] or None


def _turn(run: Run, message_id: int) -> list[ToolInvocation]:
    return list(
        ToolInvocation.objects.filter(run=run, message_id=message_id).order_by("position", "id")
    )


def turn_gate(*, run: Run, message: Message) -> None:
    """Record the tool calls of ``message`` and put each through the gate.

    Replay-safe: invocations are keyed by (run, tool_call_id) and only ones
    still ``requested`` are gated. Precondition: inside ``transaction.atomic``
    with ``run`` locked and its lease held by the caller.
    """
    user = run.conversation.owner
    invocations = invocations_record(
        run_id=run.pk,
        message_id=message.pk,
        user_id=user.pk,
        conversation_id=run.conversation_id,
        tool_calls=message.tool_calls or [],
    )
    for invocation in invocations:
        if invocation.status != IS.REQUESTED:
            continue
        spec = registry.get(invocation.tool_name)
        if spec is None:  # unregistered between recording and gating
            invocation_mark(
                invocation_id=invocation.pk,
                status=IS.FAILED,
                result=f"The tool {invocation.tool_name!r} is not available.",
                is_error=True,
            )
            continue
        arguments = invocation.arguments_requested or {}
        decision = gate_decide(
            user=user,
            tool_name=spec.name,
            hints=tool_hints(spec),
            arguments=arguments,
            conversation_id=run.conversation_id,
            trusted_hints=bool(spec.metadata.get("trusted", True)),
            invocation_id=invocation.pk,
        )
        common: _DecisionFields = {
            "decision": decision.action,
            "decision_explanation": decision.explanation[:500],
        }
        if decision.action == "allow":
            invocation_mark(invocation_id=invocation.pk, status=IS.APPROVED, **common)
        elif decision.action == "deny":
            invocation_mark(
                invocation_id=invocation.pk,
                status=IS.DENIED,
                result=DENIED_BY_POLICY.format(explanation=decision.explanation),
                is_error=True,
                **common,
            )
        else:
            invocation_mark(invocation_id=invocation.pk, status=IS.AWAITING_APPROVAL, **common)
            approval_request_create(
                invocation_id=invocation.pk,
                requester=user,
                conversation_id=run.conversation_id,
                run_id=run.pk,
                tool_name=spec.name,
                tool_description=spec.description,
                hints=tool_hints(spec),
                arguments=arguments,
                arguments_schema=spec.parameters,
                decision=decision,
            )


def turn_write_results(*, run: Run, message_id: int) -> None:
    """Store one tool message per settled invocation of the turn, in call order.

    Idempotent: a tool message already stored for a (run, tool_call_id) is kept.
    Precondition: inside ``transaction.atomic`` with ``run`` locked.
    """
    stored = set(
        Message.objects.filter(run=run, role=Message.Role.TOOL).values_list(
            "tool_call_id", flat=True
        )
    )
    for invocation in _turn(run, message_id):
        if invocation.tool_call_id in stored:
            continue
        content = invocation_tool_message(invocation=invocation)["content"]
        extra = {}
        if invocation.metadata.get("mcp_result"):  # drawn as MCP content in the chat
            extra = {
                "mcp_result": invocation.metadata["mcp_result"],
                "mcp_server": invocation.metadata.get("mcp_server", ""),
            }
        tool_message = Message.objects.create(
            conversation_id=run.conversation_id,
            run=run,
            role=Message.Role.TOOL,
            content=content,
            tool_call_id=invocation.tool_call_id,
            metadata={
                "tool_name": invocation.tool_name,
                "invocation_id": invocation.pk,
                "status": invocation.status,
                "is_error": invocation.is_error,
                **extra,
            },
        )
        events.message_appended(message_id=tool_message.pk, run_id=tool_message.run_id)


def _cancel_turn(run: Run, message_id: int, actor: Any = None) -> None:
    approvals_cancel_for_run(run_id=run.pk, actor=actor)
    for invocation in _turn(run, message_id):
        if invocation.status in (IS.REQUESTED, IS.AWAITING_APPROVAL, IS.APPROVED):
            invocation_mark(
                invocation_id=invocation.pk,
                status=IS.CANCELLED,
                result=CANCELLED_RESULT,
                is_error=True,
            )


def turn_continue(*, run: Run, message_id: int) -> None:
    """Move a locked run on from the state of its current tool turn.

    - cancel requested → pending approvals and calls cancelled, run cancelled;
    - some invocation awaits a person → ``awaiting_approval`` (no worker waits);
    - some invocation is approved and not started → ``executing_tools`` and a
      step is dispatched on commit;
    - some invocation is still running (another worker) → ``executing_tools``,
      left to that worker or to the recovery job;
    - all settled → tool messages written, next model call scheduled.

    Precondition: inside ``transaction.atomic`` with ``run`` locked.
    """
    from conversations.engine import dispatch_on_commit

    if run.is_terminal:
        return
    if run.cancel_requested:
        _cancel_turn(run, message_id)
        events.run_tools_changed(run_id=run.pk)
        run_finish(run=run, status=S.CANCELLED)
        return
    statuses = {invocation.status for invocation in _turn(run, message_id)}
    if IS.AWAITING_APPROVAL in statuses:
        next_status = S.AWAITING_APPROVAL
    elif statuses & {IS.APPROVED, IS.RUNNING, IS.REQUESTED}:
        next_status = S.EXECUTING_TOOLS
    else:
        turn_write_results(run=run, message_id=message_id)
        run_llm_call_schedule(run=run)
        return
    run.status = next_status
    run.lease_owner = ""
    run.lease_expires_at = None
    run.save(update_fields=["status", "lease_owner", "lease_expires_at", "updated_at"])
    events.run_status_changed(run_id=run.pk)
    if IS.APPROVED in statuses and next_status == S.EXECUTING_TOOLS:
        dispatch_on_commit(run.pk)


def turn_claim_approved(*, run: Run, message_id: int) -> list[int]:
    """Ids of the turn's approved invocations; extends the run's lease to cover them.

    The lease must outlast the slowest tool (its timeout, seconds) plus the
    usual lease, or the recovery job would start a second worker on the run.
    Precondition: inside ``transaction.atomic`` with ``run`` locked and leased.
    """
    approved = [inv for inv in _turn(run, message_id) if inv.status == IS.APPROVED]
    longest = max(
        (spec.timeout_seconds for inv in approved if (spec := registry.get(inv.tool_name))),
        default=0,
    )
    run.lease_expires_at = timezone.now() + timedelta(
        seconds=longest + settings.TOLLGATE_RUN_LEASE_SECONDS
    )
    run.save(update_fields=["lease_expires_at"])
    return [inv.pk for inv in approved]


def approval_decided(approval: ApprovalRequest) -> None:
    """``TOLLGATE_APPROVAL_DECIDED_HANDLER``: apply a decision to its invocation and run.

    Called by approvals inside the decision's transaction (the request row is
    locked and already saved as approved, denied or expired). Approved → the
    invocation is approved with the effective (possibly edited) arguments;
    denied → its result tells the model it was denied, with the reason;
    expired → "not approved in time". When the turn has no approval left
    pending, the run moves on (execution is dispatched on commit). A decision
    for an invocation that is no longer awaiting approval changes nothing.
    """
    # The request names its run (the gate created both): lock it first, then the
    # invocation, with no query to look the run up.
    run_id = approval.run_id
    if run_id is None:
        run_id = (
            ToolInvocation.objects.filter(pk=approval.invocation_id)
            .values_list("run_id", flat=True)
            .first()
        )
        if run_id is None:
            return
    try:
        run = (
            Run.objects.select_for_update(no_key=True, of=("self",))
            .select_related("conversation__owner", "conversation__model_config")
            .get(pk=run_id)
        )
        invocation = ToolInvocation.objects.select_for_update(no_key=True).get(
            pk=approval.invocation_id
        )
    except (Run.DoesNotExist, ToolInvocation.DoesNotExist):
        return
    if invocation.run_id != run.pk or invocation.status != IS.AWAITING_APPROVAL:
        return
    status = approval.status
    if status == ApprovalRequest.Status.APPROVED:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.APPROVED,
            expected=[IS.AWAITING_APPROVAL],
            arguments_executed=approval.effective_arguments,
            metadata={"approved_by": approval.decided_by_id, "approval_id": approval.pk},
        )
    elif status == ApprovalRequest.Status.DENIED:
        reason = approval.reason.strip()
        result = DENIED_BY_USER + (f" Reason given: {reason}" if reason else "")
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.DENIED,
            expected=[IS.AWAITING_APPROVAL],
            result=result,
            is_error=True,
            metadata={"denied_by": approval.decided_by_id, "approval_id": approval.pk},
        )
    elif status == ApprovalRequest.Status.EXPIRED:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.EXPIRED,
            expected=[IS.AWAITING_APPROVAL],
            result=EXPIRED_RESULT,
            is_error=True,
        )
    else:
        return
    events.run_tools_changed(run_id=run.pk)
    if run.status == S.AWAITING_APPROVAL:
        # Not None: invocations are recorded by turn_gate, with their message's id.
        turn_continue(run=run, message_id=cast(int, invocation.message_id))


def run_cancel_tools(*, run: Run, actor: Any = None) -> None:
    """Cancel the pending approvals and unstarted tool calls of a run being stopped.

    Precondition: inside ``transaction.atomic`` with ``run`` locked.
    """
    message_ids = set(
        ToolInvocation.objects.filter(run=run).values_list("message_id", flat=True).distinct()
    )
    for message_id in message_ids:
        _cancel_turn(run, message_id, actor=actor)
    if message_ids:
        events.run_tools_changed(run_id=run.pk)
