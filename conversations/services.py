"""Writes for conversations, messages and runs (HackSoft services; Zulip actions).

Each service validates, writes inside a short ``transaction.atomic()``, and
schedules pushes and run steps with ``transaction.on_commit``. Errors are
``ConversationError`` subclasses whose message is shown to the user; on error
nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC
from decimal import Decimal
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet

from accounts.sharing import SharingRefused, sharing_check
from audit.services import audit_deferred, audit_record
from conversations import compare, events
from conversations.agents import agents_visible, run_max_steps
from conversations.attachments import (
    attachments_for_send,
    attachments_images_check,
    attachments_link,
    attachments_of,
    attachments_shown,
)
from conversations.branches import conversation_tree, shown_leaf
from conversations.chains import ChainRefused, chain_plan, chain_start
from conversations.errors import ConversationError, NotFound
from conversations.models import (
    AgentProfile,
    Conversation,
    Message,
    ModelConfig,
    Run,
    UserPreferences,
)
from conversations.prompting import CallSettings, call_settings
from conversations.runs import run_cancel_request, run_lock, run_step_schedule, run_transition
from conversations.selectors import model_configs_chat
from conversations.toolphase import parts_stop, run_stop
from prompts.errors import PROMPT_REFUSALS, PromptError, PromptNotFound
from prompts.models import LATEST, Prompt
from prompts.selectors import chain_get, prompt_get, prompt_version_for_use
from tools.selectors import tool_names_for_user_id
from tools.services import invocations_delete

logger = logging.getLogger(__name__)


class EmptyMessage(ConversationError):
    pass


class MessageTooLong(ConversationError):
    pass


class ConversationArchived(ConversationError):
    pass


class RunInProgress(ConversationError):
    pass


class ModelUnavailable(ConversationError):
    pass


class RunNotCancellable(ConversationError):
    pass


class RunNotRetryable(ConversationError):
    pass


class CompareInvalid(ConversationError):
    """A Compare send that cannot start (too few or too many models, one not
    available), or an answer that cannot be continued with."""


class SettingsInvalid(ConversationError):
    """The conversation's settings cannot make a call (its system prompt is gone, or a
    variable of it has no value), or settings asked for are not allowed."""


#: Refusals for the state a service found (HTTP 409); any other is bad input (400).
CONFLICTS: tuple[type[ConversationError], ...] = (
    ConversationArchived,
    RunInProgress,
    RunNotCancellable,
    RunNotRetryable,
    ModelUnavailable,
    SettingsInvalid,
)

TITLE_CHARS = 60


def _own_conversation(
    *, user, conversation_id: int, lock: bool = False, with_model: bool = False
) -> Conversation:
    if user is None or not user.is_authenticated:
        raise NotFound("Conversation not found.")
    qs = Conversation.objects.filter(pk=conversation_id, owner=user)
    if with_model:
        qs = qs.select_related("model_config", "owner")
    if lock:
        qs = qs.select_for_update(no_key=True, of=("self",))
    try:
        return qs.get()  # not .first(): no ORDER BY to build for one row by key
    except Conversation.DoesNotExist:
        raise NotFound("Conversation not found.") from None


def model_config_pick(*, model_config_id: int | None) -> ModelConfig:
    """The enabled ModelConfig ``model_config_id``, or the default one when ``None``.

    Raises ``ModelUnavailable`` for an unknown or disabled model, or when no
    model is enabled at all.
    """
    enabled = model_configs_chat()
    if model_config_id is not None:
        config = enabled.filter(pk=model_config_id).first()
        if config is None:
            raise ModelUnavailable("That model is not available. Pick another one.")
        return config
    config = enabled.filter(is_default=True).first() or enabled.order_by("name").first()
    if config is None:
        raise ModelUnavailable("No model is enabled. Ask an administrator to enable one.")
    return config


def auto_title(content: str) -> str:
    """A title from a first message: its first line, whitespace collapsed, ≤ 60 chars."""
    first_line = next((line for line in content.splitlines() if line.strip()), "")
    title = " ".join(first_line.split())
    if len(title) > TITLE_CHARS:
        title = title[: TITLE_CHARS - 1].rstrip() + "…"
    return title or "New conversation"


def conversation_create(
    *, user, model_config_id: int | None = None, title: str = ""
) -> Conversation:
    """Create an empty conversation for ``user`` with an enabled model: ``model_config_id``,
    else the user's default model (their settings) while it is enabled, else the
    site's default. The user's default system prompt, if any, is its own."""
    preferences = UserPreferences.objects.filter(user=user).first()
    if model_config_id is None and preferences is not None and preferences.default_model_id:
        enabled = model_configs_chat().filter(pk=preferences.default_model_id)
        model_config_id = preferences.default_model_id if enabled.exists() else None
    config = model_config_pick(model_config_id=model_config_id)
    prompt = preferences.default_system_prompt if preferences is not None else ""
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=user,
            model_config=config,
            title=title.strip()[:200],
            system_prompt_text=prompt,
        )
        events.conversation_changed(conversation_id=conversation.pk)
    return conversation


def conversation_start(
    *, user, model_config_id: int | None = None, content: str = ""
) -> Conversation:
    """A new conversation (``conversation_create``) with ``content`` as its first
    message (``message_send``) unless it is blank: both or neither, so a refused
    message leaves no empty conversation behind. Raises what they raise."""
    with transaction.atomic():
        conversation = conversation_create(user=user, model_config_id=model_config_id)
        if content.strip():
            message_send(user=user, conversation_id=conversation.pk, content=content)
    return conversation


def conversation_rename(*, user, conversation_id: int, title: str) -> Conversation:
    """Rename (title stripped, 1 to 200 chars). Raises ``NotFound``, ``ConversationError``."""
    title = " ".join(title.split())
    if not title:
        raise ConversationError("The title cannot be empty.")
    if len(title) > 200:
        raise ConversationError("The title is too long (200 characters at most).")
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        conversation.title = title
        conversation.save(update_fields=["title", "updated_at"])
        events.conversation_changed(conversation_id=conversation.pk)
    return conversation


def conversation_set_model(*, user, conversation_id: int, model_config_id: int) -> Conversation:
    """Switch the model used for the conversation's next replies."""
    config = model_config_pick(model_config_id=model_config_id)
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        conversation.model_config = config
        conversation.save(update_fields=["model_config", "updated_at"])
    return conversation


