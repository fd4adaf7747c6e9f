"""Carrying out an approved handoff: the run goes on with the target agent.

A handoff is a tool call (``conversations.agents``): recorded, refused when the
answering agent may not make it (``agents.tool_refusal``: not its target, the
run's handoff limit, a second one in the turn), gated like any other. Once
approved, :func:`handoff_execute` (called by ``toolphase.turn_approved``, the run
locked) switches the run to the target: its settings are resolved as a new run's
(``prompting.call_settings`` with the agent) and recorded on the run
(``Run.model_config``, ``prompt_version``, ``parameters``), so the next model call
(``prompting.run_call``) uses the target's instructions, model and parameters, and
``toolphase.tools_offered`` its tools. ``Run.metadata["handoffs"]`` lists every
handoff made (from, to, reason, note, transfer mode, the step it was made at:
``agents.transfer_messages`` reads the last); each is audited as ``agent.handoff``.
"""

from __future__ import annotations

from typing import Any

from audit.services import audit_record
from conversations.agents import agents_visible, run_agent
from conversations.loopevents import loop_event_of_run
from conversations.models import AgentProfile, Run
from conversations.prompting import CallSettings, call_settings
from prompts.errors import PROMPT_REFUSALS
from tools.models import ToolInvocation
from tools.services import invocation_mark

IS = ToolInvocation.Status


def agent_settings(
    *, run: Run, target: dict[str, Any] | None
) -> tuple[AgentProfile | None, CallSettings | None, str]:
    """The agent ``target`` (a handoff or agent tool of the run's agent record) names
    and the settings a call of it in ``run``'s conversation is made with:
    ``(agent, settings, "")``, or ``(agent or None, None, why not)`` when it is gone or
    no longer visible to the conversation's owner, its instructions cannot be
    resolved, or its model is disabled (the reason is for the model and people)."""
    owner = run.conversation.owner
    agent = (
        agents_visible(user=owner).filter(pk=target["id"]).first() if target is not None else None
    )
    if agent is None:
        return None, None, "That agent is no longer available."
    try:
        settings = call_settings(conversation=run.conversation, agent=agent)
    except PROMPT_REFUSALS as error:
        return agent, None, f"The agent {agent.name}'s instructions cannot be used: {error}"
    if not settings.config.enabled:
        return agent, None, f"The agent {agent.name}'s model {settings.config.name} is disabled."
    return agent, settings, ""


def handoff_execute(*, run: Run, invocation: ToolInvocation) -> None:
    """Carry out approved handoff ``invocation`` of locked ``run``: the run's next
    model call is the target agent's. The invocation ends ``succeeded`` with a result
    naming the agent now answering, or ``failed`` with why no handoff was made (the
    target is gone or no longer visible to the conversation's owner, or its
    instructions cannot be resolved, or its model is disabled): the current agent then
    answers.

    Precondition: inside ``transaction.atomic`` with ``run`` locked (and leased).
    Writes the run's ``model_config``, ``prompt_version``, ``parameters``,
    ``metadata`` and, when the target sets one, its step limit (``max_steps``, counted
    from the handoff); audits and sends the loop event ``agent.handoff``.
    """
    current = run_agent(run) or {}
    target = next(
        (h for h in current.get("handoffs", []) if h["tool"] == invocation.tool_name), None
    )
    arguments = invocation.arguments_executed or invocation.arguments_requested or {}
    owner = run.conversation.owner
    agent, settings, problem = agent_settings(run=run, target=target)
    if settings is None or agent is None:
        invocation_mark(
            invocation_id=invocation.pk,
            status=IS.FAILED,
            expected=[IS.APPROVED],
            result=f"No handoff was made: {problem} Answer the user yourself.",
            is_error=True,
        )
        return
    parameters = settings.record()
    handoff: dict[str, Any] = {
        "from": {"id": current.get("id"), "name": current.get("name", "")},
        "to": {"id": agent.pk, "name": agent.name},
        "reason": str(arguments.get("reason", ""))[:500],
        "note": str(arguments.get("note", ""))[:4000],
        "mode": agent.transfer,
        "step": run.step,
        "tool_call_id": invocation.tool_call_id,
        "invocation_id": invocation.pk,
    }
    run.model_config = settings.config
    run.prompt_version = settings.version
    run.parameters = parameters
    run.metadata = {**run.metadata, "handoffs": [*run.metadata.get("handoffs", []), handoff]}
    if agent.max_steps:  # the target's own limit, counted from the handoff
        run.max_steps = run.step + agent.max_steps
    run.save(
        update_fields=["model_config", "prompt_version", "parameters", "metadata", "max_steps"]
    )
    invocation_mark(
        invocation_id=invocation.pk,
        status=IS.SUCCEEDED,
        expected=[IS.APPROVED],
        result=f"Handed off to {agent.name}, who answers from now on.",
        is_error=False,
        metadata={"handoff": handoff},
    )
    loop_event_of_run(
        run,
        "agent.handoff",
        tool_call_id=invocation.tool_call_id,
        from_agent=handoff["from"]["name"],
        to_agent=agent.name,
        mode=agent.transfer,
    )
    audit_record(
        action="agent.handoff",
        actor=owner,
        target_type="run",
        target_id=run.pk,
        data={
            "from": handoff["from"],
            "to": handoff["to"],
            "reason": handoff["reason"],
            "mode": handoff["mode"],
            "tool_call_id": invocation.tool_call_id,
            "conversation_id": run.conversation_id,
        },
    )
