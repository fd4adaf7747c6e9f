"""The agent loop engine: advance a ``Run`` one step, state in the database.

DESIGN.md, "The agent loop" (continuation-passing, durable)::

    queued → calling_llm → (text only) → completed
                         → (tool calls) → gating → executing_tools → calling_llm …
                                        → awaiting_approval ──(all decided)──┘
    any state → cancelled | failed        steps > max_steps → failed

``run_advance`` is the only entry point; the dispatcher (``dispatch.py``) calls
it from a Celery task or an asyncio task. Each step: take the lease (row lock,
expected status), read state, do ONE model call streaming deltas, store the
assistant message once (keyed by (run, step), so a replayed step rewrites the
same row), transition, release the lease and schedule the next step on commit.

``run.step`` is the number of the model call the run is on; it is incremented
by the transition INTO ``calling_llm`` (from queued here, from the tool phase
via ``run_llm_call_schedule``), never by a replay of the call itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.errors import BudgetExceeded, RateLimited
from conversations import events
from conversations.context import context_fit
from conversations.gateway import ChatResult, GatewayError, StreamAborted, cost_for, stream_chat
from conversations.models import Conversation, Message, ModelConfig, Run
from project.dbthreads import db_async

logger = logging.getLogger(__name__)

S = Run.Status

# Database calls: thread-sensitive sync_to_async by default (a step can run inside
# a caller's transaction, as tests do), the worker host's thread pool inside the
# host (project/dbthreads.py). Not channels' database_sync_to_async, which closes
# the connection before each call.
_db = db_async
#: Seconds into a stream when its text is first saved (then every
#: ``TOLLGATE_STREAM_PERSIST_SECONDS``): short replies never write partial text.
FIRST_PERSIST_SECONDS = 0.1
#: The longest a busy process stretches the time between saves (``_persist_interval``).
MAX_PERSIST_SECONDS = 3.0


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


#: Statuses in which a dispatched step has work to do (the rest wait on others).
ADVANCEABLE = frozenset({S.QUEUED, S.CALLING_LLM, S.GATING, S.EXECUTING_TOOLS})


class StepAborted(StreamAborted):
    """Raised from the stream callback when the run was cancelled or its lease lost."""


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.TOLLGATE_RUN_LEASE_SECONDS)


def _release(run: Run) -> None:
    run.lease_owner = ""
    run.lease_expires_at = None


def _stop_streaming_messages(run: Run, status: str) -> None:
    for message in Message.objects.filter(run=run, status=Message.Status.STREAMING):
        message.status = status
        message.save(update_fields=["status"])
        events.message_replaced(message_id=message.pk, run_id=message.run_id)


def run_finish(*, run: Run, status: str, error: str = "") -> None:
    """Move ``run`` to a terminal ``status`` (completed, failed, cancelled).

    Precondition: inside ``transaction.atomic`` with ``run`` locked. Marks
    any still-streaming message of the run stopped (cancel) or failed, clears
    the lease, pushes the new status on commit.
    """
    if status not in Run.TERMINAL:
        raise ValueError(f"{status} is not a terminal status")
    run.status = status
    run.error = error[:2000]
    run.finished_at = timezone.now()
    _release(run)
    run.save(update_fields=["status", "error", "finished_at", "lease_owner", "lease_expires_at"])
    if status == S.CANCELLED:
        _stop_streaming_messages(run, Message.Status.STOPPED)
    elif status == S.FAILED:
        _stop_streaming_messages(run, Message.Status.FAILED)
    events.run_status_changed(run_id=run.pk)


def run_llm_call_schedule(*, run: Run) -> None:
    """Transition a locked run into ``calling_llm`` for its next model call, on commit.

    For the tool phase (the lead's gate/executor): call when every invocation
    of the turn is settled. Fails the run with a clear message when the next
    call would exceed ``run.max_steps``. Precondition: inside
    ``transaction.atomic`` with ``run`` locked by ``select_for_update``.
    """
    if run.step >= run.max_steps:
        run_finish(
            run=run,
            status=S.FAILED,
            error=(
                f"Stopped after {run.step} model calls without a final answer "
                f"(this run's limit is {run.max_steps} steps)."
            ),
        )
        return
    run.status = S.CALLING_LLM
    run.step += 1
    _release(run)
    run.save(update_fields=["status", "step", "lease_owner", "lease_expires_at"])
    events.run_status_changed(run_id=run.pk)
    dispatch_on_commit(run.pk)


def dispatch_on_commit(run_id: int) -> None:
    """Schedule the run's next step when the current transaction commits."""
    from conversations.dispatch import dispatch_run_step

    transaction.on_commit(lambda: dispatch_run_step(run_id))


# -- step 0: the lease -------------------------------------------------------------


def _claim(run_id: int, worker: str) -> Run | None:
    """Lock the run, check it has work for us, take the lease; ``None`` = nothing to do.

    Runs in the caller's transaction when there is one (``_claim_and_begin``).
    """
    with transaction.atomic(savepoint=False):
        try:
            run = (
                Run.objects.select_for_update(no_key=True, of=("self",))
                .select_related("conversation__model_config", "conversation__owner")
                .get(pk=run_id)  # not .first(): its ORDER BY costs more Python than the query
            )
        except Run.DoesNotExist:
            return None
        if run.is_terminal or run.status not in ADVANCEABLE:
            return None
        now = timezone.now()
        if run.lease_expires_at is not None and run.lease_expires_at > now:
            return None  # another worker is on it (a duplicate or redelivered task)
        if run.cancel_requested:
            run_finish(run=run, status=S.CANCELLED)
            return None
        if run.status == S.QUEUED:
            if run.step >= run.max_steps:
                run_finish(
                    run=run,
                    status=S.FAILED,
                    error=f"This run may not call the model (limit {run.max_steps} steps).",
                )
                return None
            run.status = S.CALLING_LLM
            run.step += 1
            run.started_at = run.started_at or now
        run.lease_owner = worker
        run.lease_expires_at = _lease_until()
        run.save(update_fields=["status", "step", "started_at", "lease_owner", "lease_expires_at"])
        events.run_status_changed(run_id=run.pk)
        return run


# -- step 1: read state ------------------------------------------------------------


class HistoryRow(NamedTuple):
    """One stored message as the model's history needs it (``history_messages``)."""

    id: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str


#: Messages the history is built from (streaming and failed ones are left out).
HISTORY_STATUSES = (Message.Status.COMPLETE.value, Message.Status.STOPPED.value)


def history_messages(
    *,
    conversation: Conversation,
    exclude_id: int | None = None,
    rows: list[HistoryRow] | None = None,
) -> list[dict]:
    """The conversation as OpenAI-format messages, system prompt first.

    Failed and still-streaming messages are left out; an assistant message's
    ``tool_calls`` are kept only when every call has its tool result, and a
    tool result only when its call is there (providers reject either half alone).
    """
    if rows is None:
        rows = [
            HistoryRow(*values)
            for values in Message.objects.filter(
                conversation=conversation, status__in=HISTORY_STATUSES
            )
            # exclude_id=None is Django's pk__isnull=True (excludes nothing), which
            # django-stubs' lookup check does not model.
            .exclude(pk=exclude_id)  # type: ignore[misc]
            .order_by("id")
            .values_list(*HistoryRow._fields)
        ]
    answered = {m.tool_call_id for m in rows if m.role == Message.Role.TOOL}
    out: list[dict] = []
    if not any(m.role == Message.Role.SYSTEM for m in rows):
        out.append({"role": "system", "content": settings.TOLLGATE_SYSTEM_PROMPT})
    open_calls: set[str | None] = set()
    for m in rows:
        if m.role == Message.Role.TOOL:
            if m.tool_call_id in open_calls:
                out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.content}
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
    return out