def conversation_set_agent(*, user, conversation_id: int, agent_id: int | None) -> Conversation:
    """Let agent ``agent_id`` (one ``user`` may see) answer the conversation's next
    messages, with its instructions, model and tools; ``None``: the conversation's own
    settings. Raises ``NotFound`` (the conversation or the agent)."""
    agent = None
    if agent_id is not None:
        agent = agents_visible(user=user).filter(pk=agent_id).first()
        if agent is None:
            raise NotFound("Agent not found.")
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        conversation.agent = agent
        conversation.save(update_fields=["agent", "updated_at"])
        audit_record(
            action="conversation.agent_set",
            actor=user,
            target_type="conversation",
            target_id=conversation.pk,
            data={"agent_id": agent_id},
        )
    return conversation


class AgentInvalid(ConversationError):
    """An agent's settings that may not be saved (``str(error)`` says which)."""


#: The fields of ``AgentProfile`` ``agent_save`` writes from ``data``.
AGENT_FIELDS = (
    "name",
    "description",
    "visibility",
    "instructions",
    "prompt",
    "prompt_label",
    "model_config",
    "temperature",
    "max_output_tokens",
    "tools",
    "max_handoffs",
    "max_steps",
    "transfer",
)


def agent_save(*, user, agent_id: int | None, data: dict[str, Any]) -> AgentProfile:
    """Create (``agent_id`` ``None``) or update ``user``'s own agent from ``data``:
    ``AGENT_FIELDS`` (``prompt`` a ``Prompt``, ``model_config`` a ``ModelConfig`` or
    ``None``; ``tools`` a list of tool names; ``max_steps`` an int or ``None``),
    ``handoff_targets`` and ``agent_tools`` (agents), ``groups`` (group ids, when
    shared with groups).

    Checked here, whatever the form offered: the tools are ones ``user`` may use, the
    prompt and the targets ones they may see (not the agent itself), the model
    enabled, the sharing one ``user`` may do (``accounts.sharing.sharing_check``).
    Raises ``NotFound`` (not their agent) or ``AgentInvalid``. Audited as
    ``agent.saved``.
    """
    tools = sorted({str(name) for name in data.get("tools") or []})
    unknown = set(tools) - tool_names_for_user_id(user_id=user.pk)
    if unknown:
        raise AgentInvalid(f"You may not use these tools: {', '.join(sorted(unknown))}.")
    prompt = data.get("prompt")
    if prompt is not None:
        try:
            prompt_get(user=user, prompt_id=prompt.pk)
        except PromptNotFound:
            raise AgentInvalid("That prompt is not available.") from None
    config = data.get("model_config")
    if config is not None and not config.enabled:
        raise AgentInvalid(f"The model {config.name} is not available.")
    sharing = None
    if "visibility" in data or "groups" in data:
        try:
            sharing = sharing_check(
                user=user,
                visibility=data.get("visibility", AgentProfile.Visibility.PRIVATE),
                group_ids=data.get("groups") or [],
                what="agent",
            )
        except SharingRefused as refused:
            raise AgentInvalid(str(refused)) from None
    targets = list(data.get("handoff_targets") or [])
    called = list(data.get("agent_tools") or [])
    visible = set(
        agents_visible(user=user)
        .filter(pk__in=[t.pk for t in [*targets, *called]])
        .values_list("pk", flat=True)
    )
    if any(t.pk not in visible or t.pk == agent_id for t in targets):
        raise AgentInvalid("An agent it hands off to is not available (or is this agent).")
    if any(t.pk not in visible or t.pk == agent_id for t in called):
        raise AgentInvalid("An agent it calls as a tool is not available (or is this agent).")
    with transaction.atomic():
        if agent_id is None:
            agent = AgentProfile(owner=user)
        else:
            found = AgentProfile.objects.select_for_update().filter(pk=agent_id, owner=user).first()
            if found is None:
                raise NotFound("Agent not found.")
            agent = found
        for name in AGENT_FIELDS:
            if name in data:
                setattr(agent, name, data[name])
        agent.tools = tools
        if sharing is not None:
            agent.visibility = sharing[0]
        agent.save()
        if sharing is not None:
            agent.groups.set(sharing[1])
        agent.handoff_targets.set(targets)
        agent.agent_tools.set(called)
        audit_record(
            action="agent.saved",
            actor=user,
            target_type="agent",
            target_id=agent.pk,
            data={"name": agent.name, "created": agent_id is None, "tools": tools},
        )
    return agent


def conversation_archive(*, user, conversation_id: int, archived: bool = True) -> Conversation:
    """Archive (read-only, hidden from the list) or unarchive a conversation."""
    with transaction.atomic(), audit_deferred():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        if archived:
            active = conversation.runs.exclude(status__in=Run.TERMINAL).values_list("pk", flat=True)
            for run_id in sorted(active):
                run = run_lock(run_id=run_id)
                if run is not None and not run.is_terminal:
                    run_stop(run=run, actor=user)
        conversation.archived = archived
        conversation.save(update_fields=["archived", "updated_at"])
        events.conversation_changed(conversation_id=conversation.pk)
    return conversation


