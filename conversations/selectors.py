"""Reads for conversations: each a fixed number of queries, whatever the row count."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank, SearchVector
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from approvals.selectors import approvals_for_runs
from conversations.agents import agents_visible
from conversations.branches import Switch, conversation_tree, shown_leaf
from conversations.models import (
    AgentProfile,
    Conversation,
    Message,
    ModelConfig,
    Run,
    UserPreferences,
)
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
    (default ``TOLLGATE_CONVERSATION_LIST_PAGE``); the first page of the active list
    starts with every pinned one. Two queries at most.

    ``after``: the ``more`` cursor of the page before (keyset pagination on
    ``(updated_at, id)``, the list's order, so a conversation that moves up
    while the user scrolls is neither repeated on a later page nor skipped
    before it). Raises ``BadCursor`` for a cursor this function did not make.
    """
    size = size or settings.TOLLGATE_CONVERSATION_LIST_PAGE
    rows = Conversation.objects.filter(owner=user, archived=archived)
    pinned: list[Conversation] = []
    if not archived:
        # Pinned ones first, all of them on the first page; the pages page the rest.
        if not after:
            pinned = list(rows.filter(pinned=True).order_by("-updated_at", "-id"))
        rows = rows.filter(pinned=False)
    if after:
        when, pk = _parse_cursor(after)
        rows = rows.filter(Q(updated_at__lt=when) | Q(updated_at=when, pk__lt=pk))
    items = list(rows.order_by("-updated_at", "-id")[: size + 1])
    more = _cursor(items[size - 1]) if len(items) > size else None
    return ConversationPage(items=pinned + items[:size], more=more)


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


def agent_list(*, user) -> list[AgentProfile]:
    """The agents ``user`` may see and use, by name, with their owner and model (one
    query, whatever the count)."""
    return list(
        agents_visible(user=user).select_related("owner", "model_config").order_by("name", "pk")
    )


def agent_get_own(*, user, agent_id: int) -> AgentProfile:
    """``user``'s own agent ``agent_id``; ``Http404`` otherwise (another user's, even
    one shared with them, is not theirs to edit)."""
    agent = None
    if user.is_authenticated:
        agent = AgentProfile.objects.filter(pk=agent_id, owner=user).first()
    if agent is None:
        raise Http404("Agent not found.")
    return agent


def model_configs_chat() -> QuerySet[ModelConfig]:
    """The models people may chat with (pick for a conversation, compare, a chain, an
    evaluation, a prompt version): enabled, of kind chat. A model of kind embedding
    only embeds knowledge (``conversations.embedding``) and is never offered here."""
    return ModelConfig.objects.filter(enabled=True, kind=ModelConfig.Kind.CHAT)


def model_configs_enabled() -> list[ModelConfig]:
    """The chat models (:func:`model_configs_chat`), the default first, then by name."""
    return list(model_configs_chat().order_by("-is_default", "name"))


def model_names_enabled(**_signal: Any) -> list[str]:
    """The names of the chat models (:func:`model_configs_chat`); one query. Receiver of
    ``prompts.signals.model_names_query`` (``ConversationsConfig.ready``), so a
    prompt version may name a model without prompts importing conversations."""
    return list(model_configs_chat().values_list("name", flat=True))


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
    #: Whether later exchanges follow (a page opened at a message, ``at``).
    later: bool = False


#: The switch of a run with no alternatives (a compare's part: its compare run has them).
ALONE = Switch(index=1, count=1, previous=None, next=None)


