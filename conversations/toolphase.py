"""The tool phase of a run: gate each tool call, wait for people, execute, answer.

DESIGN.md, "The agent loop": the model's tool calls become ``ToolInvocation``
rows keyed by (run, ``tool_call_id``); the gate (``approvals.services.gate_decide``)
allows, denies or asks for each; "ask" creates an ``ApprovalRequest`` and leaves
the run in ``awaiting_approval`` with no worker waiting; each decision (or
expiry) comes back through :func:`approval_decided`; approved invocations of
one turn run concurrently; when every invocation of the turn is settled their
results become tool messages and the next model call is scheduled.

Every function here that changes state runs inside ``transaction.atomic`` with
the run row locked, taking the run's lock before any invocation's and those
before any approval request's (the lock order in ``conversations.runs``).
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict, cast

from django.db import transaction

from approvals.costs import CostEstimate, NextStepEstimate
from approvals.models import ApprovalRequest
from approvals.services import approval_request_create, approvals_cancel_for_run, gate_decide
from audit.services import audit_deferred, audit_record
from conversations import events
from conversations.agents import is_agent_tool, is_handoff, tool_refusal, tools_for_run
from conversations.chains import part_tools_allowed
from conversations.context import token_count
from conversations.gateway import cost_for, worst_case_cost
from conversations.guarding import guard_tool_arguments, guard_tool_output
from conversations.handoffs import handoff_execute
from conversations.loopevents import loop_event_of_run
from conversations.models import Message, Run
from conversations.prompting import run_call
from conversations.runs import (
    run_cancel_request,
    run_lease_release,
    run_lock,
    run_step_schedule,
    run_transition,
)
from conversations.subagents import subrun_info, subrun_result, subrun_start
from tools.models import ToolInvocation
from tools.registry import ToolArgumentsInvalid, ToolSpec, registry
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
    a few seconds), unless the run is a chain's step that allows none
    (``chains.part_tools_allowed``); when an agent answers, those of them it may
    use and its handoffs (``agents.tools_for_run``).
    """
    if not run_call(run).config.supports_tools or not part_tools_allowed(run):
        return None
    specs = tools_for_run(run=run, specs=tools_offered_for_user(user=run.conversation.owner))
    return [spec.openai_tool() for spec in specs] or None


def _turn(run: Run, message_id: int) -> list[ToolInvocation]:
    return list(
        ToolInvocation.objects.filter(run_id=run.pk, message_id=message_id).order_by(
            "position", "id"
        )
    )


def next_step_estimate(*, run: Run, message: Message) -> NextStepEstimate:
    """The worst case of the model call that follows the tool calls of ``message``,
    for approval cards and the hold taken when one is approved.

    As the engine reserves for that call (``gateway.worst_case_cost``, the one pricing
    rule): the input so far at the model's input
    price plus the run's max output tokens (``prompting.run_call``) at its output
    price (``cost_usd`` ``None``
    when no price is known). The input so far is what the model read and wrote in
    the call that asked for the tools (the usage stored on ``message``: the
    provider's count, or litellm's), at most the context window less the answer
    (the engine drops old turns beyond it); the tool results are not known yet.
    Without stored usage, the answer's own tokens (``context.token_count``).
    """
    call = run_call(run)
    config = call.config
    if message.prompt_tokens is not None and message.completion_tokens is not None:
        so_far = message.prompt_tokens + message.completion_tokens
    else:
        answer = {"role": "assistant", "content": message.content, "tool_calls": message.tool_calls}
        so_far = token_count(model=config.litellm_model, message=answer)
    output_tokens = call.max_output_tokens
    input_tokens = min(so_far, max(config.context_window - output_tokens, 0))
    cost = worst_case_cost(config=config, prompt_tokens=input_tokens, max_tokens=output_tokens)
    input_price = output_price = None
    if cost is not None:  # per token, as the same rule prices one
        input_price = cost_for(config=config, prompt_tokens=1, completion_tokens=0)
        output_price = cost_for(config=config, prompt_tokens=0, completion_tokens=1)
    return NextStepEstimate(
        model=config.name,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        input_price_usd=input_price,
        output_price_usd=output_price,
    )