def conversation_pin(*, user, conversation_id: int, pinned: bool = True) -> Conversation:
    """Pin (listed first in the sidebar) or unpin a conversation. Raises ``NotFound``."""
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        conversation.pinned = pinned
        conversation.save(update_fields=["pinned", "updated_at"])
        events.conversation_changed(conversation_id=conversation.pk)
    return conversation


def conversation_delete(*, user, conversation_id: int) -> None:
    """Delete a conversation with its messages, runs and their tool calls."""
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        title = str(conversation)
        conversation_rows_delete(rows=Conversation.objects.filter(pk=conversation.pk))
        events.conversation_deleted(conversation_id=conversation_id, user_id=user.pk)
        audit_record(
            action="conversation.deleted",
            actor=user,
            target_type="conversation",
            target_id=conversation_id,
            data={"title": title},
        )


def conversation_rows_delete(
    *, rows: QuerySet[Conversation] | QuerySet[Message] | QuerySet[Run]
) -> None:
    """Delete ``rows`` (conversations, messages or runs) and what goes with them.

    Django's cascades delete this app's rows (a conversation's messages and
    runs, the runs answering a user message; a deleted run's messages keep
    their text and lose the run). The tool invocations of every run deleted,
    and of every message deleted, live in ``tools`` by id, not by foreign key
    (docs/architecture.md), so they are deleted here through
    ``tools.services.invocations_delete``, with their approval requests, in the
    same transaction. Not audited (the caller audits what it deletes, as
    ``conversation_delete`` does). Raises ``TypeError`` for rows of another model.
    """
    if rows.model is Conversation:
        runs = Run.objects.filter(conversation__in=rows)
        message_ids: list[int] = []  # their invocations are their runs'
    elif rows.model is Message:
        runs = Run.objects.filter(user_message__in=rows)
        message_ids = list(rows.values_list("pk", flat=True))
    elif rows.model is Run:
        # With the parts of a compare or chain run (they cascade from it).
        runs = Run.objects.filter(Q(pk__in=rows.values("pk")) | Q(orchestrator__in=rows))
        message_ids = []
    else:
        raise TypeError(f"Not a conversations row: {rows.model.__name__}.")
    with transaction.atomic():
        invocations_delete(run_ids=runs.values_list("pk", flat=True), message_ids=message_ids)
        rows.delete()


def message_text(content: str, *, what: str = "message") -> str:
    """``content`` stripped: what a message (or a draft, ``what``) may be. Raises
    ``EmptyMessage`` when nothing is left, ``MessageTooLong`` past
    ``TOLLGATE_MAX_MESSAGE_CHARS`` characters."""
    content = (content or "").strip()
    if not content:
        raise EmptyMessage(f"Type a {what} first.")
    limit = settings.TOLLGATE_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise MessageTooLong(
            f"The {what} is too long ({len(content):,} characters; the limit is {limit:,})."
        )
    return content


def message_send(
    *,
    user,
    conversation_id: int,
    content: str,
    compare_model_ids: Sequence[int] | None = None,
    chain_id: int | None = None,
    attachment_ids: Sequence[int] = (),
) -> Run:
    """Post a user message and start a run answering it (dispatched on commit).

    ``compare_model_ids`` (Compare mode, ``conversations.compare``): the ids of 2 to
    6 enabled ModelConfigs; the message is then answered by one run per model
    (the parts, concurrently) under a ``compare`` run, which is returned: it
    waits for them (``awaiting_parts``), then writes their summary.
    ``chain_id``: run that chain (``prompts.Chain``, one the user may see) on the
    message instead: the run is a ``chain`` run whose steps answer in turn
    (``conversations.chains``). Not both. ``attachment_ids``: the user's documents
    sent with the message (``conversations.attachments``).

    Raises ``NotFound`` (not the user's, or a chain they may not see),
    ``AttachmentRefused`` (too many files, one not theirs, an image to a model that
    does not accept images),
    ``EmptyMessage``, ``MessageTooLong`` (over ``TOLLGATE_MAX_MESSAGE_CHARS``),
    ``ConversationArchived``, ``ModelUnavailable`` (the conversation's model, or a
    chain step's, is disabled), ``CompareInvalid`` (the models asked to compare, or
    Compare with a chain) or ``RunInProgress`` (a reply is still being written). The
    first message also titles an untitled conversation.
    """
    content = message_text(content)
    if compare_model_ids is not None and chain_id is not None:
        raise CompareInvalid("Compare answers with several models or runs a chain: pick one.")
    models = None if compare_model_ids is None else _compare_models(compare_model_ids)
    chain = None
    if chain_id is not None:
        try:
            chain = chain_get(user=user, chain_id=chain_id)
        except PromptNotFound:
            raise NotFound("Chain not found.") from None
    documents = attachments_for_send(user=user, document_ids=attachment_ids)
    with transaction.atomic():
        conversation, message, run = _message_insert(
            user=user,
            conversation_id=conversation_id,
            content=content,
            compare_models=models,
            attachments=documents,
            answered_by_chain=chain is not None,
        )
        if chain is not None:
            try:
                plan = chain_plan(chain=chain, default=conversation.model_config)
            except ChainRefused as error:
                raise ModelUnavailable(str(error)) from None
            # Raised in this block: the message and run above are not kept.
            _chain_images_check(documents, plan)
            run.kind = Run.Kind.CHAIN
            run.parameters = {**run.parameters, "chain": plan}
            run.save(update_fields=["kind", "parameters"])
        sent = _message_sent(user, message, run)
        if models is not None:  # the parts' steps were scheduled as they were made
            sent["data"]["compare"] = [
                {"run_id": part.pk, "model": compare.part_name(part)} for part in run.compare_parts
            ]
        audit_record(**sent)
        run.user_message = message
        if chain is not None:
            chain_start(run=run)  # its first part, drawn inside the run's block
        elif models is None:
            # The step is sent to a worker first, then the page is told (rendered from
            # the rows in hand, no query): the worker's claim takes longer than that.
            run_step_schedule(run_id=run.pk)
        events.run_appended(run_id=run.pk, with_user_message=True, new=run)
        events.conversation_changed(conversation_id=conversation.pk, conversation=conversation)
    return run


