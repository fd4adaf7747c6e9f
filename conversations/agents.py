"""Agent profiles at work in a run: the tools an agent may use, its handoffs, and
what history the agent handed a run reads.

A run started with an agent records it (``prompting.CallSettings.record``:
``Run.parameters["agent"]``, see :func:`agent_record`): its id and name, the tools
it may use, the agents it may hand off to (each with its tool's name), its
handoff limit and its transfer mode. Everything here reads that record, so an
agent edited mid-run does not change a run already going.

- **Tools** (:func:`tool_allowed`, the one rule): an agent's run is offered only
  the agent's tools among those its user may use, plus one ``handoff_to_<agent>``
  tool per target; a call of any other tool is refused with a clear result
  (:func:`tool_refusal`). A run without an agent is offered every tool its user may
  use, and no handoff.
- **Handoffs** are dynamic tools (``tools.registry.ToolRegistry.dynamic_register``,
  :func:`handoff_spec`): a call passes the gate like any other tool call (policies
  match ``handoff_to_*``); an approved one is carried out by
  ``conversations.handoffs.handoff_execute``.
- **Transfer** (:func:`transfer_messages`, in ``engine.history_with_ids``): after a
  handoff, the history sent is the full history, the history without the previous
  agent's tool traffic, or the previous agent's note and the last user message.
"""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet
from django.utils.text import slugify

from accounts.sharing import visible_to
from conversations.models import AgentProfile, Message, Run
from tools.registry import ToolError, ToolSpec

HANDOFF_PREFIX = "handoff_to_"
_HANDOFF_NAME = re.compile(rf"^{HANDOFF_PREFIX}[a-z0-9_]{{1,50}}$")
ASK_PREFIX = "ask_agent_"
_ASK_NAME = re.compile(rf"^{ASK_PREFIX}[a-z0-9_]{{1,50}}$")
Transfer = AgentProfile.Transfer

HANDOFF_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "description": "Why this agent should take over."},
        "note": {
            "type": "string",
            "description": "What the next agent should know: a short summary of the "
            "conversation so far.",
        },
    },
    "required": ["reason"],
    "additionalProperties": False,
}

ASK_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "description": "What the agent should do: everything it needs to know, since "
            "it reads nothing else of this conversation.",
        },
    },
    "required": ["task"],
    "additionalProperties": False,
}


def agents_visible(*, user: Any) -> QuerySet[AgentProfile]:
    """The agents ``user`` may see and use: their own, the ones shared with everyone
    or with one of their groups (``accounts.sharing.visible_to``)."""
    return visible_to(AgentProfile, user=user)


def handoff_tool_name(agent: AgentProfile) -> str:
    """The tool a handoff to ``agent`` is: ``handoff_to_<slug of its name>``
    (``handoff_to_agent_<id>`` when its name has no letter or digit)."""
    slug = slugify(agent.name).replace("-", "_")[:40] or f"agent_{agent.pk}"
    return f"{HANDOFF_PREFIX}{slug}"


def ask_tool_name(agent: AgentProfile) -> str:
    """The tool that calls ``agent`` as a tool: ``ask_agent_<slug of its name>``
    (``ask_agent_agent_<id>`` when its name has no letter or digit)."""
    slug = slugify(agent.name).replace("-", "_")[:40] or f"agent_{agent.pk}"
    return f"{ASK_PREFIX}{slug}"


def _targets(
    related: QuerySet[AgentProfile], *, agent: AgentProfile, user: Any, name: Any
) -> list[dict[str, Any]]:
    """``[{"id", "name", "tool", "description"}]`` of the agents in ``related`` that
    ``user`` may see, ``agent`` itself left out, each with its tool's name
    (``name(target)``; a second target of one name gets its id appended). One query."""
    targets = (
        related.exclude(pk=agent.pk)
        .filter(pk__in=agents_visible(user=user).values("pk"))
        .order_by("name", "pk")
    )
    out: list[dict[str, Any]] = []
    for target in targets:
        tool = name(target)
        if any(t["tool"] == tool for t in out):  # two targets of one name
            tool = f"{tool}_{target.pk}"
        out.append(
            {"id": target.pk, "name": target.name, "tool": tool, "description": target.description}
        )
    return out


