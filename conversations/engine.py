"""The agent loop engine: advance a ``Run`` one step, its state in the database.

``run_advance`` is the only entry point; the dispatcher (``dispatch.py``) calls
it from a Celery task or an asyncio task. A step begins with one transaction
(:func:`_step_begin`): the run is locked and its lease taken
(``runs.run_claim``), and what the step needs is read and written in the same
transaction. Then, by the run's status:

- ``calling_llm``: the history, the tools offered, the context fit, rate limits
  and the budget hold, the step's assistant message; then ONE model call
  streaming deltas to the browser; then one transaction stores the answer
  (keyed by (run, step), so a replayed step rewrites the same row), settles its
  usage and moves the run on (``completed``, or ``gating`` and straight through
  the gate);
- ``gating`` (a worker died after storing a tool-call answer): the gate again;
- ``executing_tools``: the turn's approved calls, concurrently, then the next
  state.

Every status change goes through the state machine (``conversations.runs``),
which schedules the next step on commit. ``run.step`` counts model calls; it
goes up with each transition into ``calling_llm``, never with a replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from structlog.contextvars import bound_contextvars

from accounts.services import Admission, budget_release_approved, llm_call_abort
from audit.services import audit_deferred, audit_record
from conversations import events
from conversations.agents import run_agent, transfer_messages
from conversations.attachments import (
    attachments_being_read,
    attachments_context,
    attachments_wait_until,
    content_with,
)
from conversations.branches import conversation_tree, shown_leaf
from conversations.chains import part_ledger_data, part_prompt
from conversations.charging import call_admit, call_settle
from conversations.compare import compare_messages
from conversations.context import FitResult, context_fit
from conversations.gateway import (
    CallUsage,
    ChatResult,
    GatewayError,
    StreamAborted,
    stream_chat,
)
from conversations.guarding import guard_model_output, guard_reask, guard_user_input
from conversations.loopevents import loop_event_of_run
from conversations.models import Conversation, Message, ModelConfig, Run
from conversations.prompting import RunCall, run_call
from conversations.runs import (
    RunChanged,
    run_claim,
    run_control,
    run_lease_renew,
    run_lock,
    run_relock,
    run_transition,
)
from conversations.toolphase import (
    run_stop,
    tools_offered,
    turn_approved,
    turn_continue,
    turn_gate,
    turn_running,
)
from knowledge.tool import sources_parse
from project.dbthreads import db_async
from tools.services import invocation_recover_interrupted, invocations_execute

logger = logging.getLogger(__name__)

S = Run.Status

#: Seconds into a stream when its text is first saved (then every
#: ``TOLLGATE_STREAM_PERSIST_SECONDS``): short replies never write partial text.
FIRST_PERSIST_SECONDS = 0.1
#: The longest a busy process stretches the time between saves (``_persist_interval``).
MAX_PERSIST_SECONDS = 3.0


def _heartbeat_seconds() -> float:
    """Seconds between renewals of a step's lease: a quarter of the lease
    (``TOLLGATE_RUN_LEASE_SECONDS``), so three may be missed before it runs out."""
    return settings.TOLLGATE_RUN_LEASE_SECONDS / 4


def _persist_interval() -> float:
    """Seconds between saves of a streaming reply's text (and checks for Stop).

    ``TOLLGATE_STREAM_PERSIST_SECONDS``, stretched when this process streams many
    replies so that all of them together save at most
    ``TOLLGATE_STREAM_PERSISTS_PER_SECOND`` times a second, never beyond
    ``MAX_PERSIST_SECONDS``: at 200 streams every 0.5 s, the saves took a tenth
    of the worker's CPU (``bench/concurrency.py``, py-spy).
    """
    live = events.StreamPublisher.live_count()
    busy = live / settings.TOLLGATE_STREAM_PERSISTS_PER_SECOND
    return min(MAX_PERSIST_SECONDS, max(settings.TOLLGATE_STREAM_PERSIST_SECONDS, busy))


class StepAborted(StreamAborted):
    """Raised from the stream callback when the run was cancelled or its lease lost."""


# -- the history the model reads ------------------------------------------------------


class HistoryRow(NamedTuple):
    """One stored message as the model's history needs it (``history_messages``);
    ``attachments``: what a user message's metadata shows of its files, if any."""

    id: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str
    attachments: list[dict[str, Any]] | None


#: The columns of a ``HistoryRow``, in order (a key of the metadata, not all of it).
_HISTORY_COLUMNS = ("id", "role", "content", "tool_calls", "tool_call_id", "metadata__attachments")