def _compare_models(model_ids: Sequence[int]) -> list[ModelConfig]:
    """The enabled ModelConfigs ``model_ids`` names, in its order; ``CompareInvalid``
    unless they are 2 to 6 different ones, all enabled."""
    ids = list(dict.fromkeys(model_ids))
    if len(ids) != len(model_ids):
        raise CompareInvalid("Pick each model once.")
    if not compare.MIN_MODELS <= len(ids) <= compare.MAX_MODELS:
        raise CompareInvalid(
            f"Pick {compare.MIN_MODELS} to {compare.MAX_MODELS} models to compare "
            f"({len(ids)} picked)."
        )
    by_id = {m.pk: m for m in model_configs_chat().filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in by_id]
    if missing:
        raise CompareInvalid("A model picked to compare is not available. Pick another one.")
    return [by_id[pk] for pk in ids]


def _chain_images_check(documents: list, plan: dict[str, Any]) -> None:
    """Refuse images for a chain whose step models do not all accept images."""
    if not documents:
        return
    ids = [step["model"]["id"] for step in plan["steps"]]
    configs = ModelConfig.objects.in_bulk(ids)
    attachments_images_check(documents, [configs[pk] for pk in dict.fromkeys(ids)])


def _message_sent(user, message: Message, run: Run) -> dict[str, Any]:
    """The ``message.sent`` audit event's arguments (``audit_record``)."""
    attached = [a["id"] for a in message.metadata.get("attachments", [])]
    return {
        "action": "message.sent",
        "actor": user,
        "target_type": "message",
        "target_id": message.pk,
        "data": {
            "conversation_id": message.conversation_id,
            "run_id": run.pk,
            "chars": len(message.content),
            **({"chain": run.parameters["chain"]["name"]} if run.kind == Run.Kind.CHAIN else {}),
            **({"attachments": attached} if attached else {}),
        },
    }


def _message_send_checks(conversation: Conversation, *, in_progress: bool) -> None:
    if conversation.archived:
        raise ConversationArchived("This conversation is archived; unarchive it to continue.")
    if not conversation.model_config.enabled:
        raise ModelUnavailable("This conversation's model has been disabled. Pick another model.")
    if in_progress:
        raise RunInProgress("A reply is still being written. Stop it or wait for it.")


def _message_insert(
    *,
    user,
    conversation_id: int,
    content: str,
    compare_models: list[ModelConfig] | None = None,
    attachments: list | None = None,
    answered_by_chain: bool = False,
) -> tuple[Conversation, Message, Run]:
    """Lock and check the conversation, insert the message and its run (the ORM);
    with ``compare_models``, the compare run and its parts (``_compare_insert``);
    with ``attachments`` (documents, ``attachments_for_send``), the message's links
    to them, after checking that the models answering it accept its images (a
    chain's: the caller's to check)."""
    conversation = _own_conversation(
        user=user, conversation_id=conversation_id, lock=True, with_model=True
    )
    _message_send_checks(
        conversation, in_progress=conversation.runs.exclude(status__in=Run.TERMINAL).exists()
    )
    call = _call_settings(conversation)
    _agent_check(conversation, call)
    attachments = attachments or []
    if attachments and not answered_by_chain:
        attachments_images_check(
            attachments, compare_models if compare_models is not None else [call.config]
        )
    message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content=content,
        metadata={"attachments": attachments_shown(attachments)} if attachments else {},
    )
    if attachments:
        attachments_link(message, attachments)
    # The next exchange of the branch shown (conversations.branches).
    parent_id = _branch_end(conversation)
    if compare_models is not None:
        run = _compare_insert(conversation, message, parent_id, call, compare_models)
    else:
        parameters = call.record()
        run = Run.objects.create(
            conversation=conversation,
            user_message=message,
            parent_id=parent_id,
            metadata=_root(parent_id),
            model_config=call.config,
            prompt_version=call.version,
            parameters=parameters,
            max_steps=run_max_steps(parameters, default=Run.DEFAULT_MAX_STEPS),
        )
    if not conversation.title:
        conversation.title = auto_title(content)
    conversation.current_run = run
    conversation.save(update_fields=["title", "current_run", "updated_at"])
    return conversation, message, run


def _agent_check(conversation: Conversation, call: CallSettings) -> None:
    """Refuse a message to a conversation whose agent its owner may no longer see
    (``NotFound``-free: ``SettingsInvalid``) or whose agent's model is disabled
    (``ModelUnavailable``)."""
    if conversation.agent_id is None:
        return
    if not agents_visible(user=conversation.owner).filter(pk=conversation.agent_id).exists():
        raise SettingsInvalid(
            "This conversation's agent is no longer shared with you. Nothing was sent: "
            "pick another agent."
        )
    if not call.config.enabled:
        raise ModelUnavailable(
            f"The agent's model {call.config.name} has been disabled. Pick another agent."
        )