def agent_record(agent: AgentProfile, *, user: Any, sub_run: bool = False) -> dict[str, Any]:
    """What a run of ``user``'s keeps of ``agent`` (``Run.parameters["agent"]``):
    ``{"id", "name", "tools": [names], "handoffs": [{"id", "name", "tool",
    "description"}], "agent_tools": [the same shape], "max_handoffs", "max_steps"
    (int or None), "transfer"}``. Targets (of handoffs and agent tools) are only those
    ``user`` may see (a shared agent's private targets are not even named); one query
    for each. ``sub_run``: the agent answers a task in a sub-run
    (``conversations.subagents``): it may neither hand off nor call agents (one
    level, so a sub-run can never start another)."""
    return {
        "id": agent.pk,
        "name": agent.name,
        "tools": sorted({str(name) for name in agent.tools or []}),
        "handoffs": []
        if sub_run
        else _targets(agent.handoff_targets.all(), agent=agent, user=user, name=handoff_tool_name),
        "agent_tools": []
        if sub_run
        else _targets(agent.agent_tools.all(), agent=agent, user=user, name=ask_tool_name),
        "max_handoffs": agent.max_handoffs,
        "max_steps": agent.max_steps,
        "transfer": agent.transfer,
    }


def run_max_steps(parameters: dict[str, Any], *, default: int) -> int:
    """The model calls a run recorded with ``parameters`` may make: its agent's
    ``max_steps`` when set, else ``default``."""
    agent = parameters.get("agent")
    steps = agent.get("max_steps") if isinstance(agent, dict) else None
    return steps if isinstance(steps, int) and steps > 0 else default


def run_agent(run: Run) -> dict[str, Any] | None:
    """The agent now answering in ``run`` (its :func:`agent_record`), or ``None``."""
    agent = (run.parameters or {}).get("agent")
    return agent if isinstance(agent, dict) else None


def is_handoff(name: str) -> bool:
    """Whether ``name`` is a handoff tool's name."""
    return bool(_HANDOFF_NAME.match(name))


async def _not_run(arguments: dict[str, Any], ctx: Any) -> Any:
    raise ToolError("A handoff is carried out by its run, not run as a tool.")


def handoff_spec(name: str, *, target: dict[str, Any] | None = None) -> ToolSpec | None:
    """The dynamic tool called ``name`` if it is a handoff's (else ``None``): the
    registry's resolver (``ConversationsConfig.ready``) and, with ``target`` (a
    handoff of :func:`agent_record`), the tool offered for it. Not read-only, not
    destructive: with no policy the gate asks."""
    if not is_handoff(name):
        return None
    description = "Hand the conversation off to another agent, who answers from then on."
    if target is not None:
        description = f"Hand the conversation off to the agent {target['name']}" + (
            f": {target['description']}" if target.get("description") else "."
        )
    return ToolSpec(
        name=name,
        description=description,
        parameters=HANDOFF_PARAMETERS,
        handler=_not_run,
        read_only=False,
        destructive=False,
        idempotent=True,
        open_world=False,
        source="agent",
        metadata={"dynamic": True, "handoff": True},
    )


def is_agent_tool(name: str) -> bool:
    """Whether ``name`` is the name of a tool that calls an agent (``ask_agent_*``)."""
    return bool(_ASK_NAME.match(name))


def ask_spec(name: str, *, target: dict[str, Any] | None = None) -> ToolSpec | None:
    """The dynamic tool called ``name`` if it calls an agent (else ``None``): the
    registry's resolver (``ConversationsConfig.ready``) and, with ``target`` (an
    agent tool of :func:`agent_record`), the tool offered for it. Carried out by a
    sub-run (``conversations.subagents``), whose own tool calls pass the gate too.
    Not read-only (the agent spends the user's budget): with no policy the gate asks."""
    if not is_agent_tool(name):
        return None
    description = "Ask another agent to do a task; its answer is the result."
    if target is not None:
        description = f"Ask the agent {target['name']} to do a task; its answer is the result" + (
            f". {target['description']}" if target.get("description") else "."
        )
    return ToolSpec(
        name=name,
        description=description,
        parameters=ASK_PARAMETERS,
        handler=_not_run_agent,
        read_only=False,
        destructive=False,
        idempotent=False,
        open_world=False,
        source="agent",
        metadata={"dynamic": True, "agent_tool": True},
    )


async def _not_run_agent(arguments: dict[str, Any], ctx: Any) -> Any:
    raise ToolError("An agent tool is carried out by a sub-run, not run as a tool.")


def agent_target(run: Run, name: str) -> dict[str, Any] | None:
    """The agent (``{"id", "name", "tool", "description"}``) that tool ``name`` of the
    agent answering ``run`` calls, or ``None``."""
    agent = run_agent(run) or {}
    return next((t for t in agent.get("agent_tools", []) if t["tool"] == name), None)


