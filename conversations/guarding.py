"""The run core's four guardrail stages (approvals' ``guardrails_apply``), applied
to the run's rows.

DESIGN.md, "Security model": guardrails act on user input (before the model
call), model output (before the answer is stored), tool arguments (before the
gate decides) and tool output (before it becomes the tool result the model
reads). Each function here is one call from the engine or the tool phase; what
acted is stored on the message's ``metadata["guardrails"]`` (a list of
``GuardrailAct.as_dict()`` with its ``stage``), which the chat draws, and
audited by approvals (``guardrail.acted``).

Every function runs inside the caller's transaction with the run locked, but
``guard_draft`` (a draft sent to be reformulated: the same ``user_input``
guardrails, before any model reads it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from approvals.guardrails import TOOL_OUTPUT_BLOCKED, GuardrailOutcome
from approvals.selectors import guardrails_for
from approvals.services import guardrails_apply, guardrails_apply_arguments
from conversations import events
from conversations.gateway import ChatResult
from conversations.models import Message, Run


def _acts(outcome: GuardrailOutcome, stage: str) -> list[dict[str, Any]]:
    return [{**act, "stage": stage} for act in outcome.as_metadata()]


def guard_user_input(*, run: Run) -> str:
    """Apply the ``user_input`` guardrails to the message that started ``run``,
    before anything of it reaches the model.

    Redact: the stored message is rewritten (the provider, the history and the
    chat only ever see the redacted text) and pushed. Returns ``""`` to go on,
    or the sentence for the user when a guardrail blocked (the caller fails the
    run before any model call: no budget hold, no cost).
    """
    if not guardrails_for(user=run.conversation.owner, stage="user_input"):
        return ""  # (cached) without loading the message: no query
    message = run.user_message
    if message is None:
        return ""
    outcome = guardrails_apply(
        stage="user_input",
        user=run.conversation.owner,
        text=message.content,
        target_type="message",
        target_id=message.pk,
    )
    if not outcome.acts:
        return ""
    message.metadata = {**message.metadata, "guardrails": _acts(outcome, "user_input")}
    message.content = outcome.text
    message.save(update_fields=["content", "metadata"])
    events.message_replaced(message_id=message.pk, run_id=run.pk, message=message)
    return outcome.block_message()


#: The message that asks the model again when its answer failed a structured-output
#: guardrail (once per run).
REASK = (
    "Your answer does not satisfy the required format (guardrail {name!r}):\n{detail}\n"
    "Answer again with only JSON that satisfies the schema."
)
#: What is stored for a failed answer that another guardrail stopped checking.
REASK_WITHHELD = "(An answer that did not satisfy the required format; the model was asked again.)"


def guard_model_output(*, run: Run, message: Message, result: ChatResult) -> tuple[ChatResult, str]:
    """Apply the ``model_output`` guardrails to a finished answer's text.

    Returns ``(result to store, re-ask)``: the content redacted, or replaced by
    the block's explanation; the acts are put on ``message.metadata``. The tool
    calls are left to the ``tool_arguments`` stage. The streamed preview showed
    the text as it came; the stored and pushed message is the guarded one.

    Structured output: when a ``json_schema`` guardrail fails and the run has
    not asked again yet (``run.metadata["guardrail_reasked"]``), ``re-ask`` is
    the message to send the model (``guard_reask``) and the answer is kept
    (redacted where other guardrails redacted) with the act marked ``reask``;
    on the second failure the guardrail's own action applies.
    """
    if not result.content:
        return result, ""
    outcome = guardrails_apply(
        stage="model_output",
        user=run.conversation.owner,
        text=result.content,
        target_type="message",
        target_id=message.pk,
    )
    if not outcome.acts:
        return result, ""
    acts = _acts(outcome, "model_output")
    schema = next((act for act in outcome.acts if act.kind == "json_schema"), None)
    reask = ""
    blocked_by_other = outcome.block is not None and outcome.block is not schema
    if schema is not None and not blocked_by_other and not run.metadata.get("guardrail_reasked"):
        reask = REASK.format(name=schema.name, detail=schema.detail)
        acts = [
            {**act, "action": "reask"} if act["guardrail_id"] == schema.guardrail_id else act
            for act in acts
        ]
        # When the schema's block ended the checks, the guardrails after it did
        # not look at the text: it is not kept.
        content = outcome.text if outcome.complete else REASK_WITHHELD
    else:
        content = outcome.block_message() if outcome.blocked else outcome.text
    message.metadata = {**message.metadata, "guardrails": acts}
    return replace(result, content=content), reask


def guard_reask(*, run: Run, text: str) -> None:
    """Store ``text`` (from ``guard_model_output``) as the message that asks the
    model again, in ``run``, after its answer. The caller moves the run back to
    ``calling_llm`` with ``metadata["guardrail_reasked"]`` set (once per run)."""
    message = Message.objects.create(
        conversation_id=run.conversation_id,
        run=run,
        role=Message.Role.USER,
        content=text,
        metadata={"guardrail_reask": True},
    )
    events.message_appended(message_id=message.pk, run_id=run.pk)


def guard_tool_arguments(
    *, run: Run, invocation_id: int, arguments: Any
) -> tuple[Any, list[dict[str, Any]], str]:
    """Apply the ``tool_arguments`` guardrails to one tool call, before the gate.

    Returns ``(arguments to gate and run, acts to store on the invocation,
    block explanation or "")``. A block's explanation becomes the denied
    call's result, which the model reads.
    """
    redacted, outcome = guardrails_apply_arguments(
        user=run.conversation.owner,
        arguments=arguments,
        target_type="tool_invocation",
        target_id=invocation_id,
    )
    if not outcome.acts:
        return arguments, [], ""
    return redacted, _acts(outcome, "tool_arguments"), outcome.block_message()


def guard_tool_output(
    *, run: Run, invocation_id: int, content: str
) -> tuple[str, list[dict[str, Any]]]:
    """Apply the ``tool_output`` guardrails to a tool's result before it becomes
    the tool message the model reads.

    Returns ``(content for the model, acts)``: redacted; prefixed with a warning
    when an injection screen warned; replaced by an explanation
    (``TOOL_OUTPUT_BLOCKED``) when one blocked.
    """
    outcome = guardrails_apply(
        stage="tool_output",
        user=run.conversation.owner,
        text=content,
        target_type="tool_invocation",
        target_id=invocation_id,
    )
    if not outcome.acts:
        return content, []
    block = outcome.block
    if block is not None:
        return TOOL_OUTPUT_BLOCKED.format(name=block.name, reason=block.reason), _acts(
            outcome, "tool_output"
        )
    return outcome.text, _acts(outcome, "tool_output")


def guard_draft(*, user: Any, conversation_id: int, draft: str) -> GuardrailOutcome:
    """Apply the ``user_input`` guardrails to a draft before it is reformulated
    (``conversations.reformulation``, which checked the conversation is the
    user's): the reformulating model reads the outcome's text; a block refuses
    the call. Without guardrails: no query."""
    return guardrails_apply(
        stage="user_input",
        user=user,
        text=draft,
        target_type="conversation",
        target_id=conversation_id,
    )