def _compare_insert(
    conversation: Conversation,
    message: Message,
    parent_id: int | None,
    call: CallSettings,
    models: list[ModelConfig],
) -> Run:
    """The compare run answering ``message`` (its model and system prompt the
    summarizer's, ``compare.summary_settings``) and one queued part per model of
    ``models`` (the conversation's settings with that model), each scheduled; the
    compare run goes to ``awaiting_parts``. Parts and the compare run share the
    parent: each is a place the conversation may continue from."""
    summary = compare.summary_settings(conversation=conversation)
    summary_call = replace(
        _call_settings(conversation, config=summary.config),
        system_prompt=summary.instruction,
        source="library" if summary.version is not None else "default",
        version=summary.version,
        label="production" if summary.version is not None else "",
        variables={},
        agent=None,  # the summary is the deployment's, not the agent's
    )
    orchestrator = Run.objects.create(
        conversation=conversation,
        user_message=message,
        parent_id=parent_id,
        kind=Run.Kind.COMPARE,
        metadata={**_root(parent_id), "summary": summary.shown},
        model_config=summary_call.config,
        prompt_version=summary_call.version,
        parameters=summary_call.record(),
    )
    parts: list[Run] = []
    for position, config in enumerate(models):
        part_call = _call_settings(conversation, config=config) if config != call.config else call
        part = Run.objects.create(
            conversation=conversation,
            user_message=message,
            parent_id=parent_id,
            orchestrator=orchestrator,
            position=position,
            metadata=_root(parent_id),
            model_config=part_call.config,
            prompt_version=part_call.version,
            parameters=part_call.record(),
        )
        parts.append(part)
        run_step_schedule(run_id=part.pk)
    metadata = {**orchestrator.metadata, "parts": [part.pk for part in parts]}
    run_transition(run=orchestrator, to=Run.Status.AWAITING_PARTS, metadata=metadata)
    # As the page draws it (events.run_appended): the columns, the summary shown.
    orchestrator.compare_parts, orchestrator.compare_chosen = parts, orchestrator.pk
    return orchestrator


def _root(parent_id: int | None) -> dict[str, Any]:
    """A new run's metadata: a first exchange says so (``branches.conversation_tree``)."""
    return {"root": True} if parent_id is None else {}


def _branch_end(conversation: Conversation) -> int | None:
    """The last run of the branch shown (``current_run``, else the newest run)."""
    if conversation.current_run_id is not None:
        return conversation.current_run_id
    return conversation.runs.order_by("-id").values_list("pk", flat=True).first()


def _call_settings(
    conversation: Conversation, *, config: ModelConfig | None = None
) -> CallSettings:
    """``prompting.call_settings`` (with ``config`` instead of the conversation's
    model), its refusal a ``SettingsInvalid`` (nothing is sent)."""
    try:
        return call_settings(conversation=conversation, config=config)
    except PROMPT_REFUSALS as error:
        raise SettingsInvalid(
            f"{error} Nothing was sent: fix the system prompt in this conversation's settings."
        ) from None


def _own_run(*, user, run_id: int) -> Run:
    """Lock run ``run_id`` of ``user`` (``runs.run_lock``); ``NotFound`` otherwise."""
    run = (
        run_lock(run_id=run_id, owner=user) if user is not None and user.is_authenticated else None
    )
    if run is None:
        raise NotFound("Run not found.")
    return run


def run_cancel(*, user, run_id: int) -> Run:
    """Stop a run. The partial reply is kept and marked stopped. A compare's or a
    chain's unfinished parts, an answer's sub-runs (``conversations.subagents``), are
    stopped with it (``toolphase.parts_stop``).

    A run being streamed by a live worker is flagged (``cancel_requested``) and
    the worker stops at its next save of the reply; any other active run is
    stopped at once, its unstarted tool calls and pending approvals cancelled.
    Raises ``NotFound`` or ``RunNotCancellable`` (already finished).
    """
    with transaction.atomic(), audit_deferred():
        run = _own_run(user=user, run_id=run_id)
        if run.is_terminal:
            raise RunNotCancellable(f"This reply has already {_FINISHED[run.status]}.")
        if run.kind != Run.Kind.ANSWER or run.metadata.get("agent_parts"):
            # A compare's or chain's parts, an answer's sub-runs, first (the lock order).
            parts_stop(run=run, actor=user)
        if not run_cancel_request(run=run, actor=user):
            run_stop(run=run, actor=user)
    return run


#: How a finished run is described to someone who tries to stop it.
_FINISHED: dict[str, str] = {
    Run.Status.COMPLETED: "finished",
    Run.Status.FAILED: "failed",
    Run.Status.CANCELLED: "been stopped",
}


def _retry_blocked_message(run: Run) -> str:
    """Why a run refused by a budget or rate limit cannot be retried yet."""
    until = run.retry_not_before
    if until is None:
        return "The budget that refused this reply does not reset; ask an administrator."
    return (
        "The limit that refused this reply resets at "
        f"{until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; retry after that."
    )


def run_retry(*, user, run_id: int) -> Run:
    """Answer a failed run's user message again with a new run (dispatched on commit).

    The new run is an alternative to the failed one (``run_regenerate``), shown; one
    refused by a budget or rate limit only once that has reset (``Run.retry_blocked``).
    Raises ``NotFound``, ``RunInProgress``,
    ``RunNotRetryable``, ``ConversationArchived``, ``ModelUnavailable``.
    """
    with transaction.atomic():
        # The conversation first, then the run (the lock order in conversations.runs).
        conversation, run = _own_run_and_conversation(user=user, run_id=run_id)
        if run.status != Run.Status.FAILED:
            raise RunNotRetryable("Only a failed reply can be retried.")
        return _answer_again(conversation, run, metadata={"retry_of": run.pk})


