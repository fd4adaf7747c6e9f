"""Writes of the API: a chat completion request becomes a user message and a run,
through the same services as the browser's send (``conversations.services``), so
the run goes through the same engine: budget admission, guardrails, the gate,
tools, the audit trail. Nothing here advances a run; the worker does.

A request without ``tollgate_conversation_id`` starts a conversation: its system
and developer messages become the conversation's own system prompt, the user
and assistant messages before the last its history (brought in as a
conversation import is, ``conversations.exports.conversation_import``: nothing
is run or charged again), ``temperature`` and ``max_tokens`` its settings. With
one, the last message is sent to that conversation (switched to ``model`` first,
as the browser's model picker does); its stored history and settings are what
the model reads. Either way the last message must be the user's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.http import Http404

from accounts.models import ApiKey
from api.errors import ApiError
from audit.services import audit_record
from conversations import exports, selectors, services
from conversations.models import ModelConfig, Run

#: Roles of the messages that make a new conversation's system prompt.
SYSTEM_ROLES = ("system", "developer")


@dataclass
class ChatPlan:
    """What a request's ``messages`` ask for: the system prompt (``""``: none), the
    history before the last message as ``(role, text)``, and the last (user) text."""

    system: str
    history: list[tuple[str, str]] = field(default_factory=list)
    content: str = ""


def _text(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(
                422,
                f"messages[{index}]: only text content is supported (a part of type "
                f"{str(part.get('type'))[:40]!r} was sent).",
                code="unsupported_content",
                param=f"messages[{index}].content",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def chat_plan(*, messages: list[dict[str, Any]]) -> ChatPlan:
    """Read OpenAI ``messages`` (as validated by ``api.schemas.ChatMessage``).

    Raises ``ApiError`` (422) when the last message is not the user's, a message
    carries tool calls or is a tool's result (the tools are the server's), or a
    part of a message's content is not text.
    """
    system: list[str] = []
    history: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if (
            role in ("tool", "function")
            or message.get("tool_calls")
            or message.get("function_call")
        ):
            raise ApiError(
                422,
                f"messages[{index}]: tool calls and tool results cannot be sent: the tools are "
                "the server's. Tollgate runs its own, behind its gate, and keeps their results "
                "in the conversation.",
                code="tools_not_supported",
                param=f"messages[{index}]",
            )
        text = _text(message, index)
        if role in SYSTEM_ROLES:
            if text.strip():
                system.append(text.strip())
        else:
            history.append((role, text))
    if not history or history[-1][0] != "user":
        raise ApiError(
            422,
            "The last message must be the user's (role `user`): it is the one sent.",
            code="invalid_messages",
            param="messages",
        )
    role_content = history.pop()
    return ChatPlan(system="\n\n".join(system), history=history, content=role_content[1])


def model_config_named(*, name: str) -> ModelConfig:
    """The enabled ModelConfig called ``name``; ``ApiError`` 404 otherwise."""
    for config in selectors.model_configs_enabled():
        if config.name == name:
            return config
    raise ApiError(
        404,
        f"The model `{name[:100]}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def _history_export(history: list[tuple[str, str]]) -> str:
    """``history`` as a conversation export (``conversations.exports``): each user
    message answered by a completed run holding the assistant messages after it."""
    messages: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    run_id: int | None = None
    for number, (role, text) in enumerate(history, start=1):
        if role == "user":
            runs.append(
                {"id": number, "user_message": number, "parent": run_id, "status": "completed"}
            )
            run_id = number
        messages.append(
            {"id": number, "role": role, "status": "complete", "content": text, "run": run_id}
        )
    data = {
        "format": exports.FORMAT,
        "version": exports.VERSION,
        "title": "",
        "current_run": run_id,
        "messages": messages,
        "runs": runs,
    }
    return json.dumps(data)


def _refused(error: services.ConversationError, *, param: str | None = None) -> ApiError:
    if isinstance(error, services.NotFound):
        return ApiError(404, str(error), code="conversation_not_found", param=param)
    status = 409 if isinstance(error, services.CONFLICTS) else 422
    return ApiError(status, str(error), code=type(error).__name__, param=param)


def chat_start(
    *,
    key: ApiKey,
    model: str,
    plan: ChatPlan,
    conversation_id: int | None,
    temperature: float | None,
    max_tokens: int | None,
    stream: bool,
) -> Run:
    """Send ``plan``'s message as ``key``'s user: a new conversation of ``model``, or
    conversation ``conversation_id`` (see the module docstring). Returns the run
    answering it, dispatched on commit. One transaction: a refusal leaves nothing.
    Audited (``api.chat_completion``, with the key) besides what the services audit.

    Raises ``ApiError``: 404 (no such model, or conversation of the user's), 409
    (a reply still being written, an archived conversation, a disabled model),
    422 (an empty or too long message, settings that cannot be used).
    """
    user = key.user
    config = model_config_named(name=model)
    try:
        with transaction.atomic():
            if conversation_id is None:
                run = _start_new(user, config, plan, temperature, max_tokens)
            else:
                run = _continue(user, config, plan, conversation_id)
            audit_record(
                action="api.chat_completion",
                actor=user,
                target_type="run",
                target_id=run.pk,
                data={
                    "api_key_id": key.pk,
                    "api_key_prefix": key.prefix,
                    "conversation_id": run.conversation_id,
                    "new_conversation": conversation_id is None,
                    "model": config.name,
                    "stream": stream,
                },
            )
    except services.ConversationError as error:
        param = "tollgate_conversation_id" if isinstance(error, services.NotFound) else "messages"
        raise _refused(error, param=param) from None
    return run


def _start_new(
    user: Any,
    config: ModelConfig,
    plan: ChatPlan,
    temperature: float | None,
    max_tokens: int | None,
) -> Run:
    if plan.history:
        conversation = exports.conversation_import(
            user=user, text=_history_export(plan.history), model_config_id=config.pk
        )
    else:
        conversation = services.conversation_create(user=user, model_config_id=config.pk)
    text = plan.system or conversation.system_prompt_text
    if plan.system or temperature is not None or max_tokens is not None:
        services.conversation_settings_set(
            user=user,
            conversation_id=conversation.pk,
            source="text" if text else "default",
            text=text,
            temperature=Decimal(str(temperature)) if temperature is not None else None,
            max_output_tokens=max_tokens,
        )
    return services.message_send(user=user, conversation_id=conversation.pk, content=plan.content)


def _continue(user: Any, config: ModelConfig, plan: ChatPlan, conversation_id: int) -> Run:
    try:
        conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    except Http404:
        raise services.NotFound("Conversation not found.") from None
    if conversation.model_config_id != config.pk:
        services.conversation_set_model(
            user=user, conversation_id=conversation_id, model_config_id=config.pk
        )
    return services.message_send(user=user, conversation_id=conversation_id, content=plan.content)