#: Messages the history is built from (streaming and failed ones are left out).
HISTORY_STATUSES = (Message.Status.COMPLETE.value, Message.Status.STOPPED.value)


def history_messages(
    *,
    conversation: Conversation,
    system_prompt: str | None = None,
    run: Run | None = None,
    accepts_images: bool = False,
) -> list[dict]:
    """The conversation as OpenAI-format messages, system prompt first
    (``history_with_ids`` without the ids)."""
    return history_with_ids(
        conversation=conversation,
        system_prompt=system_prompt,
        run=run,
        accepts_images=accepts_images,
    )[0]


def history_with_ids(
    *,
    conversation: Conversation,
    system_prompt: str | None = None,
    run: Run | None = None,
    accepts_images: bool = False,
    sources: list[dict[str, Any]] | None = None,
) -> tuple[list[dict], list[int | None]]:
    """The branch of the conversation that ends at ``run`` (default: the branch
    shown, ``branches.shown_leaf``) as OpenAI-format messages, ``system_prompt``
    first (the run's, ``prompting.run_call``; ``TOLLGATE_SYSTEM_PROMPT`` when
    ``None``), and the id of the stored message each one is (``None`` for the
    system prompt). Alternatives on other branches (regenerated answers, edited
    messages) are left out.

    Failed and still-streaming messages are left out; an assistant message's
    ``tool_calls`` are kept only when every call has its tool result, and a
    tool result only when its call is there (providers reject either half alone).
    Stored system messages are left out too (Tollgate writes none: the
    conversation's settings are the one source of the system prompt). A run handed
    to another agent sends what that agent's transfer mode keeps
    (``agents.transfer_messages``).

    A user message sent with files is followed, in its content, by what the model
    reads of them (``attachments.attachments_context``: their names, the passages
    of its text files that best match it, a line for a file not read yet; its
    images as image parts when ``accepts_images``, the model's). ``sources``, when
    given, receives the citations of the last user message's passages
    (``knowledge.tool.hits_sources``), for the answer written from them.
    """
    tree = conversation_tree(conversation_id=conversation.pk)
    leaf = run.pk if run is not None else shown_leaf(conversation, tree)
    own: list[int] = []
    replaced: dict[int, str] = {}
    if run is not None and (part := part_prompt(run)) is not None:
        # A chain's part: the exchanges before the chain, then its step's prompt in
        # place of the chain's input, then its own turns (conversations.chains).
        leaf, own, replaced = part.after, [run.pk], {part.message_id: part.text}
    path = tree.path(leaf)
    on_branch = (
        Q(run_id__in=path + own)
        | Q(pk__in=[tree.message[r] for r in path] + list(replaced))
        # Messages no run answers or belongs to: on every branch (see branches).
        | Q(run__isnull=True, answering_runs__isnull=True)
    )
    rows = [
        HistoryRow(*values)
        for values in Message.objects.filter(conversation=conversation, status__in=HISTORY_STATUSES)
        .filter(on_branch)
        .distinct()
        .order_by("id")
        .values_list(*_HISTORY_COLUMNS)
    ]
    answered = {m.tool_call_id for m in rows if m.role == Message.Role.TOOL}
    attached = {
        m.id: replaced.get(m.id, m.content)
        for m in rows
        if m.role == Message.Role.USER and m.attachments
    }
    additions = (
        attachments_context(owner=conversation.owner, texts=attached, accepts_images=accepts_images)
        if attached
        else {}
    )
    prompt = settings.TOLLGATE_SYSTEM_PROMPT if system_prompt is None else system_prompt
    out: list[dict] = [{"role": "system", "content": prompt}]
    message_ids: list[int | None] = [None]
    open_calls: set[str | None] = set()
    for m in rows:
        if m.role == Message.Role.SYSTEM:
            continue
        if m.id in replaced:
            m = m._replace(content=replaced[m.id])
        if m.role == Message.Role.TOOL:
            if m.tool_call_id in open_calls:
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
                message_ids.append(m.id)
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if (addition := additions.get(m.id)) is not None:
            item["content"] = content_with(m.content, addition)
        if m.role == Message.Role.ASSISTANT and m.tool_calls:
            ids = {c.get("id") for c in m.tool_calls}
            if ids <= answered:
                item["tool_calls"] = m.tool_calls
                item["content"] = m.content or None
                open_calls = ids
            else:
                open_calls = set()
        if item["content"] is None and "tool_calls" not in item:
            continue
        if item["role"] == Message.Role.ASSISTANT and not item.get("tool_calls") and not m.content:
            continue
        out.append(item)
        message_ids.append(m.id)
    if run is not None:  # handed off: what the new agent reads (conversations.agents)
        out, message_ids = transfer_messages(run=run, messages=out, ids=message_ids)
    if sources is not None:
        last_user = next(
            (i for i, m in zip(reversed(message_ids), reversed(out), strict=True)
             if m["role"] == Message.Role.USER),
            None,
        )  # fmt: skip
        if last_user is not None and last_user in additions:
            sources[:] = additions[last_user].sources
    return out, message_ids