def run_regenerate(*, user, run_id: int) -> Run:
    """Answer run ``run_id``'s user message again, at the same place of the
    conversation: the new answer is an alternative to the old one (``< 2/2 >``), and
    the branch shown ends with it (what came after the old one stays on the old
    one's branch). Any finished reply: completed, stopped or failed.

    Raises ``NotFound``, ``RunInProgress`` (the run or another one is still being
    written), ``RunNotRetryable`` (a budget or rate limit that refused it has not
    reset), ``ConversationArchived``, ``ModelUnavailable``.
    """
    with transaction.atomic():
        conversation, run = _own_run_and_conversation(user=user, run_id=run_id)
        return _answer_again(conversation, run, metadata={"regenerated_from": run.pk})


def _own_run_and_conversation(*, user, run_id: int) -> tuple[Conversation, Run]:
    """Lock the conversation of run ``run_id``, then the run (the lock order)."""
    conversation_id = (
        Run.objects.filter(pk=run_id).values_list("conversation_id", flat=True).first()
    )
    if conversation_id is None:
        raise NotFound("Run not found.")
    conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
    return conversation, _own_run(user=user, run_id=run_id)


def _answer_again(conversation: Conversation, run: Run, *, metadata: dict[str, Any]) -> Run:
    """A new run answering ``run``'s user message after the same parent; shown."""
    if not run.is_terminal or conversation.runs.exclude(status__in=Run.TERMINAL).exists():
        raise RunInProgress("A reply is still being written. Stop it or wait for it.")
    if run.retry_blocked:
        raise RunNotRetryable(_retry_blocked_message(run))
    _branch_checks(conversation)
    call = _call_settings(conversation)  # the conversation's settings now, recorded
    parent_id = conversation_tree(conversation_id=conversation.pk).parent[run.pk]
    new = Run.objects.create(
        conversation=conversation,
        user_message_id=run.user_message_id,
        parent_id=parent_id,
        max_steps=run.max_steps,
        metadata={**metadata, **_root(parent_id)},
        model_config=call.config,
        prompt_version=call.version,
        parameters=call.record(),
    )
    conversation.current_run = new
    conversation.save(update_fields=["current_run", "updated_at"])
    events.timeline_redraw(conversation_id=conversation.pk)
    run_step_schedule(run_id=new.pk)
    return new


def _branch_checks(conversation: Conversation) -> None:
    if conversation.archived:
        raise ConversationArchived("This conversation is archived; unarchive it to continue.")
    if not model_configs_chat().filter(pk=conversation.model_config_id).exists():
        raise ModelUnavailable("This conversation's model has been disabled.")


def message_edit(*, user, message_id: int, content: str) -> Run:
    """Send an edited version of user message ``message_id``: a new user message at
    the same place of the conversation (an alternative to the old one, ``< 2/2 >``),
    answered by a new run; the branch shown ends with it, and the old branch, with
    what followed the old message, stays reachable.

    Raises ``NotFound`` (not the user's, not a user message a run answers),
    ``EmptyMessage``, ``MessageTooLong``, ``RunInProgress``, ``ConversationArchived``,
    ``ModelUnavailable``.
    """
    content = message_text(content)
    with transaction.atomic():
        conversation_id = (
            Message.objects.filter(pk=message_id, role=Message.Role.USER)
            .values_list("conversation_id", flat=True)
            .first()
        )
        if conversation_id is None:
            raise NotFound("Message not found.")
        conversation = _own_conversation(
            user=user, conversation_id=conversation_id, lock=True, with_model=True
        )
        _message_send_checks(
            conversation, in_progress=conversation.runs.exclude(status__in=Run.TERMINAL).exists()
        )
        tree = conversation_tree(conversation_id=conversation.pk)
        answered = [run for run, message in tree.message.items() if message == message_id]
        if not answered:
            raise NotFound("This message cannot be edited.")
        shown = set(tree.path(shown_leaf(conversation, tree)))
        # The place of the version shown, else of its newest answer.
        parent_id = tree.parent[next((r for r in answered if r in shown), max(answered))]
        call = _call_settings(conversation)
        # The new version carries the old one's files (the edit changes the text only).
        attached = attachments_of(message_id)
        attachments_images_check(attached, [call.config])
        metadata: dict[str, Any] = {"edit_of": message_id}
        if attached:
            metadata["attachments"] = attachments_shown(attached)
        message = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=content, metadata=metadata
        )
        attachments_link(message, attached)
        parameters = call.record()
        run = Run.objects.create(
            conversation=conversation,
            user_message=message,
            parent_id=parent_id,
            metadata=_root(parent_id),
            model_config=call.config,
            prompt_version=call.version,
            parameters=parameters,
            max_steps=run_max_steps(parameters, default=Run.DEFAULT_MAX_STEPS),
        )
        conversation.current_run = run
        conversation.save(update_fields=["current_run", "updated_at"])
        sent = _message_sent(user, message, run)
        sent["data"]["edit_of"] = message_id
        audit_record(**sent)
        run_step_schedule(run_id=run.pk)
        events.timeline_redraw(conversation_id=conversation.pk)
        events.conversation_changed(conversation_id=conversation.pk, conversation=conversation)
    return run


def branch_show(*, user, run_id: int) -> Conversation:
    """Show the branch through run ``run_id`` (its newest one): what the page draws
    and the next message continues. Raises ``NotFound``, ``RunInProgress``."""
    with transaction.atomic():
        conversation, _run = _own_run_and_conversation(user=user, run_id=run_id)
        if conversation.runs.exclude(status__in=Run.TERMINAL).exists():
            raise RunInProgress("A reply is still being written. Stop it or wait for it.")
        tree = conversation_tree(conversation_id=conversation.pk)
        conversation.current_run_id = tree.newest_below(run_id)
        conversation.save(update_fields=["current_run"])
        events.timeline_redraw(conversation_id=conversation.pk)
    return conversation


