"""Agents as tools (the manager pattern): a call of ``ask_agent_<agent>`` is answered by
a sub-run of that agent.

An agent may call the agents of its ``agent_tools`` as tools (``agents.ask_spec``:
one ``task`` argument). Such a call is a tool call like any other: recorded, refused
when the answering agent may not make it, gated (with no policy the gate asks).
Once approved, :func:`subrun_start` (called by ``toolphase.turn_approved``, the run
locked) starts a part of the run (``Run.orchestrator``, docs/runs.md): an ``answer``
run of the called agent, with its instructions, model, parameters, tools and step
limit, that reads only the task (``chains.part_prompt``: no exchange before it). The
invocation is ``running`` meanwhile and the calling run waits in ``awaiting_parts``
(``toolphase.turn_continue``), durably: the sub-run's own tool calls pass the gate,
may wait for people and survive a worker's death as any run's do, and its model
calls are charged through the engine's one path (usage records carry its run id).

When the sub-run ends, ``runs.run_part_ended`` reaches
``toolphase.agent_part_ended``: the invocation succeeds with the sub-run's answer
(:func:`subrun_result`), or fails with why, and the calling run goes on. A sub-run
may neither hand off nor call agents (``agents.agent_record`` with ``sub_run``):
one level. Stop on the calling run stops its sub-runs (``toolphase.parts_stop``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from audit.services import audit_record
from conversations import events
from conversations.agents import agent_record, agent_target, run_max_steps
from conversations.chains import part_answer
from conversations.handoffs import agent_settings
from conversations.loopevents import loop_event_of_run
from conversations.models import Run
from conversations.runs import run_step_schedule
from tools.models import ToolInvocation
from tools.services import invocation_mark, result_truncate

IS = ToolInvocation.Status
S = Run.Status

#: The longest answer of a sub-run passed back as its call's result (characters).
MAX_RESULT_CHARS = 20_000


def subrun_info(run: Run) -> dict[str, Any] | None:
    """What a sub-run recorded of the call it answers (``parameters["agent_part"]``:
    ``{"prompt", "after", "invocation_id", "tool_call_id", "agent"}``), or ``None``
    for any other run. No query."""
    info = (run.parameters or {}).get("agent_part")
    return info if run.orchestrator_id is not None and isinstance(info, dict) else None


def subrun_start(*, run: Run, invocation: ToolInvocation) -> Run | None:
    """Answer approved agent-tool ``invocation`` of locked ``run`` with a sub-run of
    the agent it calls; return the sub-run (queued, its step scheduled on commit), or
    ``None`` when none could start: the invocation then ``failed`` with why (the
    agent is gone or no longer visible to the conversation's owner, its instructions
    cannot be resolved, its model is disabled, the task is empty).

    The invocation becomes ``running`` (``metadata["sub_run_id"]``); the sub-run is
    drawn in the calling run's parts (``events.run_part_appended``), audited as
    ``agent.subrun_started`` and sent as the loop event of that name.
    Precondition: inside ``transaction.atomic`` with ``run`` locked (and leased).
    """
    target = agent_target(run, invocation.tool_name)
    arguments = invocation.arguments_executed or invocation.arguments_requested or {}
    task = str(arguments.get("task", "")).strip()
    owner = run.conversation.owner
    agent, settings, problem = agent_settings(run=run, target=target)
    if agent is not None and settings is not None and not task:
        problem, settings = "The task is empty.", None
    if agent is None or settings is None:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.FAILED,
            expected=[IS.APPROVED],
            result=f"The agent was not asked: {problem}",
            is_error=True,
        )
        return None
    caller = str(((run.parameters or {}).get("agent") or {}).get("name", ""))
    settings = dataclasses.replace(settings, agent=agent_record(agent, user=owner, sub_run=True))
    parameters = settings.record()
    parameters["agent_part"] = {
        "prompt": task,
        "after": None,
        "invocation_id": invocation.pk,
        "tool_call_id": invocation.tool_call_id,
        "agent": agent.name,
        "caller": caller,
    }
    position = run.parts.count()
    part = Run.objects.create(
        conversation_id=run.conversation_id,
        user_message_id=run.user_message_id,
        parent_id=run.parent_id,
        orchestrator=run,
        position=position,
        model_config=settings.config,
        prompt_version=settings.version,
        parameters=parameters,
        max_steps=run_max_steps(parameters, default=Run.DEFAULT_MAX_STEPS),
        metadata={"agent_part": True},
    )
    run_step_schedule(run_id=part.pk)
    invocation_mark(
        invocation_id=invocation.pk,
        status=IS.RUNNING,
        expected=[IS.APPROVED],
        metadata={"sub_run_id": part.pk, "agent": agent.name},
    )
    run.metadata = {**run.metadata, "agent_parts": [*run.metadata.get("agent_parts", []), part.pk]}
    run.save(update_fields=["metadata"])
    part.user_message = run.user_message
    events.run_part_appended(orchestrator_id=run.pk, part=part)
    loop_event_of_run(
        run,
        "agent.subrun_started",
        tool_call_id=invocation.tool_call_id,
        agent=agent.name,
        sub_run_id=part.pk,
    )
    audit_record(
        action="agent.subrun_started",
        actor=owner,
        target_type="run",
        target_id=run.pk,
        data={
            "caller": caller,
            "agent": {"id": agent.pk, "name": agent.name},
            "sub_run_id": part.pk,
            "tool_call_id": invocation.tool_call_id,
            "conversation_id": run.conversation_id,
        },
    )
    return part


def subrun_result(part: Run) -> tuple[str, bool]:
    """What ended sub-run ``part`` gives its call: ``(result, is_error)``. Its answer
    when it completed (cut at :data:`MAX_RESULT_CHARS`); why not, when it failed or
    was stopped. One query."""
    info = subrun_info(part) or {}
    name = info.get("agent", "The agent")
    if part.status == S.COMPLETED:
        answer = part_answer(part)
        return result_truncate(text=answer or f"{name} gave no answer.", limit=MAX_RESULT_CHARS), (
            not answer
        )
    if part.status == S.CANCELLED:
        return f"The agent {name} was stopped before it answered.", True
    return f"The agent {name} failed: {part.error or 'no reason given.'}", True
