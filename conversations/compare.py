"""Compare mode: one message answered by 2 to 6 models side by side, then a summary.

A compare exchange is a run shape of the run core (``conversations.runs``), not a
loop of its own:

- the send (``services.message_send`` with ``compare_model_ids``) creates, in one
  transaction, the user message, a ``compare`` run (the *orchestrator*: its model
  is the summarizer's, its system prompt the summarizer prompt) and one ``answer``
  run per chosen model (its *parts*, ``position`` 0…n-1). Each part is an ordinary
  run of the engine: gated, budgeted and rate-limited on its own, its tool calls
  and approvals its own. The orchestrator goes ``queued → awaiting_parts``;
- each part's end sends ``runs.run_part_ended``; :func:`compare_part_ended` (connected
  in ``apps.ready``) locks the orchestrator and, once every part has ended,
  moves it on (:func:`compare_advance`): to ``calling_llm`` for its summary when a
  summary is asked for and at least one part completed, else ``completed`` (no
  summary) or ``failed`` (every model failed);
- the summary is the orchestrator's one model call: the engine builds its history
  as for any run and :func:`compare_messages` turns the last user message into the
  question followed by each model's answer (by name; a failed or stopped one
  says so). No tools are offered to it (``engine._begin_call``);
- Stop on the orchestrator stops its parts too (``toolphase.parts_stop``);
- what the conversation continues with is one answer or the summary
  (``services.compare_choose``): the branch shown then ends at that run
  (``Conversation.current_run``), so later context reads only it
  (``engine.history_with_ids`` reads the path of the branch).

Settings (``project/settings.py``): ``TOLLGATE_COMPARE_SUMMARY_MODEL`` (a ModelConfig's
name; empty or not enabled: the conversation's model), ``TOLLGATE_COMPARE_SUMMARY_PROMPT``
(the command of the deployment's library prompt, ``compare-summary``; gone: the
built-in :data:`SUMMARY_INSTRUCTION`), ``TOLLGATE_COMPARE_SUMMARY_SHOWN``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from conversations.attachments import content_text
from conversations.models import Conversation, Message, ModelConfig, Run
from conversations.runs import run_lock, run_transition
from conversations.selectors import model_configs_chat
from prompts.errors import PromptUnavailable
from prompts.models import Prompt
from prompts.selectors import prompt_version_resolve, prompts_visible

logger = logging.getLogger(__name__)

S = Run.Status

#: How many models one compare message may ask (inclusive).
MIN_MODELS, MAX_MODELS = 2, 6
#: The summarizer's instruction when the library prompt is gone.
SUMMARY_INSTRUCTION = (
    "Several models answered the same question; their answers follow it, each under "
    "the name of the model that wrote it. Write one summary: what they agree on, where "
    "they differ and which answer is best supported. Name the models."
)
#: How each answer is headed in the summarizer's request (the demo model counts them).
ANSWER_HEADING = "### Answer from {name}"
#: The longest part of one answer put into the summarizer's request (characters).
ANSWER_CHARS = 20_000


@dataclass(frozen=True)
class SummarySettings:
    """How a compare exchange's summary is written: its ``config`` (the model), its
    system prompt ``instruction`` and the library ``version`` it came from (``None``:
    the built-in one), and whether it is written at all (``shown``)."""

    config: ModelConfig
    instruction: str
    version: Any
    shown: bool


def summary_settings(*, conversation: Conversation) -> SummarySettings:
    """The summary settings of ``conversation`` (its model and owner loaded): its own
    (``Conversation.compare_summary_*``) where set and still usable, else the
    deployment's.

    Model: the conversation's choice while enabled, else
    ``TOLLGATE_COMPARE_SUMMARY_MODEL`` when that ModelConfig is enabled, else the
    conversation's model. Instruction: the conversation's chosen system prompt
    while its owner may see it, else the deployment prompt whose command is
    ``TOLLGATE_COMPARE_SUMMARY_PROMPT``, at its ``production`` label (else its
    latest), else :data:`SUMMARY_INSTRUCTION`. Shown: the conversation's choice,
    else ``TOLLGATE_COMPARE_SUMMARY_SHOWN``. A few queries; raises nothing.
    """
    config = conversation.model_config
    chosen = (
        model_configs_chat().filter(pk=conversation.compare_summary_model_id).first()
        if conversation.compare_summary_model_id
        else None
    )
    name = settings.TOLLGATE_COMPARE_SUMMARY_MODEL
    if chosen is not None:
        config = chosen
    elif name:
        config = model_configs_chat().filter(name=name).first() or config
    instruction, version = SUMMARY_INSTRUCTION, None
    prompt = None
    if conversation.compare_summary_prompt_id:
        prompt = (
            prompts_visible(user=conversation.owner)
            .filter(pk=conversation.compare_summary_prompt_id, kind=Prompt.Kind.SYSTEM)
            .first()
        )
    if prompt is None:
        prompt = Prompt.objects.filter(
            owner__isnull=True, command=settings.TOLLGATE_COMPARE_SUMMARY_PROMPT
        ).first()
    if prompt is not None:
        try:
            version = prompt_version_resolve(prompt=prompt)
        except PromptUnavailable:  # a prompt with no version: the built-in instruction
            logger.warning("compare summary prompt %s has no usable version", prompt.pk)
        else:
            version.prompt = prompt
            instruction = version.template
    shown = conversation.compare_summary_shown
    return SummarySettings(
        config=config,
        instruction=instruction,
        version=version,
        shown=settings.TOLLGATE_COMPARE_SUMMARY_SHOWN if shown is None else shown,
    )


def compare_part_ended(
    sender: Any, *, orchestrator_id: int, kind: str, part_id: int, **_: Any
) -> None:
    """Receiver of ``runs.run_part_ended`` (``apps.ready``): a compare's part ended."""
    if kind != Run.Kind.COMPARE:
        return
    compare_advance(orchestrator_id=orchestrator_id)