def _tools_for_run(run: Run) -> list[dict] | None:
    """OpenAI-format tool list offered to the model for this run (``None``: no tools)."""
    from conversations.toolphase import tools_offered

    return tools_offered(run=run)


def _prepare(run: Run) -> int:
    """Create (or reset, on replay) the assistant message of this step; its id."""
    with transaction.atomic(savepoint=False):
        # The run's lease (just claimed) keeps other workers out: no savepoint
        # for get_or_create's race is needed.
        message = next(
            iter(
                Message.objects.filter(
                    run=run, run_step=run.step, role=Message.Role.ASSISTANT
                ).order_by()[:1]
            ),
            None,
        )
        if message is None:
            message = Message.objects.create(
                run=run,
                run_step=run.step,
                role=Message.Role.ASSISTANT,
                conversation_id=run.conversation_id,
                status=Message.Status.STREAMING,
                model=run.conversation.model_config.litellm_model,
            )
            events.message_appended(message_id=message.pk, run_id=message.run_id)
        else:
            message.content = ""
            message.tool_calls = None
            message.status = Message.Status.STREAMING
            message.save(update_fields=["content", "tool_calls", "status"])
            events.message_replaced(message_id=message.pk, run_id=message.run_id)
    return message.pk


def _history(run: Run) -> list[dict]:
    # Still-streaming rows (this step's, on a replay) are left out by history_messages.
    return history_messages(conversation=run.conversation)