def _guarded_arguments(run: Run, invocation: ToolInvocation) -> dict[str, Any] | None:
    """The call's arguments after the ``tool_arguments`` guardrails, for the gate
    and to run; ``None`` when a guardrail blocked it (the call is denied with
    the reason, which the model reads). Redacted arguments become the ones
    executed; what acted is kept on the invocation (shown with its output)."""
    arguments, acts, blocked = guard_tool_arguments(
        run=run, invocation_id=invocation.pk, arguments=invocation.arguments_requested or {}
    )
    if acts and not blocked:
        try:
            invocation_mark(
                invocation_id=invocation.pk,
                status=IS.REQUESTED,
                expected=[IS.REQUESTED],
                arguments_executed=arguments,
                metadata={"guardrails": acts},
            )
        except ToolArgumentsInvalid as exc:
            blocked = f"The redacted arguments no longer fit the tool's schema ({exc})."
    if blocked:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.DENIED,
            result=f"{blocked} The tool was not run.",
            is_error=True,
            decision="deny",
            decision_explanation=blocked[:500],
            metadata={"guardrails": acts},
        )
        return None
    return arguments


def turn_gate(*, run: Run, message: Message) -> None:
    """Record the tool calls of ``message`` and put each through the gate.

    Replay-safe: invocations are keyed by (run, tool_call_id) and only ones
    still ``requested`` are gated. A request for approval carries what approving
    may cost: the tool's own estimate (``ToolSpec.cost_usd_estimate``) and the
    next model step's (``next_step_estimate``, once per turn). Precondition:
    inside ``transaction.atomic`` with ``run`` locked and its lease held by the
    caller.
    """
    user = run.conversation.owner
    next_step: NextStepEstimate | None = None
    handoff_in_turn = False
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
        # A tool the answering agent may not use, a handoff past the limit: not gated.
        refusal = tool_refusal(run=run, name=spec.name, handoff_in_turn=handoff_in_turn)
        handoff_in_turn = handoff_in_turn or is_handoff(spec.name)
        if refusal is not None:
            invocation_mark(
                invocation_id=invocation.pk, status=IS.FAILED, result=refusal, is_error=True
            )
            continue
        arguments = _guarded_arguments(run, invocation)
        if arguments is None:
            continue
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
        loop_event_of_run(
            run,
            "tool_call.gated",
            tool_call_id=invocation.tool_call_id,
            tool=spec.name,
            decision=decision.action,
        )
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
            if next_step is None:  # one model call follows the whole turn
                next_step = next_step_estimate(run=run, message=message)
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
                cost=CostEstimate(tool_cost_usd=spec.cost_usd_estimate, next_step=next_step),
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
    written = False
    for invocation in _turn(run, message_id):
        if invocation.tool_call_id in stored:
            continue
        content = invocation_tool_message(invocation=invocation)["content"]
        output_acts: list[dict[str, Any]] = []
        if invocation.status in (IS.SUCCEEDED, IS.FAILED) and invocation.started_at:
            took = (
                invocation.finished_at - invocation.started_at if invocation.finished_at else None
            )
            loop_event_of_run(
                run,
                "tool_call.executed",
                tool_call_id=invocation.tool_call_id,
                tool=invocation.tool_name,
                status=invocation.status,
                duration_ms=None if took is None else round(took.total_seconds() * 1000),
            )
        if invocation.status in (IS.SUCCEEDED, IS.FAILED):  # what the tool itself returned
            content, output_acts = guard_tool_output(
                run=run, invocation_id=invocation.pk, content=content
            )
        acts = [*invocation.metadata.get("guardrails", []), *output_acts]
        extra = {}
        changed = any(act["action"] in ("block", "redact") for act in output_acts)
        if invocation.metadata.get("mcp_result") and not changed:  # drawn as MCP content
            extra = {
                "mcp_result": invocation.metadata["mcp_result"],
                "mcp_server": invocation.metadata.get("mcp_server", ""),
            }
        Message.objects.create(
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
                **({"guardrails": acts} if acts else {}),
                **extra,
            },
        )
        written = True
    if written:  # each output is drawn inside its call's step
        events.run_tools_changed(run_id=run.pk)


