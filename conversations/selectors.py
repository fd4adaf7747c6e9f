"""Reads for conversations: each a fixed number of queries, whatever the row count."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.http import Http404

from conversations.branches import conversation_tree, shown_leaf
from conversations.models import Conversation, Message, ModelConfig, Run
from prompts.models import LATEST, Prompt, PromptVersion
from prompts.selectors import system_prompts_for
from tools.models import ToolInvocation


@dataclass
class ConversationPage:
    """One page of a user's conversation list: ``items``, most recently active
    first, and ``more``, the cursor of the next page (``None`` on the last)."""

    items: list[Conversation]
    more: str | None


class BadCursor(ValueError):
    """A ``conversation_page`` cursor that is not one this module made."""


def _cursor(conversation: Conversation) -> str:
    return f"{conversation.updated_at.isoformat()}~{conversation.pk}"


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    stamp, _, pk = cursor.partition("~")
    try:
        when = datetime.fromisoformat(stamp)
        return when if when.tzinfo else when.replace(tzinfo=UTC), int(pk)
    except ValueError:
        raise BadCursor(f"Not a conversation list position: {cursor[:80]!r}.") from None


def conversation_page(
    *, user, archived: bool = False, after: str | None = None, size: int | None = None
) -> ConversationPage:
    """The user's conversations, most recently active first, ``size`` at a time
    (default ``TOLLGATE_CONVERSATION_LIST_PAGE``); one query.

    ``after``: the ``more`` cursor of the page before (keyset pagination on
    ``(updated_at, id)``, the list's order, so a conversation that moves up
    while the user scrolls is neither repeated on a later page nor skipped
    before it). Raises ``BadCursor`` for a cursor this function did not make.
    """
    size = size or settings.TOLLGATE_CONVERSATION_LIST_PAGE
    rows = Conversation.objects.filter(owner=user, archived=archived)
    if after:
        when, pk = _parse_cursor(after)
        rows = rows.filter(Q(updated_at__lt=when) | Q(updated_at=when, pk__lt=pk))
    items = list(rows.order_by("-updated_at", "-id")[: size + 1])
    more = _cursor(items[size - 1]) if len(items) > size else None
    return ConversationPage(items=items[:size], more=more)


def conversation_get(*, user, conversation_id: int) -> Conversation:
    """The user's conversation with its model, else ``Http404`` (also for other users')."""
    conversation = (
        Conversation.objects.select_related(
            "model_config", "system_prompt", "system_prompt_version"
        )
        .filter(pk=conversation_id, owner=user)
        .first()
    )
    if conversation is None:
        raise Http404("Conversation not found")
    return conversation


def model_configs_enabled() -> list[ModelConfig]:
    return list(ModelConfig.objects.filter(enabled=True).order_by("-is_default", "name"))


def model_names_enabled(**_signal: Any) -> list[str]:
    """The names of the enabled models; one query. Receiver of
    ``prompts.signals.model_names_query`` (``ConversationsConfig.ready``), so a
    prompt version may name a model without prompts importing conversations."""
    return list(ModelConfig.objects.filter(enabled=True).values_list("name", flat=True))


@dataclass
class TimelineItem:
    """A top-level message (``message``) or a run block (``run``) in page order."""

    message: Message | None = None
    run: Run | None = None


@dataclass
class Timeline:
    """Display items, oldest first; ``earlier``: the ``before`` of the page
    before these (``None`` when they start the conversation)."""

    items: list[TimelineItem] = field(default_factory=list)
    earlier: int | None = None
    #: The first message the latest model call was sent, when it left older ones out.
    context_cut: int | None = None


def conversation_timeline(
    *,
    conversation: Conversation,
    before: int | None = None,
    size: int | None = None,
    context_cut: int | None = None,
) -> Timeline:
    """The last ``size`` exchanges of ``conversation`` (default
    ``TOLLGATE_TIMELINE_PAGE``) in display order, or the ``size`` before the
    user message ``before``: five queries, whatever the conversation's length.

    Only the branch shown (``conversations.branches``): an exchange is a user
    message on it followed by the run of the branch answering it; each run carries
    ``run.timeline_messages`` (its assistant and tool messages, in order),
    ``run.timeline_invocations`` (its tool calls with their approval requests) and
    ``run.switch`` (``branches.Switch``: its place among the answers regenerated
    for the message); the message carries ``switch`` (among the versions edited)
    and ``editable``. Pages are keyed on the top-level message id (keyset
    pagination), so new messages never shift an earlier page.

    ``context_cut`` (the latest page's, for an earlier page): where the history the
    latest model call was sent begins, marked in the page (``Timeline.context_cut``;
    the latest page reads it from its last run).
    """
    size = size or settings.TOLLGATE_TIMELINE_PAGE
    tree = conversation_tree(conversation_id=conversation.pk)
    path = tree.path(shown_leaf(conversation, tree))
    shown_run = {tree.message[run_id]: run_id for run_id in path}
    tops = Message.objects.filter(conversation=conversation, run__isnull=True).filter(
        # On the branch, or answered by no run (drawn on every branch).
        Q(pk__in=list(shown_run)) | ~Exists(Run.objects.filter(user_message=OuterRef("pk")))
    )
    if before is not None:
        tops = tops.filter(pk__lt=before)
    page = list(tops.order_by("-id")[: size + 1])
    timeline = Timeline(earlier=page[size - 1].pk if len(page) > size else None)
    page = page[:size][::-1]
    runs = list(
        Run.objects.filter(pk__in=[shown_run[m.pk] for m in page if m.pk in shown_run]).order_by(
            "id"
        )
    )
    by_run: dict[int, list[Message]] = {r.pk: [] for r in runs}
    for message in Message.objects.filter(run__in=runs).order_by("id"):
        by_run[cast(int, message.run_id)].append(message)  # not None: run__in
    invocations = _invocations_by_run(Q(run_id__in=list(by_run)))
    runs_by_user_message: dict[int, list[Run]] = {}
    for run in runs:
        run.timeline_messages = by_run[run.pk]
        run.timeline_invocations = invocations.get(run.pk, [])
        run_steps_attach(run)
        run.switch = tree.answer_switch(run.pk)
        runs_by_user_message.setdefault(run.user_message_id, []).append(run)
    timeline.context_cut = _context_cut(runs) if before is None else context_cut
    for message in page:
        if message.pk in shown_run:
            message.switch = tree.message_switch(shown_run[message.pk])
            message.editable = True
        timeline.items.append(TimelineItem(message=message))
        for run in runs_by_user_message.get(message.pk, []):
            timeline.items.append(TimelineItem(run=run))
    return timeline


def _context_cut(runs: list[Run]) -> int | None:
    """Where the latest run's last model call began its history, when it left older
    messages out (``Run.metadata["context_cut_message_id"]``). ``runs``: the latest
    page's runs, oldest first (the conversation's latest among them)."""
    cut = runs[-1].metadata.get("context_cut_message_id") if runs else None
    return cut if isinstance(cut, int) else None


def _invocations_by_run(where: Q) -> dict[int, list[ToolInvocation]]:
    rows = (
        ToolInvocation.objects.filter(where)
        .select_related(
            "approval", "approval__decided_by", "approval__requester", "approval__approver_group"
        )
        # The cards' progress ("Approved by Ana (1 of 2)"): one query for every card's votes.
        .prefetch_related("approval__votes__voter")
        .order_by("run_id", "message_id", "position", "id")
    )
    grouped: dict[int, list[ToolInvocation]] = {}
    for invocation in rows:
        grouped.setdefault(invocation.run_id, []).append(invocation)
    return grouped


def run_for_push(*, run_id: int) -> Run:
    """A run with its user message, messages and tool calls, ready to render."""
    run = Run.objects.select_related("user_message", "conversation__owner").get(pk=run_id)
    run.timeline_messages = list(run.messages.order_by("id"))
    run.timeline_invocations = _invocations_by_run(Q(run_id=run_id)).get(run_id, [])
    run_steps_attach(run)
    return run


def run_steps_attach(run: Run) -> None:
    """Arrange a loaded run for display as its answer happened: each assistant
    message carries ``steps``, the tool calls it made (in order), and each call
    its ``output_message``, the tool message that answered it (or ``None``);
    ``run.orphan_steps`` holds calls of no message loaded here. The tool messages
    so drawn inside their call leave ``run.timeline_messages``: a call is drawn
    once, where it was made (issue 22, defect 5). No query."""
    answers: dict[Any, Message] = {}
    for message in run.timeline_messages:
        if message.role == Message.Role.TOOL:
            key = message.metadata.get("invocation_id") or ("call", message.tool_call_id)
            answers[key] = message
    steps: dict[int | None, list[ToolInvocation]] = {}
    drawn: set[int] = set()
    for invocation in run.timeline_invocations:
        output = answers.get(invocation.pk) or answers.get(("call", invocation.tool_call_id))
        invocation.output_message = output  # type: ignore[attr-defined]
        if output is not None:
            drawn.add(output.pk)
        steps.setdefault(invocation.message_id, []).append(invocation)
    for message in run.timeline_messages:
        message.steps = steps.pop(message.pk, [])
    # Calls whose message is not among these (rows made without one): after them.
    run.orphan_steps = [invocation for rest in steps.values() for invocation in rest]
    run.timeline_messages = [m for m in run.timeline_messages if m.pk not in drawn]


def run_cancel_requested(*, run_id: int, **_signal: Any) -> bool:
    """Whether run ``run_id`` was asked to stop (or no longer exists); one query.

    Receiver of ``tools.signals.run_cancel_query`` (``ConversationsConfig.ready``),
    so tools can stop a running call (MCP cancellation) without importing
    conversations.
    """
    flag = Run.objects.filter(pk=run_id).values_list("cancel_requested", flat=True).first()
    return flag is None or bool(flag)


@dataclass
class SettingsChoices:
    """What a conversation's settings form offers and shows (``settings_choices``).

    ``refs``: ``(value, label)`` of the chosen prompt's versions: its labels,
    ``latest``, then each version pinned. ``variables``: ``(name, value)`` of
    the variables of the version ``ref`` names.
    """

    source: str
    prompts: list[Prompt]
    prompt: Prompt | None
    refs: list[tuple[str, str]]
    ref: str
    variables: list[tuple[str, str]]
    text: str
    temperature: Any
    max_output_tokens: Any


def settings_choices(
    *, conversation: Conversation, user, data: dict[str, Any] | None = None
) -> SettingsChoices:
    """The settings form of ``conversation``: as saved, or as ``data`` (the form's
    values so far, when the user picked another prompt) asks. Four queries."""
    data = data or {}
    prompts = system_prompts_for(user=user)
    if data:
        source = data.get("source") or "default"
        prompt_id = data.get("system_prompt")
        ref = data.get("ref") or ""
        values = {k.removeprefix("var_"): v for k, v in data.items() if k.startswith("var_")}
    else:
        source = (
            "library"
            if conversation.system_prompt_id
            else ("text" if conversation.system_prompt_text else "default")
        )
        prompt_id = conversation.system_prompt_id
        ref = (
            f"version:{conversation.system_prompt_version_id}"
            if conversation.system_prompt_version_id
            else f"label:{conversation.system_prompt_label}"
        )
        values = dict(conversation.prompt_variables or {})
    prompt = next((p for p in prompts if str(p.pk) == str(prompt_id)), None)
    if prompt is None and source == "library" and prompts and data:
        prompt = prompts[0]
    refs: list[tuple[str, str]] = []
    variables: list[tuple[str, str]] = []
    if prompt is not None:
        versions: list[PromptVersion] = list(prompt.versions.all())  # newest first
        by_id = {v.pk: v for v in versions}
        labels = list(prompt.labels.all())
        refs = [
            (f"label:{x.name}", f"{x.name} (now v{by_id[x.version_id].number})") for x in labels
        ]
        refs.append((f"label:{LATEST}", f"latest (now v{versions[0].number})"))
        refs += [(f"version:{v.pk}", f"v{v.number} only (pinned)") for v in versions]
        if ref not in {value for value, _ in refs}:
            ref = refs[0][0]
        kind, _, value = ref.partition(":")
        if kind == "version":
            version = by_id[int(value)]
        elif value == LATEST:
            version = versions[0]
        else:
            version = by_id[next(x.version_id for x in labels if x.name == value)]
        variables = [(name, str(values.get(name, ""))) for name in version.variables]
    return SettingsChoices(
        source=source,
        prompts=prompts,
        prompt=prompt,
        refs=refs,
        ref=ref,
        variables=variables,
        text=data.get("text", conversation.system_prompt_text)
        if data
        else conversation.system_prompt_text,
        temperature=data.get("temperature", "") if data else conversation.temperature,
        max_output_tokens=(
            data.get("max_output_tokens", "") if data else conversation.max_output_tokens
        ),
    )