def worst_case_cost(*, config: ModelConfig, prompt_tokens: int) -> Decimal | None:
    """USD a call can cost at most: prompt tokens plus ``max_output_tokens`` at the
    model's prices (``None`` when no price is known for the model)."""
    return cost_for(
        config=config, prompt_tokens=prompt_tokens, completion_tokens=config.max_output_tokens
    )


def _admit(run: Run, config: ModelConfig, prompt_tokens: int) -> tuple[Any, str]:
    """Rate limits and budget reservation before a model call (accounts' services).

    Returns ``(admission, "")`` or ``(None, message for the user)``; a refusal is
    audited as ``budget.refused``. No model call is made after a refusal.
    """
    from accounts.selectors import budget_requires_prices
    from accounts.services import llm_call_admit
    from audit.services import audit_record

    user = run.conversation.owner
    estimate = worst_case_cost(config=config, prompt_tokens=prompt_tokens)
    tokens = prompt_tokens + config.max_output_tokens
    refusal: dict[str, Any] | None = None
    if estimate is None and budget_requires_prices(user=user):
        refusal = {
            "reason": "no_prices",
            "message": (
                f"The model {config.name} has no known prices, and your spending is limited "
                "by a budget; an administrator must set its prices before you can use it."
            ),
        }
    else:
        try:
            return (
                llm_call_admit(
                    user=user,
                    run_id=run.pk,
                    estimated_cost_usd=estimate or Decimal(0),
                    estimated_tokens=tokens,
                ),
                "",
            )
        except BudgetExceeded as exc:
            refusal = {"reason": "budget", "message": exc.message, "budget_id": exc.budget_id}
        except RateLimited as exc:
            refusal = {
                "reason": "rate_limit",
                "message": exc.message,
                "retry_after_seconds": exc.retry_after_seconds,
            }
    audit_record(
        action="budget.refused",
        actor=user,
        target_type="run",
        target_id=run.pk,
        data={
            **refusal,
            "model": config.litellm_model,
            "estimated_cost_usd": str(estimate) if estimate is not None else None,
            "estimated_tokens": tokens,
        },
    )
    return None, refusal["message"]


@_db
def _abort_admission(admission: Any) -> None:
    from accounts.services import llm_call_abort

    llm_call_abort(admission=admission)


# -- step 2: the model call ------------------------------------------------------


@dataclass
class _CallStart:
    """What ``_begin_call`` prepared for the model call (or why there is none)."""

    fit: Any = None
    tools: list[dict] | None = None
    admission: Any = None
    message_id: int | None = None
    error: str = ""
    kind: str = ""