# -- step begin: one transaction ------------------------------------------------------


@dataclass
class _CallStart:
    """What ``_begin_call`` prepared for the model call."""

    run: Run
    call: RunCall
    fit: FitResult
    tools: list[dict] | None
    admission: Admission
    message: Message
    fallbacks: list[ModelConfig]
    #: The first stored message sent when older ones were left out (``None`` if none were).
    context_cut: int | None = None


@dataclass
class _ToolTurn:
    """The tool turn an ``executing_tools`` step runs, read in its claim's transaction.

    ``message_id``: the assistant message with the calls. ``interrupted``:
    invocations the worker that held this step before left running when it
    died, to recover before anything runs. ``approved``: the approved
    invocations to run (``None`` while ``interrupted`` is not empty: read again
    after the recovery).
    """

    run: Run
    message_id: int
    interrupted: list[int]
    approved: list[int] | None


def _fallbacks(config: ModelConfig) -> list[ModelConfig]:
    """``config``'s enabled fallbacks, in its order (no query when it has none)."""
    if not config.fallbacks:
        return []
    rows = ModelConfig.objects.filter(pk__in=config.fallbacks, enabled=True).exclude(pk=config.pk)
    by_id = {row.pk: row for row in rows}
    return [by_id[pk] for pk in config.fallbacks if pk in by_id]


def _step_message(
    run: Run, call: RunCall, *, resumed: bool, sources: list[dict[str, Any]] | None = None
) -> Message:
    """Create the assistant message of this step or, when the step is ``resumed``
    (a worker held it before, and may have created it), reset it. ``sources``: the
    numbered passages the model is given (its ``[1]`` links to them on the page).

    The run's lease (just taken) keeps other workers out, so no savepoint for a
    ``get_or_create`` race is needed.
    """
    message = None
    if resumed:
        message = Message.objects.filter(
            run=run, run_step=run.step, role=Message.Role.ASSISTANT
        ).first()
    if message is None:
        agent = run_agent(run)
        # Who wrote it, shown with it in the chat.
        metadata: dict[str, Any] = (
            {"agent": {"id": agent["id"], "name": agent["name"]}} if agent else {}
        )
        if sources:
            metadata["sources"] = sources
        message = Message.objects.create(
            run=run,
            run_step=run.step,
            role=Message.Role.ASSISTANT,
            conversation_id=run.conversation_id,
            status=Message.Status.STREAMING,
            model=call.config.litellm_model,
            metadata=metadata,
        )
        events.message_appended(message_id=message.pk, run_id=run.pk, message=message)
    else:
        message.content = ""
        message.tool_calls = None
        message.status = Message.Status.STREAMING
        message.metadata = {k: v for k, v in message.metadata.items() if k != "sources"}
        if sources:
            message.metadata["sources"] = sources
        message.save(update_fields=["content", "tool_calls", "status", "metadata"])
        events.message_replaced(message_id=message.pk, run_id=run.pk, message=message)
    return message


def _fail_locked(
    run: Run, error: str, *, kind: str, metadata: dict[str, Any] | None = None
) -> None:
    """Fail locked ``run`` with ``error`` (shown to the user); ``kind`` names the cause;
    ``metadata`` is added to the run's."""
    metadata = {**run.metadata, **(metadata or {}), "error_kind": kind}
    run_transition(run=run, to=S.FAILED, error=error, metadata=metadata, data={"kind": kind})


@dataclass
class _AttachmentsWait:
    """A first model call that waits for the files of its message to be read
    (``attachments.attachments_wait_until``), until ``until``, the lease held."""

    run: Run
    until: datetime


def _reading_flag(run: Run, reading: bool) -> None:
    """Say on the run's status line that its files are being read (or no longer)."""
    if bool(run.metadata.get("reading_attachments")) == reading:
        return
    run.metadata = {k: v for k, v in run.metadata.items() if k != "reading_attachments"}
    if reading:
        run.metadata["reading_attachments"] = True
    Run.objects.filter(pk=run.pk).update(metadata=run.metadata)
    events.run_status_changed(run_id=run.pk, run=run)