def turn_continue(*, run: Run, message_id: int) -> None:
    """Move a locked run on from the state of its current tool turn.

    - Stop asked for → pending approvals and calls cancelled, run cancelled;
    - some invocation awaits a person → ``awaiting_approval`` (no worker waits);
    - some invocation is approved, running or not yet gated → ``executing_tools``,
      with a step scheduled on commit (a call another worker still runs is left to
      it: the step finds nothing approved, and the recovery job covers a worker
      that died);
    - else, some call of an agent is still answered by its sub-run →
      ``awaiting_parts`` (``conversations.subagents``; no worker waits);
    - all settled → tool messages written, next model call (``calling_llm``).

    The caller's lease on the run, if any, is given up. Precondition: inside
    ``transaction.atomic`` with ``run`` locked.
    """
    if run.is_terminal:
        return
    if run.cancel_requested:
        run_stop(run=run)
        return
    turn = _turn(run, message_id)
    statuses = {invocation.status for invocation in turn if not _in_sub_run(invocation)}
    if IS.AWAITING_APPROVAL in statuses:
        target = S.AWAITING_APPROVAL
    elif statuses & {IS.APPROVED, IS.RUNNING, IS.REQUESTED}:
        target = S.EXECUTING_TOOLS
    elif any(_in_sub_run(invocation) for invocation in turn):
        target = S.AWAITING_PARTS
    else:
        turn_write_results(run=run, message_id=message_id)
        target = S.CALLING_LLM
    if target != run.status:
        run_transition(run=run, to=target)
        return
    if run.lease_owner:
        run_lease_release(run=run)
    if target == S.EXECUTING_TOOLS and IS.APPROVED in statuses:
        run_step_schedule(run_id=run.pk)


def turn_approved(*, run: Run, message_id: int) -> list[int]:
    """Ids of the turn's approved invocations, to run under the caller's lease (the
    engine's heartbeat keeps it while they run, however long). An approved handoff
    is carried out here instead (``handoffs.handoff_execute``: the run goes on
    with the target agent), under the run's lock, and is not among them.

    Precondition: inside ``transaction.atomic`` with ``run`` locked and leased.
    """
    approved = [inv for inv in _turn(run, message_id) if inv.status == IS.APPROVED]
    for invocation in approved:
        if is_handoff(invocation.tool_name):
            handoff_execute(run=run, invocation=invocation)
        elif is_agent_tool(invocation.tool_name):
            subrun_start(run=run, invocation=invocation)
    return [
        inv.pk
        for inv in approved
        if not is_handoff(inv.tool_name) and not is_agent_tool(inv.tool_name)
    ]


def _in_sub_run(invocation: ToolInvocation) -> bool:
    """Whether ``invocation`` is a call of an agent still answered by its sub-run."""
    return invocation.status == IS.RUNNING and "sub_run_id" in invocation.metadata


def turn_running(*, run: Run, message_id: int) -> list[int]:
    """Ids of the turn's invocations left ``running``: for a resumed step, the calls
    the worker that held the run before was running when it died (not the calls of
    agents: their sub-runs answer them, whatever became of that worker)."""
    return [
        inv.pk
        for inv in _turn(run, message_id)
        if inv.status == IS.RUNNING and not _in_sub_run(inv)
    ]


def agent_part_ended(*, orchestrator_id: int, kind: str, part_id: int, **_signal: Any) -> None:
    """Receiver of ``runs.run_part_ended`` (``apps.ready``): sub-runs of answer run
    ``orchestrator_id`` ended (``conversations.subagents``). Other kinds are ignored.

    Each ended sub-run's call, still ``running``, gets its result
    (``subrun_result``: the agent's answer, or why there is none); then, if the run
    waits in ``awaiting_parts``, it goes on (:func:`turn_continue`). Idempotent (the
    recovery job may send it again, with any part): the run is locked first (the
    lock order), then the calls, and only calls still ``running`` are settled.
    """
    if kind != Run.Kind.ANSWER:
        return
    with transaction.atomic(), audit_deferred():
        run = run_lock(run_id=orchestrator_id)
        if run is None:
            return
        ended = [
            (part, info)
            for part in run.parts.filter(status__in=Run.TERMINAL)
            if (info := subrun_info(part)) is not None
        ]
        calls = {
            inv.pk: inv
            for inv in ToolInvocation.objects.select_for_update(no_key=True)
            .filter(run_id=run.pk, status=IS.RUNNING)
            .order_by("pk")
        }
        message_id = None
        for part, info in ended:
            invocation = calls.get(info["invocation_id"])
            if invocation is None:
                continue
            result, is_error = subrun_result(part)
            invocation_mark(
                invocation_id=invocation.pk,
                status=IS.FAILED if is_error else IS.SUCCEEDED,
                expected=[IS.RUNNING],
                result=result,
                is_error=is_error,
            )
            audit_record(
                action="agent.subrun_ended",
                actor=None,
                target_type="run",
                target_id=run.pk,
                data={
                    "sub_run_id": part.pk,
                    "status": part.status,
                    "tool_call_id": invocation.tool_call_id,
                    "conversation_id": run.conversation_id,
                },
            )
            message_id = invocation.message_id
        if message_id is None:
            return
        events.run_tools_changed(run_id=run.pk)
        if run.status == S.AWAITING_PARTS:
            turn_continue(run=run, message_id=message_id)