def _begin_call(run: Run) -> _CallStart:
    """History, tools offered, context fit, admission, the assistant message.

    One database hop for everything before the model call (each hop is a
    thread handoff; on a busy worker they added up to most of the added time
    to first token). A context or budget refusal comes back in ``error``.
    """
    config: ModelConfig = run.conversation.model_config
    history = _history(run)
    tools = _tools_for_run(run)
    try:
        fit = context_fit(
            messages=history,
            model=config.litellm_model,
            context_window=config.context_window,
            max_output_tokens=config.max_output_tokens,
            tools=tools,
        )
    except GatewayError as error:
        return _CallStart(error=error.user_message, kind=error.kind)
    if fit.dropped:
        logger.info("run %s step %s: dropped %d old messages", run.pk, run.step, fit.dropped)
    admission, refusal = _admit(run, config, fit.prompt_tokens)
    if admission is None:
        return _CallStart(error=refusal, kind="budget")
    message_id = _prepare(run)
    return _CallStart(fit=fit, tools=tools, admission=admission, message_id=message_id)


@dataclass
class _ToolTurn:
    """The tool turn an ``executing_tools`` step runs, read in its claim's transaction.

    ``message_id``: the assistant message with the calls (``None``: none found,
    the run fails). ``interrupted``: invocations a dead worker left running,
    to recover before anything is claimed. ``approved``: the approved
    invocations claimed with the lease (``None`` while ``interrupted`` is not
    empty: they are claimed after the recovery).
    """

    message_id: int | None
    interrupted: list[int]
    approved: list[int] | None


def _tool_turn_begin(run: Run) -> _ToolTurn:
    """The run's tool turn (``_ToolTurn``), in the claim's transaction (run locked)."""
    from conversations.toolphase import turn_claim_approved
    from tools.selectors import invocation_ids_interrupted

    assistant = _latest_tool_message.func(run)
    if assistant is None:
        return _ToolTurn(message_id=None, interrupted=[], approved=None)
    interrupted = invocation_ids_interrupted(message_id=assistant.pk)
    if interrupted:
        return _ToolTurn(message_id=assistant.pk, interrupted=interrupted, approved=None)
    approved = turn_claim_approved(run=run, message_id=assistant.pk)
    return _ToolTurn(message_id=assistant.pk, interrupted=[], approved=approved)


_Begun = tuple[Run | None, _CallStart | _ToolTurn | None]


@_db
def _claim_and_begin(run_id: int, worker: str) -> _Begun:
    """``_claim``, then ``_begin_call`` when the run is to call the model, or
    ``_tool_turn_begin`` when it is to execute tools (the turn's approved calls
    claimed with the lease).

    One thread hop and one transaction: the lease, the budget hold and the
    assistant message commit together (a failure leaves the run as it was,
    for a retry or stuck-run recovery), with one commit instead of three.
    """
    with transaction.atomic():
        return _claim_and_begin_orm(run_id, worker)


def _claim_and_begin_orm(run_id: int, worker: str) -> _Begun:
    run = _claim(run_id, worker)
    if run is not None and run.status == S.EXECUTING_TOOLS:
        return run, _tool_turn_begin(run)
    if run is None or run.status != S.CALLING_LLM:
        return run, None
    return run, _begin_call(run)