def _answer_sources(history: list[dict], attached: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The numbered passages an answer is written from: the latest ``knowledge.search``
    result since the last user message, else that message's attached files' passages."""
    for message in reversed(history):
        if message["role"] == Message.Role.USER:
            break
        if message["role"] == Message.Role.TOOL and (found := sources_parse(message["content"])):
            return found
    return attached


def _begin_call(run: Run, *, resumed: bool) -> _CallStart | _AttachmentsWait | None:
    """History, tools offered, context fit, admission, the step's assistant message.

    In the claim's transaction (run locked and leased): one thread hop and one
    commit for everything before the model call. A context or budget refusal
    fails the run here (``None``). A run's first call whose message has files
    still being read waits for them first (``_AttachmentsWait``: ``run_advance``
    waits, then calls this again).
    """
    if run.step == 1:
        until = attachments_wait_until(message_id=run.user_message_id)
        if until is not None and until > timezone.now():
            _reading_flag(run, True)
            return _AttachmentsWait(run=run, until=until)
        _reading_flag(run, False)
    call = run_call(run)
    config = call.config
    # What approving this run's tool calls held was for this call: its own hold
    # replaces it, or a refusal below ends the run it was held for. Only a call
    # after a tool turn can have such holds (not a run's first).
    if run.step > 1:
        budget_release_approved(run_id=run.pk)
    elif blocked := guard_user_input(run=run):  # before the history: the model reads the result
        _fail_locked(run, blocked, kind="guardrail")
        return None
    attached: list[dict[str, Any]] = []
    history, history_ids = history_with_ids(
        conversation=run.conversation,
        system_prompt=call.system_prompt,
        run=run,
        accepts_images=config.accepts_images,
        sources=attached,
    )
    tools = tools_offered(run=run)
    if run.kind == Run.Kind.COMPARE:  # its summary: the answers it compares, no tools
        history, tools = compare_messages(run=run, history=history), None
    try:
        fit = context_fit(
            messages=history,
            model=config.litellm_model,
            context_window=config.context_window,
            max_output_tokens=call.max_output_tokens,
            tools=tools,
        )
    except GatewayError as error:
        _fail_locked(run, error.user_message, kind=error.kind)
        return None
    if fit.dropped:
        logger.info("run %s step %s: dropped %d old messages", run.pk, run.step, fit.dropped)
    fallbacks = _fallbacks(config)
    retry: dict[str, Any] = {}  # when a Retry may succeed, if refused (Run.retry_blocked)
    admission, refusal = call_admit(
        user=run.conversation.owner,
        config=config,
        prompt_tokens=fit.prompt_tokens,
        max_tokens=call.max_output_tokens,
        run_id=run.pk,
        target_type="run",
        target_id=run.pk,
        fallbacks=fallbacks,
        retry=retry,
    )
    if admission is None:
        _fail_locked(run, refusal, kind="budget", metadata=retry)
        return None
    message = _step_message(run, call, resumed=resumed, sources=_answer_sources(history, attached))
    cut = history_ids[fit.kept_from] if fit.dropped and fit.kept_from < len(history_ids) else None
    return _CallStart(
        run=run,
        call=call,
        fit=fit,
        tools=tools,
        admission=admission,
        message=message,
        fallbacks=fallbacks,
        context_cut=cut,
    )


def _latest_tool_message_id(run: Run) -> int | None:
    return (
        Message.objects.filter(run=run, role=Message.Role.ASSISTANT, tool_calls__isnull=False)
        .order_by("-id")
        .values_list("pk", flat=True)
        .first()
    )


def _tool_turn_begin(run: Run, message_id: int, *, resumed: bool) -> _ToolTurn:
    """The run's tool turn (the calls of assistant message ``message_id``), in the
    claim's transaction (run locked and leased). Only the worker holding a run's
    lease runs its tools, so when the step is ``resumed`` (that worker's lease ran
    out: it died) the calls still ``running`` are orphans."""
    interrupted = turn_running(run=run, message_id=message_id) if resumed else []
    if interrupted:
        return _ToolTurn(run=run, message_id=message_id, interrupted=interrupted, approved=None)
    approved = turn_approved(run=run, message_id=message_id)
    return _ToolTurn(run=run, message_id=message_id, interrupted=[], approved=approved)


def _gate_locked(run: Run, message_id: int) -> None:
    """Put the turn's tool calls through the gate and move the run on (run locked)."""
    message = Message.objects.get(pk=message_id)
    turn_gate(run=run, message=message)
    events.run_tools_changed(run_id=run.pk)
    turn_continue(run=run, message_id=message_id)


@db_async
def _step_begin(run_id: int, worker: str) -> _CallStart | _AttachmentsWait | _ToolTurn | None:
    """Claim the run and prepare its step, in one transaction; what to do next.

    ``None``: nothing more for this worker (another holds the run, it waits on
    people, it is over, or this transaction already moved it on: stopped,
    failed, gated). The lease, the budget hold and the assistant message commit
    together; a failure leaves the run as it was, for a retry or stuck-run
    recovery. Audit events are appended together at the end (``audit_deferred``).
    """
    with transaction.atomic(), audit_deferred():
        claim = run_claim(run_id=run_id, worker=worker)
        if claim is None:
            return None
        run = claim.run
        if run.cancel_requested:
            run_stop(run=run)
            return None
        if run.status == S.CALLING_LLM:
            return _begin_call(run, resumed=claim.resumed)
        message_id = _latest_tool_message_id(run)
        if message_id is None:
            _fail_locked(run, "Lost track of this run's tool calls.", kind="internal")
            return None
        if run.status == S.GATING:
            _gate_locked(run, message_id)
            return None
        return _tool_turn_begin(run, message_id, resumed=claim.resumed)


#: Seconds between two looks at whether a message's files have been read.
ATTACHMENTS_POLL_SECONDS = 0.25
_run_control = db_async(run_control)
_being_read = db_async(attachments_being_read)


@db_async
def _call_begin_after_wait(run_id: int, worker: str) -> _CallStart | _AttachmentsWait | None:
    """``_begin_call`` again once the files were read (or the wait ran out), if
    ``worker`` still holds the run; a Stop asked for meanwhile stops it."""
    with transaction.atomic(), audit_deferred():
        run = _locked_own(run_id, worker)
        if run is None:
            return None
        if run.cancel_requested:
            run_stop(run=run)
            return None
        return _begin_call(run, resumed=False)


async def _attachments_awaited(wait: _AttachmentsWait, worker: str) -> _CallStart | None:
    """Wait (the lease held: the caller's heartbeat renews it) until the files of the
    run's message are read, the wait's end, or a Stop; then begin the call."""
    run_id, message_id = wait.run.pk, wait.run.user_message_id
    while True:
        await asyncio.sleep(ATTACHMENTS_POLL_SECONDS)
        owner, cancel = await _run_control(run_id=run_id)
        if owner != worker:
            return None
        reading = await _being_read(message_id=message_id)
        if cancel or not reading or timezone.now() >= wait.until:
            begun = await _call_begin_after_wait(run_id, worker)
            if not isinstance(begun, _AttachmentsWait):
                return begun


# -- the model call ---------------------------------------------------------------------


def _locked_own(run_id: int, worker: str) -> Run | None:
    """Lock the run if ``worker`` still holds its lease and it is not over."""
    run = run_lock(run_id=run_id)
    if run is None or run.lease_owner != worker or run.is_terminal:
        logger.warning("run %s: lease lost by %s; result discarded", run_id, worker)
        return None
    return run


@db_async
def _persist_partial(run_id: int, worker: str, message_id: int, text: str) -> str:
    """Save the text so far (a reload shows it); ``"ok"``, ``"cancelled"`` or ``"lost"``."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(content=text)
    owner, cancel = run_control(run_id=run_id)
    if owner != worker:
        return "lost"
    return "cancelled" if cancel else "ok"


def _usage_metadata(usage: CallUsage, broken: CallUsage | None) -> dict[str, Any]:
    """What a message's metadata says about its usage beyond its own columns: cached
    and reasoning tokens, and what broken attempts before it were charged."""
    data: dict[str, Any] = {}
    if usage.cached_tokens:
        data["cached_tokens"] = usage.cached_tokens
    if usage.reasoning_tokens:
        data["reasoning_tokens"] = usage.reasoning_tokens
    if broken is not None:
        data["broken_attempts"] = {
            "prompt_tokens": broken.prompt_tokens,
            "completion_tokens": broken.completion_tokens,
            "cost_usd": str(broken.cost_usd) if broken.cost_usd is not None else None,
        }
    return data


def _fallback_metadata(answered_by: str, failed_over: list[str]) -> dict[str, Any]:
    """A message's (and its audit event's) record of a switch to a fallback model:
    which ModelConfig answered, after which failed (or were paused), in order."""
    if not answered_by and not failed_over:
        return {}
    return {"answered_by": answered_by, "failed_over": failed_over}


@db_async
def _store_answer(worker: str, result: ChatResult, start: _CallStart) -> None:
    """Write the finished assistant message once, settle its usage, move the run on.

    One transaction, the run's row taken first: a text answer completes the run
    with a compare-and-set on its status and lease (``holder``), which locks the
    row; a tool-call answer locks it again (``run_relock``: Stop may have come
    meanwhile) and goes through the gate (``gating``, then what the gate
    decided). Then the message, the usage record (accounts' ledger) and the
    audit events, appended last. A lost lease discards the result and releases
    the budget hold.
    """
    run, message = start.run, start.message
    dropped = start.fit.dropped
    metadata = {**run.metadata}
    metadata["context"] = {
        **metadata.get("context", {}),
        str(run.step): {"dropped_messages": dropped},
    }
    if dropped:
        # The most left out of one call (each call sends the whole history again), and
        # where the latest call's history began: the chat marks it (issue 22, defect 9).
        metadata["context_dropped_messages"] = max(
            metadata.get("context_dropped_messages", 0), dropped
        )
        metadata["context_cut_message_id"] = start.context_cut
    charged = result.charged
    model = result.model or message.model or start.call.config.litellm_model
    with transaction.atomic(), audit_deferred():
        # Before the transition: an answer asked again does not complete the run.
        result, reask = guard_model_output(run=run, message=message, result=result)
        # Before the transition, so that a run's last step.finished precedes its
        # run.finished; withdrawn if the answer is discarded.
        finished = loop_event_of_run(
            run,
            "step.finished",
            step=message.run_step,
            outcome="tool_calls" if result.tool_calls else "reask" if reask else "answer",
            model=start.call.config.name,
            tool_calls=len(result.tool_calls or []),
            prompt_tokens=result.prompt_tokens or 0,
            completion_tokens=result.completion_tokens or 0,
            cost_usd=str(result.cost_usd) if result.cost_usd is not None else None,
            latency_ms=result.latency_ms,
            ttft_ms=result.ttft_ms,
        )
        try:
            if result.tool_calls or reask:
                if not run_relock(run=run, worker=worker):
                    raise RunChanged(f"Run {run.pk} is no longer {worker}'s.")
            else:
                run_transition(run=run, to=S.COMPLETED, metadata=metadata, holder=worker)
        except RunChanged:
            finished.cancel()
            # The provider answered (and bills it) though the answer is discarded: the
            # call is charged all the same. After the run's lock (the lock order).
            call_settle(
                admission=start.admission,
                user=run.conversation.owner,
                conversation_id=run.conversation_id,
                model=model,
                usage=charged,
                latency_ms=result.latency_ms,
                target_type="run",
                target_id=run.pk,
                data={"step": run.step, "outcome": "discarded"},
            )
            logger.warning("run %s: lease lost by %s; answer discarded", run.pk, worker)
            return
        fields = {
            "content": result.content,
            "tool_calls": result.tool_calls or None,
            "status": Message.Status.COMPLETE,
            "model": result.model or message.model,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cost_usd": result.cost_usd,
            "latency_ms": result.latency_ms,
            "metadata": {
                **message.metadata,
                "ttft_ms": result.ttft_ms,
                "finish_reason": result.finish_reason,
                "context_dropped_messages": dropped,
                **_usage_metadata(result.usage, result.broken),
                **_fallback_metadata(result.answered_by, result.failed_over),
                **({"cache_hit": True} if result.cache_hit else {}),
            },
        }
        Message.objects.filter(pk=message.pk).update(**fields)
        for name, value in fields.items():
            setattr(message, name, value)
        events.message_replaced(message_id=message.pk, run_id=run.pk, message=message)
        events.context_cut_moved(
            conversation_id=run.conversation_id, run_id=run.pk, message_id=start.context_cut
        )
        if result.tool_calls and run.cancel_requested:
            run_stop(run=run, metadata=metadata)
        elif result.tool_calls:
            run_transition(run=run, to=S.GATING, worker=worker, metadata=metadata)
            _gate_locked(run, message.pk)
        elif reask:  # structured output failed: one more model call, once per run
            guard_reask(run=run, text=reask)
            metadata["guardrail_reasked"] = run.step
            run_transition(run=run, to=S.CALLING_LLM, metadata=metadata)
        call_settle(
            admission=start.admission,
            user=run.conversation.owner,
            conversation_id=run.conversation_id,
            model=model,
            usage=charged,
            latency_ms=result.latency_ms,
            target_type="run",
            target_id=run.pk,
            data={
                **part_ledger_data(run),
                "step": message.run_step,  # the run's count moved on if asked again
                "tool_calls": len(result.tool_calls or []),
                "context_dropped_messages": dropped,
                **_usage_metadata(result.usage, result.broken),
                **_fallback_metadata(result.answered_by, result.failed_over),
                **({"cache_hit": True} if result.cache_hit else {}),
            },
        )
        if result.answered_by:
            audit_record(
                action="llm.fallback",
                actor=run.conversation.owner,
                target_type="run",
                target_id=run.pk,
                data={"step": run.step, "answered_by": result.answered_by,
                      "failed": result.failed_over, "model": message.model},
            )  # fmt: skip


@db_async
def _end_call(
    worker: str,
    start: _CallStart,
    *,
    partial: str,
    error: str = "",
    kind: str = "",
    usage: CallUsage | None = None,
    latency_ms: int | None = None,
    failed_over: list[str] | None = None,
) -> None:
    """End a model call that produced no answer: keep the ``partial`` text (marked as
    cut: never shown or stored as complete), and fail the run with ``error``
    (``kind`` names the cause) or, without one, stop it (Stop was pressed).

    ``usage``: what the call used before it ended (the prompt and the output so
    far, from the gateway), settled against its budget hold and recorded on the
    message; ``None`` (the provider never began answering) releases the hold.
    """
    run, message = start.run, start.message
    model = message.model or start.call.config.litellm_model
    with transaction.atomic(), audit_deferred():
        own = run_relock(run=run, worker=worker)  # the run first, then the hold (the lock order)
        if usage is None:
            llm_call_abort(admission=start.admission)
        else:
            call_settle(
                admission=start.admission,
                user=run.conversation.owner,
                conversation_id=run.conversation_id,
                model=model,
                usage=usage,
                latency_ms=latency_ms,
                target_type="run",
                target_id=run.pk,
                data={
                    **part_ledger_data(run),
                    "step": run.step,
                    "outcome": "failed" if error else "stopped",
                    "error_kind": kind or None,
                    "output_chars": len(partial),
                    **_fallback_metadata("", failed_over or []),
                },
            )
        if not own:
            return
        fields: dict[str, Any] = {"content": partial}
        metadata = {**message.metadata}
        if partial:
            # The text is what was shown before the reply broke off: a cut answer.
            metadata["cut"] = kind or "stopped"
        if usage is not None:
            fields.update(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=usage.cost_usd,
                latency_ms=latency_ms,
            )
            metadata.update(_usage_metadata(usage, None))
        metadata.update(_fallback_metadata("", failed_over or []))
        fields["metadata"] = metadata
        Message.objects.filter(pk=message.pk).update(**fields)
        loop_event_of_run(
            run,
            "step.finished",
            step=message.run_step,
            outcome="failed" if error else "stopped",
            error_kind=kind or None,
            model=start.call.config.name,
            tool_calls=0,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=str(usage.cost_usd) if usage and usage.cost_usd is not None else None,
            latency_ms=latency_ms,
            ttft_ms=None,
        )
        if error:
            _fail_locked(run, error, kind=kind)
        else:
            run_stop(run=run)


async def _step_call_llm(start: _CallStart, worker: str) -> None:
    run, call, message_id = start.run, start.call, start.message.pk
    # The text is first saved FIRST_PERSIST_SECONDS into the stream (a reload then
    # shows the reply begun), then every TOLLGATE_STREAM_PERSIST_SECONDS; a reply
    # that ends sooner is written once, by _store_answer.
    persisted = time.monotonic() - settings.TOLLGATE_STREAM_PERSIST_SECONDS + FIRST_PERSIST_SECONDS
    persisting: asyncio.Task[str] | None = None

    async def on_flush(text: str) -> None:
        # Frames go to the browser every ~50 ms; the database gets the text so
        # far (what a reload shows) and is asked about Stop and the lease at
        # most every TOLLGATE_STREAM_PERSIST_SECONDS, in the background: a
        # frame never waits for the database.
        nonlocal persisted, persisting
        if persisting is not None and persisting.done():
            state, persisting = persisting.result(), None
            if state != "ok":
                raise StepAborted(state)
        now = time.monotonic()
        if persisting is not None or now - persisted < _persist_interval():
            return
        persisted = now
        persisting = asyncio.ensure_future(_persist_partial(run.pk, worker, message_id, text))

    publisher = events.StreamPublisher(
        message_id=message_id,
        conversation_id=run.conversation_id,
        on_flush=on_flush,
        run_id=run.pk,
    )
    began = time.monotonic()
    try:
        result = await stream_chat(
            config=call.config,
            messages=start.fit.messages,
            tools=start.tools,
            on_delta=publisher.feed,
            max_tokens=call.max_output_tokens,
            temperature=call.temperature,
            prompt_tokens=start.fit.prompt_tokens,
            fallbacks=start.fallbacks,
        )
        # No last frame: _store_answer pushes the finished message.
        await publisher.close(final_frame=False)
        await _settled(persisting)  # its state no longer matters: the answer is complete
    except StepAborted as aborted:
        await _settled(persisting)
        await _end_call(worker, start, partial=publisher.text, usage=aborted.usage,
                        latency_ms=_ms_since(began))  # fmt: skip
        return
    except GatewayError as error:
        await _settled(persisting)
        await _end_call(worker, start, partial=publisher.text, error=error.user_message,
                        kind=error.kind, usage=error.usage, latency_ms=_ms_since(began),
                        failed_over=error.failed_over)  # fmt: skip
        return
    except Exception:
        await _settled(persisting)
        logger.exception("run %s step %s failed", run.pk, run.step)
        await _end_call(worker, start, partial=publisher.text,
                        error="Something went wrong on the server while answering. Try again.",
                        kind="internal")  # fmt: skip
        return
    await _store_answer(worker, result, start)


def _ms_since(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


async def _settled(task: asyncio.Task | None) -> None:
    """Wait for a background persist so it cannot race the step's last write."""
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


# -- the tool phase ---------------------------------------------------------------------


@db_async
def _tool_turn_claim(run_id: int, worker: str, message_id: int) -> list[int] | None:
    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is None:
            return None
        return turn_approved(run=run, message_id=message_id)


@db_async
def _tool_turn_after_execute(run_id: int, worker: str, message_id: int) -> None:
    with transaction.atomic(), audit_deferred():
        run = _locked_own(run_id, worker)
        if run is None:
            return
        events.run_tools_changed(run_id=run.pk)
        turn_continue(run=run, message_id=message_id)


async def _step_execute_tools(turn: _ToolTurn, worker: str) -> None:
    """Run the turn's approved tool calls concurrently, then move the run on.

    Exactly once per invocation: ``invocations_execute`` proceeds only from
    ``approved`` under a row lock, so a replayed step skips what already ran.
    """
    run_id = turn.run.pk
    ids = turn.approved
    if ids is None:
        for invocation_id in turn.interrupted:
            # A worker died mid-call: re-run if idempotent, else fail it (tools decides).
            await invocation_recover_interrupted(invocation_id=invocation_id, orphaned=True)
        ids = await _tool_turn_claim(run_id, worker, turn.message_id)
        if ids is None:
            return
    if ids:
        await invocations_execute(invocation_ids=ids)
    await _tool_turn_after_execute(run_id, worker, turn.message_id)


# -- entry point -------------------------------------------------------------------------


async def run_advance(*, run_id: int, worker: str) -> None:
    """Advance run ``run_id`` by one step as ``worker`` (a unique id per attempt).

    Safe to call any number of times: a run that is over, waiting on people or
    leased by another live worker is left alone; a step replayed after a crash
    rewrites the same assistant message. Never raises for model errors: they
    fail the run with a message naming the cause.
    """
    begun = await _step_begin(run_id, worker)
    if begun is None:
        return
    heartbeat = asyncio.ensure_future(_heartbeat(run_id, worker))
    run = begun.run
    # Every log record of the step carries these (project/logs.py).
    owner = run.conversation.owner_id if Run.conversation.is_cached(run) else None
    with bound_contextvars(run_id=run_id, step=run.step, user_id=owner, worker=worker):
        try:
            if isinstance(begun, _AttachmentsWait):
                waited = await _attachments_awaited(begun, worker)
                if waited is None:
                    return
                begun = waited
            if isinstance(begun, _CallStart):
                await _step_call_llm(begun, worker)
            else:
                await _step_execute_tools(begun, worker)
        finally:
            heartbeat.cancel()


_lease_renew = db_async(run_lease_renew)


async def _heartbeat(run_id: int, worker: str) -> None:
    """Renew ``worker``'s lease on the run every ``_heartbeat_seconds()`` while its
    step runs (cancelled when the step ends), so that a short lease serves a long
    step: if the worker dies, the lease runs out within ``TOLLGATE_RUN_LEASE_SECONDS``
    and the recovery job hands the run to another worker. Stops once the lease is
    lost; a failed renewal is logged and retried at the next beat."""
    while True:
        await asyncio.sleep(_heartbeat_seconds())
        try:
            if not await _lease_renew(run_id=run_id, worker=worker):
                return
        except Exception:
            logger.warning("run %s: lease renewal failed", run_id, exc_info=True)