def compare_advance(*, orchestrator_id: int) -> str | None:
    """Move compare run ``orchestrator_id`` on if every part has ended; idempotent.

    In its own transaction: the orchestrator is locked (``run_lock``, before any
    part: the lock order) and nothing happens unless it is ``awaiting_parts`` and
    every part is terminal. Then, with at least one part completed, it goes to
    ``calling_llm`` (its summary; a step is scheduled) when its summary is asked for
    (``metadata["summary"]``), else to ``completed``; with none completed, to
    ``failed`` with a message saying so. Returns the status reached, or ``None``
    when nothing was done.
    """
    with transaction.atomic():
        run = run_lock(run_id=orchestrator_id)
        if run is None or run.kind != Run.Kind.COMPARE or run.status != S.AWAITING_PARTS:
            return None
        statuses = list(run.parts.values_list("status", flat=True))
        if not statuses or any(status not in Run.TERMINAL for status in statuses):
            return None
        completed = statuses.count(S.COMPLETED)
        data = {"parts": len(statuses), "completed": completed}
        if not completed:
            return run_transition(
                run=run,
                to=S.FAILED,
                data=data,
                error="No model answered (every answer failed or was stopped): "
                "there is nothing to summarise.",
            )
        if run.metadata.get("summary", True):
            return run_transition(run=run, to=S.CALLING_LLM, data=data)
        return run_transition(run=run, to=S.COMPLETED, data=data)


def compare_messages(*, run: Run, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summarizer's request for compare run ``run``: ``history`` (the run's
    branch, its system prompt the summarizer's instruction, ending with the user's
    question) with the question replaced by the question and every part's answer,
    in order, each headed by its model's name (``ANSWER_HEADING``); a part that
    failed or was stopped is named with what happened. One query."""
    parts = list(
        run.parts.select_related("model_config")
        .order_by("position", "pk")
        .prefetch_related("messages")
    )
    question = ""
    if history and history[-1].get("role") == "user":
        question = content_text(history[-1].get("content"))
        history = history[:-1]
    blocks = [f"Question:\n{question}", f"Answers to compare: {len(parts)}"]
    for part in parts:
        name = part_name(part)
        heading = ANSWER_HEADING.format(name=name)
        if part.status == S.COMPLETED:
            answer = _final_answer(part)
            blocks.append(f"{heading}\n{answer[:ANSWER_CHARS]}")
        elif part.status == S.FAILED:
            blocks.append(f"{heading}\n(This model failed: {part.error or 'no answer'})")
        else:
            blocks.append(f"{heading}\n(This model was stopped before it finished.)")
    return [*history, {"role": "user", "content": "\n\n".join(blocks)}]


def part_name(part: Run) -> str:
    """The name a part's column and the summary give it: its model's."""
    if part.model_config is not None:
        return part.model_config.name
    return str(((part.parameters or {}).get("model") or {}).get("name") or f"Model {part.position}")


def _final_answer(part: Run) -> str:
    """The text of a part's last complete assistant message (its answer)."""
    answers = [
        m
        for m in part.messages.all()
        if m.role == Message.Role.ASSISTANT and m.status == Message.Status.COMPLETE and m.content
    ]
    answers.sort(key=lambda m: m.pk)
    return answers[-1].content if answers else ""