def compare_choose(*, user, run_id: int) -> Conversation:
    """Continue the conversation with run ``run_id``: one answer of a compare
    exchange (a part) or its summary (the compare run). The branch shown then ends
    at it (or at what already follows it), so later messages read that answer
    only (``engine.history_with_ids``). The choice is kept in the compare run's
    ``metadata["chosen_run_id"]`` and audited (``compare.chosen``).

    Raises ``NotFound`` (not the user's, or not an answer of a comparison),
    ``RunInProgress`` (a reply is still being written), ``CompareInvalid`` (the
    answer did not complete).
    """
    with transaction.atomic():
        row = (
            Run.objects.filter(pk=run_id).values_list("conversation_id", "orchestrator_id").first()
        )
        if row is None:
            raise NotFound("Run not found.")
        conversation = _own_conversation(user=user, conversation_id=row[0], lock=True)
        # The compare run, then its part: the lock order.
        orchestrator = _own_run(user=user, run_id=row[1] or run_id)
        run = orchestrator if row[1] is None else _own_run(user=user, run_id=run_id)
        if orchestrator.kind != Run.Kind.COMPARE:
            raise NotFound("This answer is not part of a comparison.")
        if conversation.runs.exclude(status__in=Run.TERMINAL).exists():
            raise RunInProgress("A reply is still being written. Stop it or wait for it.")
        if run.status != Run.Status.COMPLETED:
            raise CompareInvalid("Only a finished answer can be continued with.")
        metadata = {**orchestrator.metadata, "chosen_run_id": run.pk}
        Run.objects.filter(pk=orchestrator.pk).update(metadata=metadata)
        tree = conversation_tree(conversation_id=conversation.pk)
        conversation.current_run_id = tree.newest_below(run.pk)
        conversation.save(update_fields=["current_run"])
        audit_record(
            action="compare.chosen",
            actor=user,
            target_type="run",
            target_id=orchestrator.pk,
            data={
                "chosen_run_id": run.pk,
                "summary": run.pk == orchestrator.pk,
                "model": compare.part_name(run),
            },
        )
        events.timeline_redraw(conversation_id=conversation.pk)
    return conversation


def compare_settings_set(
    *,
    user,
    conversation_id: int,
    model_id: int | None,
    prompt_id: int | None,
    shown: bool | None,
) -> Conversation:
    """Set how Compare summaries are written in the conversation (``conversations.compare``):
    the summarizer model ``model_id`` (an enabled ModelConfig), its system prompt
    ``prompt_id`` (a library system prompt ``user`` may see), and whether a summary
    is written (``shown``); ``None`` for any: the deployment's. Applies from the
    next Compare message. Audited (``conversation.compare_settings_changed``).

    Raises ``NotFound``, ``ModelUnavailable``, ``SettingsInvalid`` (a prompt not
    available, or not a system prompt), ``ConversationArchived``.
    """
    if model_id is not None:
        model_config_pick(model_config_id=model_id)
    if prompt_id is not None:
        try:
            prompt = prompt_get(user=user, prompt_id=prompt_id)
        except PromptNotFound:
            raise SettingsInvalid("That prompt is not available.") from None
        if prompt.kind != Prompt.Kind.SYSTEM:
            raise SettingsInvalid(f"{prompt.name} is a message template, not a system prompt.")
    with transaction.atomic():
        conversation = _own_conversation(user=user, conversation_id=conversation_id, lock=True)
        if conversation.archived:
            raise ConversationArchived("This conversation is archived; unarchive it to continue.")
        conversation.compare_summary_model_id = model_id
        conversation.compare_summary_prompt_id = prompt_id
        conversation.compare_summary_shown = shown
        conversation.save(
            update_fields=[
                "compare_summary_model",
                "compare_summary_prompt",
                "compare_summary_shown",
                "updated_at",
            ]
        )
        audit_record(
            action="conversation.compare_settings_changed",
            actor=user,
            target_type="conversation",
            target_id=conversation.pk,
            data={"model_id": model_id, "prompt_id": prompt_id, "shown": shown},
        )
    return conversation


#: Where a conversation's system prompt comes from, as its settings form asks.
SystemPromptSource = Literal["default", "library", "text"]
#: The most variables a system prompt's form may send values for.
MAX_VARIABLES = 50


def _settings_summary(conversation: Conversation) -> dict[str, Any]:
    """The settings as the ``conversation.settings_changed`` audit event records them."""
    return {
        "system_prompt_id": conversation.system_prompt_id,
        "system_prompt_label": conversation.system_prompt_label,
        "system_prompt_version_id": conversation.system_prompt_version_id,
        "system_prompt_text_chars": len(conversation.system_prompt_text),
        "prompt_variables": sorted(conversation.prompt_variables or {}),
        "temperature": None if conversation.temperature is None else str(conversation.temperature),
        "max_output_tokens": conversation.max_output_tokens,
        "model_config_id": conversation.model_config_id,
    }


def _settings_numbers(
    temperature: Decimal | None, max_output_tokens: int | None
) -> tuple[Decimal | None, int | None]:
    if temperature is not None:
        if not temperature.is_finite() or not Decimal(0) <= temperature <= Decimal(2):
            raise SettingsInvalid("The temperature must be a number from 0 to 2.")
        temperature = temperature.quantize(Decimal("0.01"))
    if max_output_tokens is not None and not 1 <= max_output_tokens <= 1_000_000:
        raise SettingsInvalid("Max output tokens must be a whole number from 1.")
    return temperature, max_output_tokens