async def _step_call_llm(run: Run, worker: str, start: _CallStart) -> None:
    config: ModelConfig = run.conversation.model_config
    if start.message_id is None:
        await _fail(run.pk, worker, None, start.error, kind=start.kind)
        return
    fit, tools, admission, message_id = start.fit, start.tools, start.admission, start.message_id

    lease_renewed = time.monotonic()
    # The text is first saved FIRST_PERSIST_SECONDS into the stream (a reload then
    # shows the reply begun), then every TOLLGATE_STREAM_PERSIST_SECONDS; a reply
    # that ends sooner is written once, by _store_answer.
    persisted = lease_renewed - settings.TOLLGATE_STREAM_PERSIST_SECONDS + FIRST_PERSIST_SECONDS
    persisting: asyncio.Task[str] | None = None

    async def on_flush(text: str) -> None:
        # Frames go to the browser every ~50 ms; the database gets the text so
        # far (what a reload shows) and is asked about Stop and the lease at
        # most every TOLLGATE_STREAM_PERSIST_SECONDS, in the background: a
        # frame never waits for the database (a busy pool would stall it).
        nonlocal lease_renewed, persisted, persisting
        if persisting is not None and persisting.done():
            state, persisting = persisting.result(), None
            if state != "ok":
                raise StepAborted(state)
        now = time.monotonic()
        if persisting is not None or now - persisted < _persist_interval():
            return
        persisted = now
        renew = now - lease_renewed > 10
        if renew:
            lease_renewed = now
        persisting = asyncio.ensure_future(
            _persist_partial(run.pk, worker, message_id, text, renew)
        )

    publisher = events.StreamPublisher(
        message_id=message_id,
        conversation_id=run.conversation_id,
        on_flush=on_flush,
        run_id=run.pk,
    )
    try:
        result = await stream_chat(
            config=config,
            messages=fit.messages,
            tools=tools,
            on_delta=publisher.feed,
            max_tokens=config.max_output_tokens,
        )
        # No last frame: _store_answer pushes the finished message.
        await publisher.close(final_frame=False)
        await _settled(persisting)  # its state no longer matters: the answer is complete
    except StepAborted as aborted:
        await _settled(persisting)
        await _abort_admission(admission)
        await _abort(run.pk, worker, message_id, publisher.text, reason=str(aborted))
        return
    except GatewayError as error:
        await _settled(persisting)
        await _abort_admission(admission)
        await _fail(run.pk, worker, message_id, error.user_message, kind=error.kind,
                    partial=publisher.text)  # fmt: skip
        return
    except Exception:
        await _settled(persisting)
        logger.exception("run %s step %s failed", run.pk, run.step)
        await _abort_admission(admission)
        await _fail(run.pk, worker, message_id, "Something went wrong on the server while "
                    "answering. Try again.", kind="internal", partial=publisher.text)  # fmt: skip
        return

    if result.tool_calls:
        await _store_answer_and_gate(
            run, worker, message_id, result, dropped=fit.dropped, admission=admission
        )
    else:
        await _store_answer(
            run, worker, message_id, result, dropped=fit.dropped, admission=admission
        )


async def _settled(task: asyncio.Task | None) -> None:
    """Wait for a background persist so it cannot race the step's last write."""
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


@_db
def _persist_partial(run_id: int, worker: str, message_id: int, text: str, renew: bool) -> str:
    """Save the text so far (a reload shows it); ``"ok"``, ``"cancelled"`` or ``"lost"``."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(content=text)
    row = Run.objects.filter(pk=run_id).values_list("lease_owner", "cancel_requested")
    owner, cancel = next(iter(row), ("", False))
    if renew and owner == worker:
        Run.objects.filter(pk=run_id, lease_owner=worker).update(lease_expires_at=_lease_until())
    if owner != worker:
        return "lost"
    return "cancelled" if cancel else "ok"


def _locked_own(run_id: int, worker: str) -> Run | None:
    run = (
        Run.objects.select_for_update(no_key=True, of=("self",))
        .select_related("conversation__owner", "conversation__model_config")
        .get(pk=run_id)
    )
    if run.lease_owner != worker or run.is_terminal:
        logger.warning("run %s: lease lost by %s; result discarded", run_id, worker)
        return None
    return run


def _usage_of(result: ChatResult) -> dict[str, Any]:
    """The call's usage as accounts' ``llm_call_settle`` takes it (tokens, USD, ms);
    a provider that reported no usage or price counts as 0."""
    return {
        "prompt_tokens": result.prompt_tokens or 0,
        "completion_tokens": result.completion_tokens or 0,
        "cost_usd": result.cost_usd if result.cost_usd is not None else Decimal(0),
        "latency_ms": result.latency_ms or 0,
    }


def _llm_call_data(*, step: int, model: str, result: ChatResult, dropped: int) -> dict[str, Any]:
    """The ``llm.call`` audit event's data."""
    return {
        "step": step,
        "model": model,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": str(result.cost_usd) if result.cost_usd is not None else None,
        "latency_ms": result.latency_ms,
        "tool_calls": len(result.tool_calls or []),
        "context_dropped_messages": dropped,
    }