def tool_allowed(run: Run, name: str) -> bool:
    """Whether the agent answering ``run`` may use the tool ``name`` (the one rule):
    one of its tools, its handoffs or its agent tools; with no agent, any tool but a
    handoff or an agent tool."""
    agent = run_agent(run)
    if agent is None:
        return not is_handoff(name) and not is_agent_tool(name)
    return (
        name in agent["tools"]
        or any(h["tool"] == name for h in agent["handoffs"])
        or agent_target(run, name) is not None
    )


def tools_for_run(*, run: Run, specs: list[ToolSpec]) -> list[ToolSpec]:
    """The tools offered to ``run``'s next model call: those of ``specs`` (what its
    user may use) its agent may use (:func:`tool_allowed`), then one per handoff and
    one per agent tool."""
    allowed = [spec for spec in specs if tool_allowed(run, spec.name)]
    agent = run_agent(run)
    for target in agent["handoffs"] if agent is not None else []:
        spec = handoff_spec(target["tool"], target=target)
        if spec is not None:
            allowed.append(spec)
    for target in agent.get("agent_tools", []) if agent is not None else []:
        spec = ask_spec(target["tool"], target=target)
        if spec is not None:
            allowed.append(spec)
    return allowed


def tool_refusal(*, run: Run, name: str, handoff_in_turn: bool) -> str | None:
    """Why ``run`` may not make a call of tool ``name`` now (the result the model
    reads, the tool not run), or ``None``. ``handoff_in_turn``: an earlier call of
    the same turn is a handoff (one per turn). A handoff past the run's limit (the
    answering agent's ``max_handoffs``) is refused: the agent answers itself."""
    agent = run_agent(run)
    if not tool_allowed(run, name):
        who = f"The agent {agent['name']}" if agent is not None else "This conversation"
        return (
            f"{who} may not use the tool {name!r}; it was not run. "
            "Call only the tools you were given."
        )
    if agent is None or not is_handoff(name):
        return None
    if handoff_in_turn:
        return "Only one handoff per turn: this one was not made."
    done = len((run.metadata or {}).get("handoffs") or [])
    if done >= agent["max_handoffs"]:
        return (
            f"Handoff limit reached: this run has handed off {done} times (at most "
            f"{agent['max_handoffs']}). No handoff was made: answer the user yourself."
        )
    return None


def _handoff_line(handoff: dict[str, Any]) -> str:
    line = f"The agent {handoff['from']['name']} handed this conversation to you. "
    line += f"Reason: {handoff['reason']}"
    if handoff.get("note"):
        line += f"\nIts note: {handoff['note']}"
    return line


def transfer_messages(
    *, run: Run, messages: list[dict[str, Any]], ids: list[int | None]
) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The history (``messages``, system prompt first, and their stored ``ids``) as
    the agent ``run`` was last handed to reads it, by its transfer mode
    (``Run.metadata["handoffs"][-1]["mode"]``):

    - ``full``: unchanged;
    - ``no_tools``: before the handoff, tool results and the tool calls of assistant
      messages are left out (an assistant message with no text with them); the
      handoff's reason and note follow the system prompt;
    - ``summary``: the system prompt with the handoff's reason and note (the
      previous agent's summary), then the last user message before the handoff.

    The new agent's own messages (those after its first answer began) are always
    kept. No handoff in ``run``: unchanged, no query; else one query.
    """
    handoffs = (run.metadata or {}).get("handoffs") or []
    if not handoffs or handoffs[-1]["mode"] == Transfer.FULL:
        return messages, ids
    handoff = handoffs[-1]
    boundary = (
        Message.objects.filter(
            run_id=run.pk, role=Message.Role.ASSISTANT, run_step__gt=handoff["step"]
        )
        .order_by("id")
        .values_list("pk", flat=True)
        .first()
    )

    def before(message_id: int | None) -> bool:
        return message_id is not None and (boundary is None or message_id < boundary)

    system = {**messages[0], "content": f"{messages[0]['content']}\n\n{_handoff_line(handoff)}"}
    out: list[dict[str, Any]] = [system]
    out_ids: list[int | None] = [ids[0]]
    rest = list(zip(messages[1:], ids[1:], strict=True))
    if handoff["mode"] == Transfer.SUMMARY:
        users = [(m, i) for m, i in rest if before(i) and m["role"] == "user"]
        kept = users[-1:] + [(m, i) for m, i in rest if not before(i)]
    else:
        kept = []
        for m, i in rest:
            if before(i) and m["role"] == "tool":
                continue
            if before(i) and m.get("tool_calls"):
                if not m.get("content"):
                    continue
                m = {"role": m["role"], "content": m["content"]}
            kept.append((m, i))
    for m, i in kept:
        out.append(m)
        out_ids.append(i)
    return out, out_ids