def conversation_settings_set(
    *,
    user,
    conversation_id: int,
    source: SystemPromptSource,
    system_prompt_id: int | None = None,
    label: str = "",
    version_id: int | None = None,
    text: str = "",
    variables: dict[str, str] | None = None,
    temperature: Decimal | None = None,
    max_output_tokens: int | None = None,
) -> tuple[Conversation, str]:
    """Set the conversation's system prompt and parameters for its next runs.

    ``source``: ``"default"`` (``TOLLGATE_SYSTEM_PROMPT``), ``"text"`` (``text``,
    the conversation's own) or ``"library"``: the system prompt
    ``system_prompt_id`` (one ``user`` may see) pinned at ``version_id`` or
    following ``label`` (``production`` when it has one, else ``latest``),
    rendered with ``variables`` (a missing one is refused here, by name, as a
    send would refuse it). Choosing a library prompt whose version names a model
    switches the conversation to that model when it is enabled. ``temperature``
    (0 to 2) and ``max_output_tokens`` ``None``: the prompt's, else the model's.

    Returns the conversation and a note for the user (the model switched, or
    not). Raises ``NotFound``, ``SettingsInvalid``, ``ConversationArchived``.
    Audited (``conversation.settings_changed``).
    """
    temperature, max_output_tokens = _settings_numbers(temperature, max_output_tokens)
    values = {str(k): str(v) for k, v in (variables or {}).items()}
    if len(values) > MAX_VARIABLES:
        raise SettingsInvalid(f"A system prompt may have at most {MAX_VARIABLES} variables.")
    if any(len(v) > settings.TOLLGATE_MAX_MESSAGE_CHARS for v in values.values()):
        raise SettingsInvalid("A variable's value is too long.")
    text = (text or "").replace("\r\n", "\n")
    if source == "text" and not text.strip():
        raise SettingsInvalid("Write the conversation's system prompt, or pick another.")
    if len(text) > settings.TOLLGATE_PROMPT_MAX_CHARS:
        raise SettingsInvalid("The system prompt is too long.")
    note = ""
    with transaction.atomic():
        conversation = _own_conversation(
            user=user, conversation_id=conversation_id, lock=True, with_model=True
        )
        if conversation.archived:
            raise ConversationArchived("This conversation is archived; unarchive it to continue.")
        before = _settings_summary(conversation)
        conversation.temperature = temperature
        conversation.max_output_tokens = max_output_tokens
        conversation.system_prompt_text = text if source == "text" else ""
        conversation.system_prompt = None
        conversation.system_prompt_label = ""
        conversation.system_prompt_version = None
        conversation.prompt_variables = {}
        if source == "library":
            note = _library_prompt_set(
                conversation, user, system_prompt_id, label, version_id, values, before
            )
        elif source not in ("default", "text"):
            raise SettingsInvalid("Pick where the system prompt comes from.")
        _call_settings(conversation)  # the next send would refuse it: refuse it now
        conversation.save()
        audit_record(
            action="conversation.settings_changed",
            actor=user,
            target_type="conversation",
            target_id=conversation.pk,
            data={"from": before, "to": _settings_summary(conversation)},
        )
    return conversation, note


def _library_prompt_set(
    conversation: Conversation,
    user,
    prompt_id: int | None,
    label: str,
    version_id: int | None,
    values: dict[str, str],
    before: dict[str, Any],
) -> str:
    """Point ``conversation`` at a library system prompt (see
    ``conversation_settings_set``); the note about its model."""
    if prompt_id is None:
        raise SettingsInvalid("Pick a system prompt from the library.")
    try:
        prompt = prompt_get(user=user, prompt_id=prompt_id)
    except PromptNotFound:
        raise SettingsInvalid("That prompt is not available.") from None
    if prompt.kind != Prompt.Kind.SYSTEM:
        raise SettingsInvalid(f"{prompt.name} is a message template, not a system prompt.")
    try:
        version = prompt_version_for_use(
            user=user, prompt_id=prompt.pk, ref=label or "", version_id=version_id
        )
    except PromptError as error:
        raise SettingsInvalid(str(error)) from None
    conversation.system_prompt = prompt
    conversation.system_prompt_version = version if version_id is not None else None
    if version_id is None:
        has_production = version.labels.filter(name="production").exists()
        conversation.system_prompt_label = label or ("production" if has_production else LATEST)
    conversation.prompt_variables = {k: v for k, v in values.items() if k in version.variables}
    changed = (prompt.pk, version_id, conversation.system_prompt_label) != (
        before["system_prompt_id"],
        before["system_prompt_version_id"],
        before["system_prompt_label"],
    )
    if not version.model_name or not changed:
        return ""
    model = model_configs_chat().filter(name=version.model_name).first()
    if model is None:
        return (
            f"{prompt.name} asks for the model {version.model_name}, which is not available; "
            f"this conversation keeps {conversation.model_config.name}."
        )
    if model.pk == conversation.model_config_id:
        return ""
    conversation.model_config = model
    return f"Switched to the model {model.name}, as {prompt.name} asks."


def preferences_set(
    *,
    user,
    default_model_id: int | None,
    default_system_prompt: str,
    theme: str,
    send_key: str,
) -> UserPreferences:
    """Save ``user``'s settings: the model and system prompt new conversations start
    with, the theme of every page, the key that sends. Raises ``ModelUnavailable``
    for a model that is not enabled, ``ConversationError`` for a value out of range."""
    if default_model_id is not None:
        model_config_pick(model_config_id=default_model_id)
    if theme not in UserPreferences.Theme.values or send_key not in UserPreferences.SendKey.values:
        raise ConversationError("Pick a theme and a send key from the lists.")
    prompt = (default_system_prompt or "").replace("\r\n", "\n").strip()
    if len(prompt) > settings.TOLLGATE_PROMPT_MAX_CHARS:
        raise ConversationError("The default system prompt is too long.")
    with transaction.atomic():
        preferences, _ = UserPreferences.objects.select_for_update().get_or_create(user=user)
        preferences.default_model_id = default_model_id
        preferences.default_system_prompt = prompt
        preferences.theme = theme
        preferences.send_key = send_key
        preferences.save()
    return preferences