def _answer_metadata(result: ChatResult, dropped: int) -> dict[str, Any]:
    return {
        "ttft_ms": result.ttft_ms,
        "finish_reason": result.finish_reason,
        "context_dropped_messages": dropped,
    }


@_db
def _store_answer(
    run: Run, worker: str, message_id: int, result: ChatResult, *, dropped: int, admission: Any
) -> int | None:
    """Write the finished assistant message once, settle its usage, transition the run.

    The usage record (accounts' ledger) and the message commit together; the
    ``llm.call`` audit event is written last (approvals' lock-order rule).
    Returns the message's id, or ``None`` when the lease was lost (nothing
    stored). ``run``: as claimed for this step. A text reply on PostgreSQL
    takes ``_store_text_pg``.
    """
    from accounts.services import llm_call_abort, llm_call_settle
    from audit.services import audit_record

    with transaction.atomic():
        locked = _locked_own(run.pk, worker)
        if locked is None:
            llm_call_abort(admission=admission)
            return None
        run = locked
        message = Message.objects.get(pk=message_id)
        message.content = result.content
        message.tool_calls = result.tool_calls or None
        message.status = Message.Status.COMPLETE
        message.model = result.model or message.model
        message.prompt_tokens = result.prompt_tokens
        message.completion_tokens = result.completion_tokens
        message.cost_usd = result.cost_usd
        message.latency_ms = result.latency_ms
        message.metadata = {**message.metadata, **_answer_metadata(result, dropped)}
        message.save(
            update_fields=[
                "content", "tool_calls", "status", "model", "prompt_tokens",
                "completion_tokens", "cost_usd", "latency_ms", "metadata",
            ]
        )  # fmt: skip
        llm_call_settle(
            admission=admission,
            conversation_id=run.conversation_id,
            model=message.model or run.conversation.model_config.litellm_model,
            **_usage_of(result),
        )
        context = run.metadata.setdefault("context", {})
        context[str(run.step)] = {"dropped_messages": dropped}
        if dropped:
            run.metadata["context_dropped_messages"] = (
                run.metadata.get("context_dropped_messages", 0) + dropped
            )
        run.save(update_fields=["metadata"])
        events.message_replaced(message_id=message.pk, run_id=message.run_id)
        if result.tool_calls:
            if run.cancel_requested:
                run_finish(run=run, status=S.CANCELLED)
                return None
            run.status = S.GATING
            run.save(update_fields=["status"])
            events.run_status_changed(run_id=run.pk)
        else:
            run_finish(run=run, status=S.COMPLETED)
        audit_record(
            action="llm.call",
            actor=run.conversation.owner,
            target_type="run",
            target_id=run.pk,
            data=_llm_call_data(step=run.step, model=message.model, result=result, dropped=dropped),
        )
        return message.pk


@_db
def _fail(
    run_id: int, worker: str, message_id: int | None, error: str, *, kind: str, partial: str = ""
) -> None:
    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is None:
            return
        if message_id is not None:
            Message.objects.filter(pk=message_id).update(content=partial)
        run.metadata["error_kind"] = kind
        run.save(update_fields=["metadata"])
        run_finish(run=run, status=S.FAILED, error=error)


@_db
def _abort(run_id: int, worker: str, message_id: int, partial: str, *, reason: str) -> None:
    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is None:
            return
        Message.objects.filter(pk=message_id).update(content=partial)
        run_finish(run=run, status=S.CANCELLED)