def approval_lock_subject(*, approval: ApprovalRequest, **_signal: Any) -> None:
    """Receiver of ``approvals.signals.approval_deciding``: lock the approval's run,
    then its invocation, before approvals locks the request (the lock order in
    ``conversations.runs``), so a decision and a Stop (or an expiry) queue on the
    run instead of deadlocking."""
    if approval.run_id is not None:
        run_lock(run_id=approval.run_id)
    ToolInvocation.objects.select_for_update(no_key=True).filter(pk=approval.invocation_id).first()


def approval_decided(*, approval: ApprovalRequest, **_signal: Any) -> None:
    """Receiver of ``approvals.signals.approval_decided``: apply a decision to its
    invocation and run.

    Called by approvals inside the decision's transaction (the run, the
    invocation and the request are locked, in that order, and the request is
    already saved as approved, denied or expired). Approved → the invocation is
    approved with the effective (possibly edited) arguments; denied → its result
    tells the model it was denied, with the reason; expired → "not approved in
    time". When the turn has no approval left pending, the run moves on
    (execution is scheduled on commit). A decision for an invocation that is no
    longer awaiting approval changes nothing.
    """
    run_id = approval.run_id
    if run_id is None:
        run_id = (
            ToolInvocation.objects.filter(pk=approval.invocation_id)
            .values_list("run_id", flat=True)
            .first()
        )
        if run_id is None:
            return
    run = run_lock(run_id=run_id)
    invocation = (
        ToolInvocation.objects.select_for_update(no_key=True)
        .filter(pk=approval.invocation_id)
        .first()
    )
    if run is None or invocation is None:
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
    loop_event_of_run(
        run,
        "tool_call.decided",
        tool_call_id=invocation.tool_call_id,
        tool=invocation.tool_name,
        decision=status,
        actor_id=approval.decided_by_id,
        waited_ms=(
            round((approval.decided_at - approval.created_at).total_seconds() * 1000)
            if approval.decided_at and approval.created_at
            else None
        ),
    )
    events.run_tools_changed(run_id=run.pk)
    if run.status == S.AWAITING_APPROVAL:
        # Not None: invocations are recorded by turn_gate, with their message's id.
        turn_continue(run=run, message_id=cast(int, invocation.message_id))


def parts_stop(*, run: Run, actor: Any) -> None:
    """Stop the unfinished parts of locked orchestrating run ``run`` (a compare's
    answers, a chain's current step), each locked after it (the lock order), at once
    or, while a worker streams one, by its Stop flag (``runs.run_cancel_request``).
    Call inside ``transaction.atomic`` before stopping ``run`` itself; their ends then
    find it stopped and do nothing."""
    part_ids = run.parts.exclude(status__in=Run.TERMINAL).order_by("position", "pk")
    for part_id in list(part_ids.values_list("pk", flat=True)):
        part = run_lock(run_id=part_id)
        if part is None or part.is_terminal:
            continue
        if not run_cancel_request(run=part, actor=actor):
            run_stop(run=part, actor=actor)


def run_stop(*, run: Run, actor: Any = None, metadata: dict[str, Any] | None = None) -> None:
    """Stop locked ``run`` now: its unstarted tool calls are cancelled (each
    invocation, then its pending approval request, in the lock order), and the run
    moves to ``cancelled``. ``actor``: who pressed Stop (``None``: the system);
    ``metadata``: the run's new metadata, written with the transition.

    Precondition: inside ``transaction.atomic`` with ``run`` locked.
    """
    open_calls = list(
        ToolInvocation.objects.filter(
            run_id=run.pk, status__in=(IS.REQUESTED, IS.AWAITING_APPROVAL, IS.APPROVED)
        ).order_by("id")
    )
    for invocation in open_calls:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.CANCELLED,
            result=CANCELLED_RESULT,
            is_error=True,
        )
    approvals_cancel_for_run(run_id=run.pk, actor=actor)
    if open_calls:
        events.run_tools_changed(run_id=run.pk)
    run_transition(run=run, to=S.CANCELLED, actor=actor, metadata=metadata)
