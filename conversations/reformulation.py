"""Reformulate a draft before it is sent: a smaller model rewrites it.

The Reformulate button of the composer asks :func:`draft_reformulate` for a
rewrite of what is typed; the page shows it beside the draft, as a diff, and
the user edits it, puts it into the composer, or discards it. Nothing here
writes a message or starts a run: the conversation's model sees nothing until
the user sends.

The model is ``TOLLGATE_REFORMULATION_MODEL`` (a ModelConfig's name; empty or
not enabled: the conversation's own). The instruction is the user's chosen
prompt, else the deployment's ``/reformulate`` (``prompts.selectors
.reformulation_prompt``), at its ``production`` label: rendered with the draft
as ``{{ draft }}`` when it uses that variable (then it is the one user
message), else sent as the system prompt with the draft as the user message.
The call is charged like any other (``conversations.charging``: the rate
limits and the budget hold first, the usage settled after, ``llm.call`` and
``budget.refused`` audited on the conversation).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from accounts.services import Admission
from audit.services import audit_deferred
from conversations.charging import call_abort, call_admit, call_settle
from conversations.context import context_fit
from conversations.dispatch import gateway_ready
from conversations.gateway import CallUsage, GatewayError, stream_chat
from conversations.guarding import guard_draft
from conversations.models import ModelConfig
from conversations.selectors import model_configs_chat
from conversations.services import (
    ConversationArchived,
    ConversationError,
    ModelUnavailable,
    _own_conversation,
    message_text,
)
from project.dbthreads import db_async
from prompts.errors import PROMPT_REFUSALS
from prompts.models import REFORMULATE_INSTRUCTION, PromptVersion
from prompts.selectors import prompt_version_resolve, reformulation_prompt
from prompts.templating import template_render

#: The variable an instruction may use for the draft.
DRAFT = "draft"


class ReformulationRefused(ConversationError):
    """The draft could not be reformulated (its budget, the model, the instruction);
    ``str(error)`` says why. No usage is charged for a refused call."""


@dataclass(frozen=True)
class Reformulation:
    """A draft and its rewrite; ``model``: the ModelConfig's name; ``version``: the
    instruction's prompt version (``None``: the built-in instruction); ``cost_usd``:
    what the call cost (``None`` when the model's price is unknown)."""

    draft: str
    rewrite: str
    model: str
    version: PromptVersion | None
    cost_usd: Decimal | None


@dataclass(frozen=True)
class _Prepared:
    user: Any
    conversation_id: int
    config: ModelConfig
    messages: list[dict[str, str]]
    version: PromptVersion | None
    admission: Admission


def _model(conversation_model: ModelConfig) -> ModelConfig:
    name = settings.TOLLGATE_REFORMULATION_MODEL
    if name:
        config = model_configs_chat().filter(name=name).first()
        if config is not None:
            return config
    if not conversation_model.enabled:
        raise ModelUnavailable("This conversation's model has been disabled. Pick another model.")
    return conversation_model


def _instruction(user: Any, draft: str) -> tuple[list[dict[str, str]], PromptVersion | None]:
    """The messages asking for the rewrite, and the instruction's version."""
    prompt = reformulation_prompt(user=user)
    if prompt is None:
        return [
            {"role": "system", "content": REFORMULATE_INSTRUCTION},
            {"role": "user", "content": draft},
        ], None
    version = prompt_version_resolve(prompt=prompt)
    version.prompt = prompt  # shown with the rewrite (rendered where no query may run)
    try:
        text = template_render(
            version.template, {DRAFT: draft}, max_chars=settings.TOLLGATE_MAX_MESSAGE_CHARS * 2
        )
    except PROMPT_REFUSALS as error:
        raise ReformulationRefused(
            f"The reformulation prompt {prompt.name} cannot be used: {error}"
        ) from None
    if DRAFT in version.variables:
        return [{"role": "user", "content": text}], version
    return [{"role": "system", "content": text}, {"role": "user", "content": draft}], version


@db_async
def _guarded(user: Any, conversation_id: int, draft: str) -> str:
    """The draft after the user's ``user_input`` guardrails (``guarding.guard_draft``),
    the same ones a sent message passes: redacted text, or ``ReformulationRefused``
    with the reason when one blocks (audited; nothing is charged)."""
    _own_conversation(user=user, conversation_id=conversation_id)
    outcome = guard_draft(user=user, conversation_id=conversation_id, draft=draft)
    if outcome.blocked:
        raise ReformulationRefused(outcome.block_message())
    return outcome.text


@db_async
def _prepare(user: Any, conversation_id: int, draft: str) -> _Prepared:
    """Check the draft, pick the model and instruction, fit and admit the call (one
    transaction: the budget hold, or the refusal's audit event, commits)."""
    with transaction.atomic(), audit_deferred():
        conversation = _own_conversation(
            user=user, conversation_id=conversation_id, with_model=True
        )
        if conversation.archived:
            raise ConversationArchived("This conversation is archived; unarchive it to continue.")
        config = _model(conversation.model_config)
        messages, version = _instruction(user, draft)
        try:
            fit = context_fit(
                messages=messages,
                model=config.litellm_model,
                context_window=config.context_window,
                max_output_tokens=config.max_output_tokens,
            )
        except GatewayError as error:
            raise ReformulationRefused(error.user_message) from None
        admission, refusal = call_admit(
            user=user,
            config=config,
            prompt_tokens=fit.prompt_tokens,
            max_tokens=config.max_output_tokens,
            run_id=None,
            target_type="conversation",
            target_id=conversation.pk,
        )
    if admission is None:
        raise ReformulationRefused(refusal)
    return _Prepared(user, conversation.pk, config, messages, version, admission)


@db_async
def _settle(
    prepared: _Prepared,
    draft: str,
    *,
    usage: CallUsage,
    latency_ms: int | None,
    model: str,
    rewrite: str | None,
) -> None:
    """Charge the call (``charging.call_settle``): a finished rewrite (``rewrite``)
    or, ``rewrite=None``, a call that failed after the provider began answering."""
    data: dict[str, Any] = {
        "purpose": "reformulate",
        "prompt_version_id": prepared.version.pk if prepared.version else None,
        "draft_chars": len(draft),
    }
    if rewrite is None:
        data["outcome"] = "failed"
    else:
        data["rewrite_chars"] = len(rewrite)
    with transaction.atomic(), audit_deferred():
        call_settle(
            admission=prepared.admission,
            user=prepared.user,
            conversation_id=prepared.conversation_id,
            model=model or prepared.config.litellm_model,
            usage=usage,
            latency_ms=latency_ms,
            target_type="conversation",
            target_id=prepared.conversation_id,
            data=data,
        )


async def draft_reformulate(*, user: Any, conversation_id: int, draft: str) -> Reformulation:
    """Rewrite ``draft`` for ``user``'s conversation ``conversation_id``; nothing is sent.

    Raises ``NotFound`` (not the user's), ``EmptyMessage``, ``MessageTooLong``,
    ``ConversationArchived``, ``ModelUnavailable``, ``ReformulationRefused`` (a
    guardrail, a budget or rate limit, the context window, the instruction, the
    provider's error). The model reads the draft as the user's ``user_input``
    guardrails leave it (redacted), as it would a sent message. A call that
    fails gives its budget hold back.
    """
    draft = message_text(draft, what="draft")
    draft = await _guarded(user, conversation_id, draft)
    await gateway_ready()  # the context fit counts tokens with litellm
    prepared = await _prepare(user, conversation_id, draft)
    try:
        result = await stream_chat(
            config=prepared.config,
            messages=prepared.messages,
            max_tokens=prepared.config.max_output_tokens,
            purpose="reformulate",
        )
    except GatewayError as error:
        if error.usage is None:  # the provider never began answering
            await call_abort(prepared.admission)
        else:  # what it sent before it broke off is billed, so charged
            await _settle(prepared, draft, usage=error.usage, latency_ms=None, model="",
                          rewrite=None)  # fmt: skip
        raise ReformulationRefused(error.user_message) from None
    except BaseException:
        await call_abort(prepared.admission)
        raise
    await _settle(prepared, draft, usage=result.charged, latency_ms=result.latency_ms,
                  model=result.model, rewrite=result.content)  # fmt: skip
    return Reformulation(
        draft=draft,
        rewrite=result.content.strip(),
        model=prepared.config.name,
        version=prepared.version,
        cost_usd=result.cost_usd,
    )