def conversation_timeline(
    *,
    conversation: Conversation,
    before: int | None = None,
    size: int | None = None,
    context_cut: int | None = None,
    at: int | None = None,
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

    ``at``: a message of the branch shown (a search's match): the page ends with
    its exchange instead of the latest one (``Timeline.later`` says there are
    later ones). A message elsewhere is ignored.
    """
    size = size or settings.TOLLGATE_TIMELINE_PAGE
    tree = conversation_tree(conversation_id=conversation.pk)
    path = tree.path(shown_leaf(conversation, tree))
    shown_run = {tree.message[run_id]: run_id for run_id in path}
    tops = Message.objects.filter(conversation=conversation, run__isnull=True).filter(
        # On the branch, or answered by no run (drawn on every branch).
        Q(pk__in=list(shown_run)) | ~Exists(Run.objects.filter(user_message=OuterRef("pk")))
    )
    upto = _exchange_of(conversation, at, shown_run) if at is not None else None
    if before is not None:
        tops = tops.filter(pk__lt=before)
    elif upto is not None:
        tops = tops.filter(pk__lte=upto)
    page = list(tops.order_by("-id")[: size + 1])
    timeline = Timeline(earlier=page[size - 1].pk if len(page) > size else None)
    page = page[:size][::-1]
    shown_ids = [shown_run[m.pk] for m in page if m.pk in shown_run]
    # A compare's part on the branch is drawn in its compare run, with the other parts.
    runs = list(Run.objects.filter(pk__in={tree.parts.get(r, r) for r in shown_ids}).order_by("id"))
    # A compare's or a chain's parts (its answers; its steps, rounds and judges): one
    # more query, only when the page holds one.
    orchestrators = [run for run in runs if _has_parts(run)]
    parts = (
        list(
            Run.objects.filter(orchestrator__in=orchestrators)
            .select_related("model_config")
            .order_by("position", "id")
        )
        if orchestrators
        else []
    )
    by_run: dict[int, list[Message]] = {r.pk: [] for r in [*runs, *parts]}
    for message in Message.objects.filter(run__in=list(by_run)).order_by("id"):
        by_run[cast(int, message.run_id)].append(message)  # not None: run__in
    invocations = _invocations_by_run(Q(run_id__in=list(by_run)))
    runs_by_user_message: dict[int, list[Run]] = {}
    for run in [*runs, *parts]:
        run.timeline_messages = by_run[run.pk]
        run.timeline_invocations = invocations.get(run.pk, [])
        run_steps_attach(run)
        run.switch = tree.answer_switch(run.pk) if run.orchestrator_id is None else ALONE
        if run.orchestrator_id is None:
            runs_by_user_message.setdefault(run.user_message_id, []).append(run)
    for run in orchestrators:
        own = [part for part in parts if part.orchestrator_id == run.pk]
        if run.kind == Run.Kind.COMPARE:
            run.compare_parts = own
            # The answer the branch goes on from: this part, or the summary.
            run.compare_chosen = shown_run.get(run.user_message_id)
        else:
            chain_parts_attach(run, own)
    if upto is not None:
        timeline.later = upto != max(shown_run, default=upto)
        timeline.context_cut = None  # the latest run may not be on this page
    else:
        timeline.context_cut = _context_cut(runs) if before is None else context_cut
    for message in page:
        if message.pk in shown_run:
            message.switch = tree.message_switch(shown_run[message.pk])
            message.editable = True
        timeline.items.append(TimelineItem(message=message))
        for run in runs_by_user_message.get(message.pk, []):
            timeline.items.append(TimelineItem(run=run))
    return timeline


def _exchange_of(conversation: Conversation, at: int, shown_run: dict[int, int]) -> int | None:
    """The user message whose exchange holds message ``at`` on the branch shown."""
    row = (
        Message.objects.filter(pk=at, conversation=conversation)
        .values_list("pk", "run__user_message_id", "run_id")
        .first()
    )
    if row is None:
        return None
    pk, asked, run_id = row
    top = asked if run_id is not None else pk
    if top in shown_run and (run_id is None or shown_run[top] == run_id):
        return top
    return None


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
    """A run with its user message, messages and tool calls, ready to render (a
    chain's with its parts, each with theirs)."""
    run = Run.objects.select_related("user_message", "conversation__owner").get(pk=run_id)
    run.timeline_messages = list(run.messages.order_by("id"))
    run.timeline_invocations = _invocations_by_run(Q(run_id=run_id)).get(run_id, [])
    run_steps_attach(run)
    if _has_parts(run):
        parts = list(run.parts.order_by("position", "id"))
        for part in parts:
            part.timeline_messages = list(part.messages.order_by("id"))
            part.timeline_invocations = _invocations_by_run(Q(run_id=part.pk)).get(part.pk, [])
            run_steps_attach(part)
        chain_parts_attach(run, parts)
    return run


def _timeline_speakers(run: Run) -> Callable[[int], str]:
    """The lane of the model call made at step ``n`` of ``run``: ``"Model"`` for a run
    with no agent; else ``"Agent <name>"`` of the agent answering then, the handoffs
    (``Run.metadata["handoffs"]``, each made at a step) moving it on. No query."""
    handoffs = (run.metadata or {}).get("handoffs") or []
    agent = (run.parameters or {}).get("agent") or {}
    first = handoffs[0]["from"]["name"] if handoffs else agent.get("name")
    if not first:
        return lambda step: "Model"

    def speaker(step: int) -> str:
        name = first
        for handoff in handoffs:
            if step > handoff["step"]:
                name = handoff["to"]["name"]
        return f"Agent {name}"

    return speaker


def _part_lane(part: Run, index: int) -> str:
    """A part's lane: ``"Agent <name> (sub-run)"`` for an agent called as a tool, else
    ``"Part <n>"``."""
    info = (part.parameters or {}).get("agent_part")
    return f"Agent {info['agent']} (sub-run)" if info else f"Part {index + 1}"


def _has_parts(run: Run) -> bool:
    """Whether ``run`` has parts to draw: a compare's answers, a chain's steps, an
    answer's sub-runs (``conversations.subagents``, listed in its metadata). No query."""
    return run.kind != Run.Kind.ANSWER or bool((run.metadata or {}).get("agent_parts"))


def chain_part_for_push(*, part_id: int) -> Run:
    """A chain's part ready to render alone (``chain-part``): its messages, tool calls,
    charges and verdict (``chain_parts_attach``). Four queries."""
    part = Run.objects.select_related("orchestrator", "conversation__owner").get(pk=part_id)
    part.timeline_messages = list(part.messages.order_by("id"))
    part.timeline_invocations = _invocations_by_run(Q(run_id=part.pk)).get(part.pk, [])
    run_steps_attach(part)
    if part.orchestrator is not None:
        chain_parts_attach(part.orchestrator, [part])
    return part


def chain_parts_attach(run: Run, parts: list[Run]) -> None:
    """Give chain ``run`` its ``chain_parts`` (in order) for display, each with
    ``chain_usage`` (the tokens and USD its model calls were charged) and, for a
    judge, ``chain_verdict`` (the round's verdict and feedback, when given). No query."""
    rounds = {r.get("judge"): r for r in (run.metadata.get("chain") or {}).get("rounds", [])}
    for part in parts:
        answers = [m for m in part.timeline_messages if m.role == Message.Role.ASSISTANT]
        part.chain_usage = {
            "tokens": sum((m.prompt_tokens or 0) + (m.completion_tokens or 0) for m in answers),
            "cost_usd": sum((m.cost_usd or 0) for m in answers),
            "calls": sum(1 for m in answers if m.prompt_tokens is not None),
        }
        part.chain_verdict = rounds.get(part.pk)
    run.chain_parts = parts


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


@dataclass
class SearchHit:
    """A conversation that matched a search: where (``message``, or ``None`` when only
    its title matched) and a ``snippet`` of that text, the matched words marked
    (escaped HTML with ``<mark>``)."""

    conversation: Conversation
    message: Message | None
    snippet: SafeString


#: Longest query searched (characters); a longer one is cut.
SEARCH_MAX_CHARS = 200
_MARK_START, _MARK_STOP = "\x02", "\x03"  # never in stored text (a NUL-free control pair)


def conversation_search(*, user, query: str, limit: int = 20) -> list[SearchHit]:
    """The user's conversations whose title or messages match ``query``, best first,
    each once, with where it matched. PostgreSQL: full-text search (``websearch``
    syntax: words, "phrases", -excluded; stemmed with the ``english``
    configuration) ranked by ``ts_rank``; other databases (the embedded SQLite):
    every word, case-insensitively, newest first. Messages the user or the
    assistant wrote, on any branch; archived conversations too. Two queries."""
    query = " ".join((query or "").split())[:SEARCH_MAX_CHARS]
    if not query:
        return []
    mine = Conversation.objects.filter(owner=user)
    messages = Message.objects.filter(
        conversation__owner=user,
        role__in=(Message.Role.USER, Message.Role.ASSISTANT),
        status__in=(Message.Status.COMPLETE, Message.Status.STOPPED),
    ).select_related("conversation")
    found: list[Any]  # messages, each with its ``snippet``
    titles: list[Any]
    if connection.vendor == "postgresql":
        search = SearchQuery(query, search_type="websearch", config="english")
        titles = list(
            mine.annotate(rank=SearchRank(SearchVector("title", config="english"), search))
            .filter(rank__gt=0)
            .order_by("-rank", "-updated_at")[:limit]
        )
        found = list(
            messages.annotate(
                rank=SearchRank(SearchVector("content", config="english"), search),
                snippet=SearchHeadline(
                    "content",
                    search,
                    config="english",
                    start_sel=_MARK_START,
                    stop_sel=_MARK_STOP,
                    max_words=18,
                    min_words=8,
                ),
            )
            .filter(rank__gt=0)
            .order_by("-rank", "-id")[: limit * 5]
        )
    else:
        words = query.split()
        title_match = Q()
        text_match = Q()
        for word in words:
            title_match &= Q(title__icontains=word)
            text_match &= Q(content__icontains=word)
        titles = list(mine.filter(title_match).order_by("-updated_at")[:limit])
        found = list(messages.filter(text_match).order_by("-id")[: limit * 5])
        for message in found:
            message.snippet = _snippet(message.content, words)
    hits: dict[int, SearchHit] = {}
    for message in found:
        if message.conversation_id not in hits and len(hits) < limit:
            hits[message.conversation_id] = SearchHit(
                conversation=message.conversation,
                message=message,
                snippet=_marked(message.snippet),
            )
    for conversation in titles:
        if conversation.pk not in hits and len(hits) < limit:
            title = conversation.title or str(conversation)
            hits[conversation.pk] = SearchHit(
                conversation=conversation,
                message=None,
                snippet=_marked(_snippet(title, query.split(), width=200)),
            )
    return list(hits.values())


def _snippet(text: str, words: list[str], *, width: int = 60) -> str:
    """Some of ``text`` around the first of ``words``, each word marked."""
    lowered = text.lower()
    at = min((i for i in (lowered.find(w.lower()) for w in words) if i >= 0), default=0)
    start, end = max(0, at - width), min(len(text), at + width)
    piece = ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    for word in sorted(set(words), key=len, reverse=True):
        piece = re.sub(
            re.escape(word), lambda m: f"{_MARK_START}{m.group(0)}{_MARK_STOP}", piece, flags=re.I
        )
    return piece


def _marked(text: str) -> SafeString:
    """``text`` escaped, its marked words in ``<mark>``; one line."""
    html = escape(" ".join(text.split()))
    return mark_safe(  # noqa: S308 - escaped above; only the markers become tags
        html.replace(_MARK_START, "<mark>").replace(_MARK_STOP, "</mark>")
    )


def preferences_get(*, user) -> UserPreferences:
    """``user``'s preferences, or the defaults (an unsaved row) when they have set
    none, or for an anonymous visitor; one query."""
    if user is None or not user.is_authenticated:
        return UserPreferences()
    return UserPreferences.objects.filter(user=user).first() or UserPreferences(user=user)


@dataclass(frozen=True)
class TimelineBar:
    """One interval of a run's timeline. ``start_ms`` and ``end_ms`` are milliseconds
    from the run's creation; ``end_ms`` is ``None`` while it is still going (drawn to
    now). ``kind``: ``queue`` (waiting for a worker), ``llm`` (a model call),
    ``approval`` (waiting for a person), ``tool`` (a tool executing) or ``part`` (a
    part of an orchestrating run)."""

    kind: str
    label: str
    status: str
    start_ms: int
    end_ms: int | None

    @property
    def duration_ms(self) -> int | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


@dataclass
class TimelineLane:
    """A row of the timeline: bars that never overlap (``name``: what it shows)."""

    name: str
    bars: list[TimelineBar] = field(default_factory=list)


@dataclass
class RunTimeline:
    """A run's steps over time (``run_timeline``): ``lanes`` top to bottom and
    ``total_ms``, the span drawn (milliseconds from the run's creation to its end,
    or to now while it goes on)."""

    run: Run
    lanes: list[TimelineLane]
    total_ms: int

    def placed(self) -> list[tuple[TimelineLane, list[tuple[TimelineBar, float, float]]]]:
        """Each lane with its bars and their ``(left, width)`` in percent of the span
        (a bar is at least 0.5% wide, so an instant still shows)."""
        span = max(self.total_ms, 1)
        out = []
        for lane in self.lanes:
            bars = []
            for bar in lane.bars:
                end = self.total_ms if bar.end_ms is None else bar.end_ms
                left = min(100.0, 100.0 * bar.start_ms / span)
                width = max(0.5, min(100.0 - left, 100.0 * (end - bar.start_ms) / span))
                bars.append((bar, round(left, 2), round(width, 2)))
            out.append((lane, bars))
        return out


def _ms(origin: datetime, at: datetime | None) -> int | None:
    return None if at is None else max(0, round((at - origin).total_seconds() * 1000))


def _lanes_packed(name: str, bars: list[TimelineBar]) -> list[TimelineLane]:
    """``bars`` in as few lanes as hold them without overlap, in start order: tool
    calls that ran at the same time get one lane each ("Tools 1", "Tools 2")."""
    lanes: list[TimelineLane] = []
    ends: list[float] = []
    for bar in sorted(bars, key=lambda b: (b.start_ms, b.label)):
        for i, end in enumerate(ends):
            if bar.start_ms >= end:
                lanes[i].bars.append(bar)
                ends[i] = float("inf") if bar.end_ms is None else bar.end_ms
                break
        else:
            lanes.append(TimelineLane(name=f"{name} {len(lanes) + 1}", bars=[bar]))
            ends.append(float("inf") if bar.end_ms is None else bar.end_ms)
    if len(lanes) == 1:
        lanes[0].name = name
    return lanes


def run_timeline(*, user, run_id: int) -> RunTimeline:
    """The user's run drawn over time from what is stored: its model calls (assistant
    messages: created when the call began, ``latency_ms`` long), the waits for a person
    (approval requests: created → decided), its tool executions (started → finished;
    calls that overlapped get lanes of their own) and, for an orchestrating run, its
    parts. ``Http404`` for another user's run or none. Five queries, whatever the
    number of steps.
    """
    run = (
        Run.objects.select_related("conversation", "model_config")
        .filter(pk=run_id, conversation__owner=user)
        .first()
    )
    if run is None:
        raise Http404("Run not found")
    origin = run.created_at
    now = timezone.now()
    end_at = run.finished_at or now
    speakers = _timeline_speakers(run)
    model = TimelineLane(name=speakers(1))
    agent_lanes = {model.name: model}
    queued = _ms(origin, run.started_at)
    if queued:  # from the message to the first worker that took the run
        model.bars.append(TimelineBar("queue", "Queued for a worker", "queued", 0, queued))
    for message in Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("pk"):
        began = _ms(origin, message.created_at) or 0
        if message.latency_ms is not None:
            ended: int | None = began + message.latency_ms
        elif message.status == Message.Status.STREAMING:
            ended = None
        else:
            ended = began
        calls = len(message.tool_calls or [])
        label = f"Step {message.run_step or '?'} · {message.model or 'model'}" + (
            f" · {calls} tool call{'s' if calls != 1 else ''}" if calls else ""
        )
        lane = speakers(message.run_step or 1)
        agent_lanes.setdefault(lane, TimelineLane(name=lane)).bars.append(
            TimelineBar("llm", label, message.status, began, ended)
        )
    invocations = list(ToolInvocation.objects.filter(run_id=run.pk).order_by("position", "pk"))
    people = TimelineLane(name="People")
    for approval in approvals_for_runs(run_ids=[run.pk]):
        people.bars.append(
            TimelineBar(
                "approval",
                f"Approval: {approval.tool_name} — {approval.status}",
                approval.status,
                _ms(origin, approval.created_at) or 0,
                _ms(origin, approval.decided_at),
            )
        )
    tools = [
        TimelineBar(
            "tool",
            f"{inv.tool_name} — {inv.status}",
            inv.status,
            _ms(origin, inv.started_at) or 0,
            _ms(origin, inv.finished_at),
        )
        for inv in invocations
        if inv.started_at is not None
    ]
    parts = [
        (
            part,
            TimelineBar(
                "part",
                f"{part.model_config.name if part.model_config else 'Run'} — {part.status}",
                part.status,
                _ms(origin, part.started_at or part.created_at) or 0,
                _ms(origin, part.finished_at),
            ),
        )
        for part in Run.objects.filter(orchestrator=run)
        .select_related("model_config")
        .order_by("position", "pk")
    ]
    lanes = list(agent_lanes.values())
    if people.bars:
        lanes.append(people)
    if tools:
        lanes.extend(_lanes_packed("Tools", tools))
    lanes.extend(
        TimelineLane(name=_part_lane(part, i), bars=[bar]) for i, (part, bar) in enumerate(parts)
    )
    ends = [b.end_ms for lane in lanes for b in lane.bars if b.end_ms is not None]
    total = max([_ms(origin, end_at) or 0, *ends])
    return RunTimeline(run=run, lanes=lanes, total_ms=total)


# -- a run's answer, as the API reads it ---------------------------------------------


@dataclass(frozen=True)
class RunReply:
    """A run's answer so far, as stored (the database is the truth): what the API's
    chat completions send (``api``).

    ``text``: the run's assistant messages' text in order (one per model call; the
    empty ones of pure tool calls left out), joined by a blank line; while a call
    streams, its text as last saved (``TOLLGATE_STREAM_PERSIST_SECONDS``).
    ``admitted``: the run's first model call passed the budget and rate limits (it
    has an assistant message, or it is past that call). ``refused``: why a budget
    or rate limit failed it (``budget``, ``rate_limit``, ``no_prices``; see
    ``charging.call_admit``), with ``retry_not_before``. Tokens are the sums of the
    run's model calls; ``finish_reason`` is the last call's.
    """

    run_id: int
    conversation_id: int
    status: str
    text: str
    admitted: bool
    error: str = ""
    error_kind: str = ""
    refused: str = ""
    retry_not_before: datetime | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    created_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in Run.TERMINAL


def run_reply(*, run_id: int) -> RunReply:
    """Run ``run_id``'s answer so far (``RunReply``); two queries. Raises
    ``Run.DoesNotExist``."""
    run = Run.objects.only(
        "pk", "conversation_id", "status", "error", "metadata", "created_at"
    ).get(pk=run_id)
    messages = list(
        Message.objects.filter(run_id=run_id, role=Message.Role.ASSISTANT)
        .order_by("id")
        .values_list("content", "prompt_tokens", "completion_tokens", "metadata")
    )
    text = "\n\n".join(content for content, *_ in messages if content)
    last = messages[-1][3] if messages else {}
    return RunReply(
        run_id=run.pk,
        conversation_id=run.conversation_id,
        status=run.status,
        text=text,
        admitted=bool(messages) or run.status not in (Run.Status.QUEUED, Run.Status.CALLING_LLM),
        error=run.error,
        error_kind=str(run.metadata.get("error_kind") or ""),
        refused=str(run.metadata.get("refused") or ""),
        retry_not_before=run.retry_not_before,
        prompt_tokens=sum(m[1] or 0 for m in messages),
        completion_tokens=sum(m[2] or 0 for m in messages),
        finish_reason=(last or {}).get("finish_reason"),
        created_at=run.created_at,
    )
