"""Sequential chains and reflection rounds: a ``chain`` run and its parts.

Running a chain (``prompts.Chain``) on a message is one orchestrating run
(``Run.kind`` ``chain``) that waits in ``awaiting_parts`` while its parts, ordinary
``answer`` runs with ``orchestrator`` set, answer one after another (docs/runs.md)::

    step 1 (round 1) → [judge] → [step 1, round 2 → judge …] → step 2 → … → completed

- :func:`chain_start` (called by ``services.message_send`` in its transaction) copies
  the chain's steps into the run's ``parameters`` (an edit of the chain later does
  not change a run begun), starts the first part and moves the run to
  ``awaiting_parts``.
- A part's model call reads the conversation before the chain and, as its last user
  message, the step's template rendered (:func:`part_prompt`, consulted by
  ``engine.history_with_ids``); it is offered tools only when its step allows them
  (:func:`part_tools_allowed`, consulted by ``toolphase.tools_offered``). Its tool
  calls pass the gate as any run's do; an approval keeps the part in
  ``awaiting_approval`` and the chain in ``awaiting_parts``: nothing else waits.
- When a part ends, :func:`chain_part_ended` (a ``runs.run_part_ended`` receiver,
  connected in ``ConversationsConfig.ready``) locks the chain run and starts what
  comes next: the step's judge, another round, the next step; or ends the chain,
  its last answer copied into an assistant message of the chain run (what later
  exchanges read). A part that failed or was stopped fails (or stops) the chain.
- Reflection: a step with a judge template is judged after each round while rounds
  remain; the judge is a part too (streamed, gated, charged like any call) whose
  answer must be a JSON verdict, validated by :data:`VERDICT_SCHEMA`.

Every part is charged through the engine's one path (``charging.call_admit`` and
``call_settle``, its usage records carrying the part's run id); each move of the
chain is a transition of the state machine, audited with the part, step and round.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from jsonschema import Draft202012Validator

from audit.services import audit_deferred
from conversations import events
from conversations.models import Message, ModelConfig, Run
from conversations.runs import run_lock, run_step_schedule, run_transition
from conversations.selectors import model_configs_chat
from prompts.errors import PROMPT_REFUSALS
from prompts.models import Chain
from prompts.templating import template_check, template_render

logger = logging.getLogger(__name__)

S = Run.Status

#: What a judge must answer (validated with ``jsonschema``).
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["pass", "revise"]},
        "feedback": {"type": "string"},
    },
    "required": ["verdict", "feedback"],
}
_VERDICT = Draft202012Validator(VERDICT_SCHEMA)
#: Appended to every judge prompt: the answer's required shape.
JUDGE_INSTRUCTION = (
    "\n\nAnswer with one JSON object and nothing else, of this shape: "
    '{"verdict": "pass" or "revise", "feedback": "what to change; empty when it passes"}'
)
#: The longest a rendered step prompt may be (characters): it holds earlier answers.
MAX_PROMPT_CHARS = 200_000


class ChainRefused(ValueError):
    """A chain cannot start (a step's model is unavailable); ``str`` is for people."""


@dataclass(frozen=True)
class PartPrompt:
    """What a chain part's model call reads (:func:`part_prompt`): the exchanges up to
    ``after`` (the run the chain follows; ``None``: none), then user message
    ``message_id`` (the chain's input) with ``text`` in place of its content."""

    after: int | None
    message_id: int
    text: str


def part_prompt(run: Run) -> PartPrompt | None:
    """For a chain's part or an agent's sub-run (``conversations.subagents``: its task,
    after no exchange), what its model call reads instead of the branch; ``None`` for
    any other run. No query: the part recorded it when it was made."""
    parameters = run.parameters or {}
    info = parameters.get("chain_part") or parameters.get("agent_part")
    if run.orchestrator_id is None or not info:
        return None
    return PartPrompt(after=info.get("after"), message_id=run.user_message_id, text=info["prompt"])


def part_ledger_data(run: Run) -> dict[str, Any]:
    """What a chain part's ``llm.call`` audit events add (the usage record carries the
    part's run id): the chain run, step (from 1), round and role; ``{}`` for any other
    run. No query."""
    info = (run.parameters or {}).get("chain_part")
    if run.orchestrator_id is None or not info:
        return {}
    return {"chain_run_id": run.orchestrator_id, "chain_step": info["step"] + 1,
            "chain_round": info["round"], "chain_role": info["role"]}  # fmt: skip


def part_tools_allowed(run: Run) -> bool:
    """Whether ``run``'s model calls may be offered tools: a chain part only when its
    step allows them (a judge never); any other run, yes. No query."""
    info = (run.parameters or {}).get("chain_part")
    return not info or bool(info.get("tools"))


# -- starting ------------------------------------------------------------------------------


def _model(name: str, default: ModelConfig, *, where: str) -> ModelConfig:
    if not name:
        return default
    config = model_configs_chat().filter(name=name).first()
    if config is None:
        raise ChainRefused(f"{where}: the model {name!r} is not available. Edit the chain.")
    return config


def chain_plan(*, chain: Chain, default: ModelConfig) -> dict[str, Any]:
    """The copy of ``chain`` a run keeps (``Run.parameters["chain"]``): its name and
    steps, each step's model (and judge's) resolved to an enabled ``ModelConfig``
    (blank: ``default``, the conversation's). Raises ``ChainRefused``."""
    steps = []
    for number, step in enumerate(chain.steps.all(), start=1):
        where = f"Step {number} ({step.name})"
        config = _model(step.model_name, default, where=where)
        judge = _model(step.judge_model_name, config, where=f"{where}, judge")
        steps.append(
            {
                "name": step.name,
                "template": step.template,
                "model": {"id": config.pk, "name": config.name},
                "tools": step.tools_allowed,
                "judge": step.judge_template,
                "judge_model": {"id": judge.pk, "name": judge.name},
                "max_rounds": step.max_rounds if step.judge_template else 1,
            }
        )
    if not steps:
        raise ChainRefused("This chain has no steps.")
    return {"id": chain.pk, "name": chain.name, "steps": steps}


def chain_start(*, run: Run) -> None:
    """Start chain run ``run`` (just created, ``queued``, its ``parameters["chain"]``
    set by :func:`chain_plan`): its first part, and the run to ``awaiting_parts``.

    Call inside the transaction that created it, before its block is pushed
    (``events.run_appended``): the first part is drawn in it (``run.chain_parts``). A
    first step whose template cannot be rendered fails the run (with the reason).
    """
    run.metadata = {**run.metadata, "chain": {"responses": [], "rounds": []}}
    run.chain_parts = []
    _step_begin(run, step=0, round_=1, feedback="", position=0)


# -- the chain moves on --------------------------------------------------------------------


def chain_part_ended(*, orchestrator_id: int, kind: str, part_id: int, **_signal: Any) -> None:
    """Receiver of ``runs.run_part_ended``: move chain ``orchestrator_id`` on after its
    part ``part_id`` ended. Other kinds are ignored.

    Idempotent (the recovery job may send it again): the chain run is locked (before
    any part: the lock order) and moved only while it is ``awaiting_parts`` and
    ``part_id`` is its latest part, ended.
    """
    if kind != Run.Kind.CHAIN:
        return
    with transaction.atomic(), audit_deferred():
        run = run_lock(run_id=orchestrator_id)
        if run is None or run.status != S.AWAITING_PARTS:
            return
        part = run.parts.order_by("-position", "-pk").first()
        if part is None or part.pk != part_id or not part.is_terminal:
            return
        _after_part(run, part)


def _after_part(run: Run, part: Run) -> None:
    info = (part.parameters or {}).get("chain_part")
    if not info or "chain" not in (run.parameters or {}):
        # Rows made outside chain_start (an import, an admin): nothing to follow.
        _end(run, S.FAILED, error="This chain run has no steps to follow.", part=part)
        return
    index, round_, role = info["step"], info["round"], info["role"]
    step = run.parameters["chain"]["steps"][index]
    where = f"Step {index + 1} ({step['name']})" + (", judge" if role == "judge" else "")
    if part.status != S.COMPLETED:
        stopped = part.status == S.CANCELLED
        why = "was stopped" if stopped else f"failed: {part.error or 'no reason given.'}"
        _end(run, S.CANCELLED if stopped else S.FAILED, error=f"{where} {why}", part=part)
        return
    answer = part_answer(part)
    events.run_part_redrawn(orchestrator_id=run.pk, part_id=part.pk)  # its charges, verdict
    state = run.metadata.setdefault("chain", {"responses": [], "rounds": []})
    if role == "step":
        state["rounds"].append({"step": index, "round": round_, "part": part.pk})
        if step["judge"] and round_ < step["max_rounds"]:
            state["pending"] = answer
            _judge_begin(run, part, step=index, round_=round_, answer=answer)
            return
        if step["judge"]:
            state["rounds"][-1]["stopped_at_max_rounds"] = True
        _accept(run, part, answer)
        return
    try:
        verdict = verdict_parse(answer)
    except ValueError as error:
        _end(run, S.FAILED, error=f"{where} did not answer with a verdict: {error}", part=part)
        return
    state["rounds"][-1].update(verdict=verdict["verdict"], feedback=verdict["feedback"],
                               judge=part.pk)  # fmt: skip
    pending = state.pop("pending", "")
    if verdict["verdict"] == "pass":
        _accept(run, part, pending)
    else:
        _step_begin(run, step=index, round_=round_ + 1, feedback=verdict["feedback"],
                    position=part.position + 1, previous_round=pending)  # fmt: skip


def _accept(run: Run, part: Run, answer: str) -> None:
    """The current step's answer is ``answer``: start the next step, or end the chain."""
    state = run.metadata["chain"]
    state["responses"].append(answer)
    index = len(state["responses"])
    if index < len(run.parameters["chain"]["steps"]):
        _step_begin(run, step=index, round_=1, feedback="", position=part.position + 1)
        return
    message = Message.objects.create(
        conversation_id=run.conversation_id,
        run=run,
        run_step=run.step,
        role=Message.Role.ASSISTANT,
        content=answer,
        model=part.parameters.get("model", {}).get("litellm_model", ""),
        metadata={"chain_final": True, "part_id": part.pk},
    )
    events.message_appended(message_id=message.pk, run_id=run.pk, message=message)
    _end(run, S.COMPLETED, part=part)


def _end(run: Run, to: str, *, part: Run, error: str = "") -> None:
    run_transition(run=run, to=to, error=error, metadata=run.metadata, data={"part": part.pk})


def part_answer(part: Run) -> str:
    """The text a completed part answered with (its last assistant message)."""
    return (
        Message.objects.filter(run=part, role=Message.Role.ASSISTANT)
        .exclude(content="")
        .order_by("-run_step", "-id")
        .values_list("content", flat=True)
        .first()
        or ""
    )


def verdict_parse(text: str) -> dict[str, str]:
    """The judge's verdict in ``text``: its JSON object (the first ``{`` to the last
    ``}``, so a fenced code block is fine), valid against :data:`VERDICT_SCHEMA`.
    Raises ``ValueError`` saying what is wrong."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("its answer holds no JSON object.")
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError as error:
        raise ValueError(f"its answer is not valid JSON ({error.msg}).") from None
    problems = sorted(_VERDICT.iter_errors(value), key=lambda e: list(e.path))
    if problems:
        raise ValueError(f"{problems[0].message}.")
    return {"verdict": value["verdict"], "feedback": value["feedback"]}


# -- parts -----------------------------------------------------------------------------------


def _variables(run: Run, *, feedback: str) -> dict[str, Any]:
    responses = run.metadata["chain"]["responses"]
    names = [step["name"] for step in run.parameters["chain"]["steps"]]
    return {
        "input": run.user_message.content,
        "previous_response": responses[-1] if responses else "",
        "steps": [
            {"name": name, "response": text} for name, text in zip(names, responses, strict=False)
        ],
        "feedback": feedback,
    }


def _render(template: str, variables: dict[str, Any]) -> str:
    return template_render(template, variables, max_chars=MAX_PROMPT_CHARS)


def _step_begin(
    run: Run, *, step: int, round_: int, feedback: str, position: int, previous_round: str = ""
) -> None:
    """Start round ``round_`` of step ``step`` (0-based) as part ``position``."""
    plan = run.parameters["chain"]["steps"][step]
    try:
        text = _render(plan["template"], _variables(run, feedback=feedback))
    except PROMPT_REFUSALS as error:
        _fail(run, f"Step {step + 1} ({plan['name']}): {error}")
        return
    if feedback and "feedback" not in template_check(plan["template"]):
        # The template does not place the judge's feedback itself: it goes after it.
        text += (
            f"\n\nYour previous answer:\n{previous_round}\n\n"
            f"A reviewer asked for changes:\n{feedback}\n\nWrite an improved answer."
        )
    _part_begin(run, step=step, round_=round_, role="step", text=text, position=position,
                model=plan["model"], tools=plan["tools"], feedback=feedback)  # fmt: skip


def _judge_begin(run: Run, part: Run, *, step: int, round_: int, answer: str) -> None:
    plan = run.parameters["chain"]["steps"][step]
    try:
        text = _render(plan["judge"], {**_variables(run, feedback=""), "response": answer})
    except PROMPT_REFUSALS as error:
        _fail(run, f"Step {step + 1} ({plan['name']}), judge: {error}")
        return
    _part_begin(run, step=step, round_=round_, role="judge", text=text + JUDGE_INSTRUCTION,
                position=part.position + 1, model=plan["judge_model"], tools=False,
                feedback="")  # fmt: skip


def _fail(run: Run, error: str) -> None:
    run_transition(run=run, to=S.FAILED, error=error, metadata=run.metadata)


def _part_begin(
    run: Run,
    *,
    step: int,
    round_: int,
    role: str,
    text: str,
    position: int,
    model: dict[str, Any],
    tools: bool,
    feedback: str,
) -> None:
    """Create part ``position`` of locked chain ``run`` (queued; its step scheduled on
    commit) and move the chain to ``awaiting_parts``, audited with the part."""
    config = model_configs_chat().filter(pk=model["id"]).first()
    if config is None:
        _fail(run, f"Step {step + 1}: the model {model['name']!r} is no longer available.")
        return
    plan = run.parameters["chain"]["steps"][step]
    parameters = {key: value for key, value in run.parameters.items() if key != "chain"}
    parameters["model"] = {
        "id": config.pk, "name": config.name, "litellm_model": config.litellm_model,
    }  # fmt: skip
    parameters["chain_part"] = {
        "step": step,
        "round": round_,
        "role": role,
        "name": plan["name"],
        "max_rounds": plan["max_rounds"],
        "tools": tools,
        "prompt": text,
        "feedback": feedback,
        "after": run.parent_id,
    }
    part = Run.objects.create(
        conversation_id=run.conversation_id,
        user_message_id=run.user_message_id,
        parent_id=run.parent_id,
        orchestrator=run,
        position=position,
        model_config=config,
        prompt_version_id=run.prompt_version_id,
        parameters=parameters,
        # A judge answers once (and may be asked again by a guardrail); a step with
        # tools may take as many turns as any run.
        max_steps=run.max_steps if tools else 2,
        metadata={"chain_part": True},
    )
    run_step_schedule(run_id=part.pk)
    part.user_message = run.user_message
    if position == 0:
        # Drawn inside the chain's own block, pushed with it (events.run_appended):
        # a push to a place the page does not have yet would be dropped.
        part.timeline_messages, part.timeline_invocations, part.orphan_steps = [], [], []
        run.chain_parts = [part]
    else:
        events.run_part_appended(orchestrator_id=run.pk, part=part)
    run_transition(
        run=run,
        to=S.AWAITING_PARTS,
        metadata=run.metadata,
        data={"part": part.pk, "step": step + 1, "round": round_, "role": role,
              "model": config.name},
    )  # fmt: skip