@_db
def _store_answer_and_gate(
    run: Run, worker: str, message_id: int, result: ChatResult, *, dropped: int, admission: Any
) -> None:
    """A tool-call answer: ``_store_answer``, then ``_tool_turn_gate``.

    Two transactions, each writing its audit events last (approvals' lock
    order), in one thread hop: the approval card is not held up by a return
    to the loop and a second hand-off between them. Arguments as ``_store_answer``.
    """
    stored = _store_answer.func(
        run, worker, message_id, result, dropped=dropped, admission=admission
    )
    if stored is not None:
        _tool_turn_gate.func(run.pk, worker, stored)


# -- the tool phase (conversations/toolphase.py) ----------------------------------


@_db
def _tool_turn_gate(run_id: int, worker: str, message_id: int) -> None:
    """Gate the turn's tool calls and move the run on (one transaction)."""
    from audit.services import audit_deferred
    from conversations.toolphase import turn_continue, turn_gate

    # Its events (each call recorded, each decision, each approval request) are
    # appended together at the end: two round trips, the audit head locked last.
    with transaction.atomic(), audit_deferred():
        run = _locked_own(run_id, worker)
        if run is None:
            return
        message = Message.objects.get(pk=message_id)
        turn_gate(run=run, message=message)
        events.run_tools_changed(run_id=run.pk)
        turn_continue(run=run, message_id=message_id)


@_db
def _tool_turn_claim(run_id: int, worker: str, message_id: int) -> list[int] | None:
    from conversations.toolphase import turn_claim_approved

    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is None:
            return None
        return turn_claim_approved(run=run, message_id=message_id)


@_db
def _tool_turn_after_execute(run_id: int, worker: str, message_id: int) -> None:
    from conversations.toolphase import turn_continue

    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is None:
            return
        events.run_tools_changed(run_id=run.pk)
        turn_continue(run=run, message_id=message_id)


async def _step_execute_tools(run: Run, worker: str, turn: _ToolTurn) -> None:
    """Run the turn's approved tool calls concurrently, then move the run on.

    ``turn``: read and claimed with the run (``_tool_turn_begin``). Exactly once
    per invocation: ``invocation_execute`` proceeds only from ``approved``
    under a row lock, so a replayed step skips what already ran.
    """
    from tools.services import invocation_recover_interrupted, invocations_execute

    if turn.message_id is None:
        await _fail_lost_turn(run.pk, worker)
        return
    ids = turn.approved
    if ids is None:
        for invocation_id in turn.interrupted:
            # A worker died mid-call: re-run if idempotent, else fail it (tools decides).
            await invocation_recover_interrupted(invocation_id=invocation_id)
        ids = await _tool_turn_claim(run.pk, worker, turn.message_id)
        if ids is None:
            return
    if ids:
        await invocations_execute(invocation_ids=ids)
    await _tool_turn_after_execute(run.pk, worker, turn.message_id)


@_db
def _fail_lost_turn(run_id: int, worker: str) -> None:
    with transaction.atomic():
        run = _locked_own(run_id, worker)
        if run is not None:
            run_finish(run=run, status=S.FAILED, error="Lost track of this run's tool calls.")


@_db
def _latest_tool_message(run: Run) -> Message | None:
    return (
        Message.objects.filter(run=run, role=Message.Role.ASSISTANT, tool_calls__isnull=False)
        .order_by("-id")
        .first()
    )


# -- entry point -------------------------------------------------------------------


async def run_advance(*, run_id: int, worker: str) -> None:
    """Advance run ``run_id`` by one step as ``worker`` (a unique id per attempt).

    Safe to call any number of times: a run that is terminal, waiting on a
    human or tools, or leased by another live worker is left alone; a step
    replayed after a crash rewrites the same assistant message. Never raises
    for model errors: they fail the run with a message naming the cause.
    """
    run, start = await _claim_and_begin(run_id, worker)
    if run is None:
        return
    if run.status == S.GATING:
        assistant = await _latest_tool_message(run)
        if assistant is None:
            await _fail_lost_turn(run.pk, worker)
            return
        await _tool_turn_gate(run.pk, worker, assistant.pk)
        return
    if isinstance(start, _ToolTurn):
        await _step_execute_tools(run, worker, start)
        return
    if start is not None:
        await _step_call_llm(run, worker, start)
