"""Writes: syncing ``Tool`` rows, recording tool calls, and executing them exactly once.

The life of a tool call (statuses of ``ToolInvocation``)::

    invocations_record ─► requested ─(gate)─► approved ─► running ─► succeeded | failed
                      └─► invalid (arguments failed the schema; an error result)

The gate (approvals) moves ``requested`` to ``approved`` / ``awaiting_approval`` /
``denied`` with :func:`invocation_mark`. :func:`invocation_execute` runs only
from ``approved``, under a row lock, so a replayed or concurrent execution task
is a no-op (Wagtail ``TaskState`` transitions; STYLE.md "State machines").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from pydantic_core import to_jsonable_python
from structlog.contextvars import bound_contextvars

from audit.services import audit_record
from project.dbthreads import db_async
from tools.builtin.notes import MAX_VALUE_CHARS
from tools.mcp.bridge import mcp_registry_ensure
from tools.models import Note, Tool, ToolInvocation
from tools.offered import tools_offered_changed
from tools.registry import (
    ToolArgumentsInvalid,
    ToolContext,
    ToolError,
    ToolResult,
    ToolSpec,
    registry,
)
from tools.selectors import tool_names_for_user_id
from tools.signals import run_cancel_query
from tools.validation import tool_arguments_parse, tool_arguments_validate

logger = logging.getLogger(__name__)

Status = ToolInvocation.Status

NOT_REGISTERED = "Not registered in this version of Tollgate."
INTERRUPTED_NOT_RETRIED = "Tool call interrupted; not retried because the tool is not idempotent."


class InvocationStateError(Exception):
    """An invocation is not in the status a transition expects."""


# --- Tool rows ------------------------------------------------------------------


def tools_sync(*, using: str = "default") -> None:
    """Create or update one ``Tool`` row per registered tool.

    New rows get ``enabled = spec.enabled_by_default`` (``http.get`` starts
    disabled). Existing rows get the registry's description, hints and source;
    the admin's ``enabled`` and ``groups`` choices are never changed. Built-in
    rows whose tool is no longer registered get ``unavailable_reason`` set (and
    cleared when it comes back); rows of other sources (``mcp:*``) are left to
    their owner. A spec with an ``availability`` check gets its reason (or
    none) written on every sync. Called from a ``post_migrate`` handler (``ToolsConfig.ready``),
    by ``manage.py tools_sync``, and by whoever registers tools at run time.
    Safe to run concurrently (``get_or_create``).
    """
    specs = registry.all()
    with transaction.atomic(using=using):
        rows = {row.name: row for row in Tool.objects.using(using).select_for_update()}
        for spec in specs:
            values = {
                "description": spec.description,
                "read_only": spec.read_only,
                "destructive": spec.destructive,
                "idempotent": spec.idempotent,
                "open_world": spec.open_world,
                "source": spec.source,
            }
            if spec.availability is not None:
                available, reason = spec.availability()
                values["unavailable_reason"] = "" if available else reason
            row = rows.get(spec.name)
            if row is None:
                Tool.objects.using(using).get_or_create(
                    name=spec.name, defaults={**values, "enabled": spec.enabled_by_default}
                )
                continue
            if row.unavailable_reason == NOT_REGISTERED and "unavailable_reason" not in values:
                values["unavailable_reason"] = ""
            changed = [key for key, value in values.items() if getattr(row, key) != value]
            if changed:
                for key in changed:
                    setattr(row, key, values[key])
                row.save(using=using, update_fields=[*changed, "updated_at"])
        registered = {spec.name for spec in specs}
        for name, row in rows.items():
            if name not in registered and row.source == "builtin" and not row.unavailable_reason:
                row.unavailable_reason = NOT_REGISTERED
                row.save(using=using, update_fields=["unavailable_reason", "updated_at"])


# --- Recording ------------------------------------------------------------------


def invocations_record(
    *,
    run_id: int,
    message_id: int | None,
    user_id: int,
    conversation_id: int,
    tool_calls: list[dict[str, Any]],
) -> list[ToolInvocation]:
    """Store the tool calls of one assistant turn; idempotent per (run, tool_call_id).

    ``tool_calls`` is the OpenAI format: ``[{"id": "call_1", "type": "function",
    "function": {"name": "<wire name>", "arguments": "<JSON string>"}}]``. The
    name may be the wire name (``notes__delete``) or the dotted one. Each call
    is checked before anything else: an unknown tool, one the user may not use,
    or arguments that fail the schema give status ``invalid`` with ``is_error``
    and a ``result`` fit to send back to the model; otherwise ``requested`` with
    the parsed ``arguments_requested``. A call without an id gets ``call_<position>``.
    A replay returns the rows already stored, unchanged. Returns the rows in call
    order (duplicate ids within the list are kept once).

    Inside the caller's transaction no savepoint is taken; the run should be
    locked (the gate does), or two recorders of the same turn at once make the
    second fail with ``IntegrityError`` (the unique ``(run, tool_call_id)``).
    """
    available = tool_names_for_user_id(user_id=user_id)
    calls: dict[str, dict[str, Any]] = {}
    for position, call in enumerate(tool_calls):
        call_id = str(call.get("id") or f"call_{position}")[:200]
        if call_id not in calls:
            calls[call_id] = _invocation_fields(call, position, available)
    # No savepoint in the caller's transaction (the gate's, with the run locked:
    # no other writer records this run's calls meanwhile); one read for a replay's
    # rows and one INSERT for the rest, not a get_or_create and its savepoint each.
    with transaction.atomic(savepoint=False):
        stored = {
            row.tool_call_id: row
            for row in ToolInvocation.objects.filter(run_id=run_id, tool_call_id__in=list(calls))
        }
        created = ToolInvocation.objects.bulk_create(
            ToolInvocation(
                run_id=run_id,
                tool_call_id=call_id,
                message_id=message_id,
                user_id=user_id,
                conversation_id=conversation_id,
                **fields,
            )
            for call_id, fields in calls.items()
            if call_id not in stored
        )
        for invocation in created:
            audit_record(
                action="tool.requested",
                actor=user_id,
                target_type="tool_invocation",
                target_id=invocation.pk,
                data={
                    "tool": invocation.tool_name,
                    "tool_call_id": invocation.tool_call_id,
                    "run_id": run_id,
                    "status": invocation.status,
                    "arguments": invocation.arguments_requested,
                    "error": invocation.error or None,
                },
            )
    stored.update((invocation.tool_call_id, invocation) for invocation in created)
    return [stored[call_id] for call_id in calls]


def _invocation_fields(call: dict[str, Any], position: int, available: set[str]) -> dict[str, Any]:
    """A new ``ToolInvocation``'s fields for one OpenAI-format tool call: ``requested``
    with the parsed arguments, or ``invalid`` with the error the model will read."""
    function = call.get("function") or {}
    wire = str(function.get("name") or "")
    raw = function.get("arguments")
    if raw is None:
        raw = ""
    elif not isinstance(raw, str):
        raw = json.dumps(raw)
    spec = registry.get_by_wire_name(wire) or registry.get(wire)
    fields: dict[str, Any] = {
        "tool_name": (spec.name if spec else wire)[:200],
        "position": position,
        "arguments_raw": raw,
        "status": Status.REQUESTED,
    }
    problem = ""
    # A dynamic tool (``ToolRegistry.dynamic_register``) has no ``Tool`` row: the app
    # that offered it refuses a call the run may not make (an agent's handoffs).
    if spec is None or (spec.name not in available and not spec.metadata.get("dynamic")):
        problem = f"Unknown or unavailable tool {wire!r}. Call only the tools you were given."
    else:
        try:
            fields["arguments_requested"] = tool_arguments_parse(spec=spec, raw=raw)
        except ToolArgumentsInvalid as exc:
            problem = str(exc)
    if problem:
        fields.update(
            status=Status.INVALID,
            result=problem,
            error=problem,
            is_error=True,
            finished_at=timezone.now(),
        )
    return fields


def invocation_mark(
    *,
    invocation_id: int,
    status: str,
    expected: Iterable[str] | None = None,
    result: str | None = None,
    is_error: bool | None = None,
    error: str | None = None,
    decision: str | None = None,
    decision_explanation: str | None = None,
    arguments_executed: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> ToolInvocation:
    """Move an invocation to ``status`` under a row lock and return it.

    For the gate and the loop: ``approved``, ``awaiting_approval``, ``denied``
    (with the ``result`` the model will read), ``expired``, ``cancelled``.
    ``expected`` lists the statuses it may come from (default: any unsettled
    status other than ``running``); otherwise :class:`InvocationStateError`.
    ``arguments_executed`` (edited arguments) is validated against the tool's
    schema and raises :class:`ToolArgumentsInvalid` without writing.
    ``metadata`` is merged into the row's metadata. ``running`` sets ``started_at``,
    settled statuses ``finished_at``. Opens its own ``transaction.atomic`` outside a transaction;
    inside one it takes no savepoint (a refusal raises before writing; a
    database error leaves the caller's transaction to roll back).
    """
    allowed = (
        set(expected)
        if expected is not None
        else {Status.REQUESTED, Status.AWAITING_APPROVAL, Status.APPROVED}
    )
    if arguments_executed is not None:
        mcp_registry_ensure()
    # In the caller's transaction (the gate's, a decision's), no savepoint: its two
    # round trips bought nothing, as a refusal below is raised before any write.
    with contextlib.nullcontext() if connection.in_atomic_block else transaction.atomic():
        invocation = ToolInvocation.objects.select_for_update(no_key=True).get(pk=invocation_id)
        if invocation.status not in allowed:
            raise InvocationStateError(
                f"Invocation {invocation_id} is {invocation.status}, expected one of "
                f"{sorted(allowed)}."
            )
        if arguments_executed is not None:
            spec = registry.get(invocation.tool_name)
            if spec is None:
                raise InvocationStateError(f"Tool {invocation.tool_name!r} is not registered.")
            invocation.arguments_executed = tool_arguments_validate(
                spec=spec, arguments=arguments_executed
            )
        invocation.status = status
        for name, value in (
            ("result", result),
            ("is_error", is_error),
            ("error", error),
            ("decision", decision),
            ("decision_explanation", decision_explanation),
        ):
            if value is not None:
                setattr(invocation, name, value)
        if metadata:
            invocation.metadata = {**invocation.metadata, **metadata}
        if status == Status.RUNNING and invocation.started_at is None:
            invocation.started_at = timezone.now()
        if status in ToolInvocation.SETTLED and invocation.finished_at is None:
            invocation.finished_at = timezone.now()
        invocation.save()
    return invocation


def invocations_delete(*, run_ids: Iterable[int] = (), message_ids: Iterable[int] = ()) -> int:
    """Delete the invocations of runs ``run_ids`` and of assistant messages
    ``message_ids`` (primary keys); return how many invocations went.

    Their approval requests go with them (a cascade inside ``approvals``).
    What a foreign key's ``CASCADE`` did before ``run_id``/``message_id`` became
    plain columns: ``conversations`` calls this when it deletes runs or
    messages, inside the transaction that deletes them. Not audited: the caller
    audits the deletion it makes. No ids: nothing deleted, no query.
    """
    run_ids, message_ids = list(run_ids), list(message_ids)
    if not run_ids and not message_ids:
        return 0
    # ``delete()`` is atomic itself (Django's collector: no savepoint in a transaction).
    _, deleted = ToolInvocation.objects.filter(
        Q(run_id__in=run_ids) | Q(message_id__in=message_ids)
    ).delete()
    return deleted.get(ToolInvocation._meta.label, 0)


# --- Execution ------------------------------------------------------------------


def result_truncate(*, text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters and append a note saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return text[:limit] + f"\n[truncated: {cut} of {len(text)} characters cut]"


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)


def _invocation_fail_locked(invocation: ToolInvocation, message: str) -> None:
    now = timezone.now()
    invocation.status = Status.FAILED
    invocation.is_error = True
    invocation.result = message
    invocation.error = message
    invocation.finished_at = now
    if invocation.started_at is not None:
        invocation.duration_ms = int((now - invocation.started_at).total_seconds() * 1000)
    invocation.save()
    _audit_executed(invocation)


def _audit_executed(invocation: ToolInvocation) -> None:
    """Write ``tool.executed`` (status, duration, arguments run) for a finished call."""
    audit_record(
        action="tool.executed",
        actor=invocation.user,
        target_type="tool_invocation",
        target_id=invocation.pk,
        data={
            "tool": invocation.tool_name,
            "status": invocation.status,
            "duration_ms": invocation.duration_ms,
            "attempt": invocation.attempts,
            "arguments": invocation.arguments_executed,
            "error": invocation.error[:500] or None,
        },
    )


def _invocation_claim_locked(
    invocation_id: int, *, now: Any, allowed: dict[int, set[str]]
) -> tuple[ToolInvocation, ToolSpec | None, dict[str, Any] | None]:
    """From APPROVED go to RUNNING (attempts + 1) or straight to FAILED. Inside atomic.

    ``now``: the start time recorded (one per batch: the calls start together
    when it commits). ``allowed``: user id → tool names they may use, filled
    as needed (one query per user per batch, not per call).
    Returns (row, spec, arguments); spec is None when there is nothing to run.
    """
    invocation = ToolInvocation.objects.select_for_update(no_key=True).get(pk=invocation_id)
    if invocation.status != Status.APPROVED:
        return invocation, None, None
    invocation.status = Status.RUNNING
    invocation.started_at = now
    invocation.attempts += 1
    arguments = (
        invocation.arguments_executed
        if invocation.arguments_executed is not None
        else invocation.arguments_requested
    )
    invocation.arguments_executed = arguments
    invocation.save(update_fields=["status", "started_at", "attempts", "arguments_executed"])
    spec = registry.get(invocation.tool_name)
    # Deny by default at the last moment too: the admin may have disabled the
    # tool (or removed the user's group) after the call was approved.
    if invocation.user_id not in allowed:
        allowed[invocation.user_id] = set(tool_names_for_user_id(user_id=invocation.user_id))
    if spec is None or spec.name not in allowed[invocation.user_id]:
        _invocation_fail_locked(
            invocation,
            f"Tool {invocation.tool_name!r} is not available (unregistered, disabled, "
            "or not allowed for this user); it was not run.",
        )
        return invocation, None, None
    try:
        tool_arguments_validate(spec=spec, arguments=arguments or {})
    except ToolArgumentsInvalid as exc:
        _invocation_fail_locked(invocation, str(exc))
        return invocation, None, None
    return invocation, spec, arguments or {}


@db_async
def _invocations_claim(
    *, invocation_ids: list[int]
) -> dict[int, tuple[ToolInvocation, ToolSpec | None, dict[str, Any] | None]]:
    """Claim several invocations in ONE transaction (locks taken in id order).

    One round trip for a turn's calls instead of one each: claimed one after
    another, the tenth call of a turn started tens of milliseconds after the
    first (docs/benchmarks.md, parallel tools).
    """
    mcp_registry_ensure()
    now = timezone.now()
    allowed: dict[int, set[str]] = {}
    with transaction.atomic():
        return {
            pk: _invocation_claim_locked(pk, now=now, allowed=allowed)
            for pk in sorted(set(invocation_ids))
        }


async def _handler_run(
    *, spec: ToolSpec, arguments: dict[str, Any], ctx: ToolContext
) -> tuple[str, bool, dict[str, Any]]:
    """Run the handler with the spec's timeout. Returns (result text, is_error, metadata)."""
    try:
        # asyncio.timeout is asyncio.wait_for's context-manager form; unlike a bare
        # ``except TimeoutError`` it tells our deadline apart from a TimeoutError
        # raised inside the tool. A sync handler runs in a thread, which is
        # abandoned (not killed) at the deadline.
        async with asyncio.timeout(spec.timeout_seconds) as deadline:
            value = await spec.handler(arguments, ctx)
        if isinstance(value, ToolResult):
            text = result_truncate(text=value.text, limit=spec.max_result_chars)
            return text, value.is_error, dict(value.metadata)
        return result_truncate(text=_result_text(value), limit=spec.max_result_chars), False, {}
    except TimeoutError as exc:
        if deadline.expired():
            message = f"Tool {spec.name} timed out after {spec.timeout_seconds:g} s."
        else:
            message = f"Tool {spec.name} failed: TimeoutError: {exc}"
    except (ToolError, ToolArgumentsInvalid) as exc:
        message = str(exc)
    except Exception as exc:
        logger.exception("Tool %s raised", spec.name)
        message = f"Tool {spec.name} failed: {type(exc).__name__}: {exc}"
    return result_truncate(text=message, limit=spec.max_result_chars), True, {}


def _invocation_finish_locked(
    *,
    now: Any,
    invocation_id: int,
    attempt: int,
    result: str,
    is_error: bool,
    duration_ms: int,
    metadata: dict[str, Any] | None = None,
) -> ToolInvocation:
    invocation = ToolInvocation.objects.select_for_update(no_key=True).get(pk=invocation_id)
    if invocation.status != Status.RUNNING or invocation.attempts != attempt:
        # Settled or re-claimed meanwhile (recovery); the newer writer owns the row.
        logger.warning(
            "Invocation %s changed while running (now %s, attempt %s); result dropped",
            invocation_id,
            invocation.status,
            invocation.attempts,
        )
        return invocation
    invocation.status = Status.FAILED if is_error else Status.SUCCEEDED
    invocation.result = result
    invocation.is_error = is_error
    invocation.error = result if is_error else ""
    invocation.finished_at = now
    invocation.duration_ms = duration_ms
    if metadata:
        invocation.metadata = {**invocation.metadata, **metadata}
    invocation.save()
    _audit_executed(invocation)
    return invocation


@db_async
def _invocations_finish(*, results: list[dict[str, Any]]) -> list[ToolInvocation]:
    """Store several results (``_invocation_finish_locked`` kwargs) in ONE transaction.

    They arrived together, so they share one ``finished_at``; each keeps its
    own ``duration_ms`` (the handler's wall time).
    """
    now = timezone.now()
    with transaction.atomic():
        return [
            _invocation_finish_locked(now=now, **r)
            for r in sorted(results, key=lambda r: r["invocation_id"])
        ]


async def invocation_execute(*, invocation_id: int) -> ToolInvocation:
    """Run one approved invocation exactly once and store its result.

    Under a row lock (``select_for_update``) it proceeds only from ``approved``;
    any other status returns the row unchanged, so a replayed or concurrent
    task is a no-op. It sets ``running``, ``started_at``, ``attempts + 1`` and
    ``arguments_executed`` (the edited arguments if set, else the requested
    ones), commits, re-checks that the user may still use the tool and that the
    arguments match the schema, then runs the handler with the tool's
    ``timeout_seconds``. The result is cut to ``max_result_chars`` with a note.
    Exceptions, ``ToolError`` and the timeout become an error result (status
    ``failed``, ``is_error``, a message naming the cause); otherwise
    ``succeeded``. A handler returning a ``ToolResult`` sets the text, ``is_error``
    and metadata (merged into the row's) itself. The handler's ``ctx`` carries
    ``cancel_requested`` (see ``_run_cancel_check``) so a long call can stop
    when the run is stopped. ``duration_ms`` is the handler's wall time in milliseconds.
    Must not be called inside a transaction (the RUNNING claim must commit
    before the tool runs). Raises ``ToolInvocation.DoesNotExist`` for a bad id.
    """
    [invocation] = await invocations_execute(invocation_ids=[invocation_id])
    return invocation


async def _invocation_run(
    invocation: ToolInvocation, spec: ToolSpec, arguments: dict[str, Any]
) -> dict[str, Any]:
    """Run a claimed invocation's handler; the kwargs for ``_invocation_finish_locked``."""
    ctx = ToolContext(
        user_id=invocation.user_id,
        conversation_id=invocation.conversation_id,
        run_id=invocation.run_id,
        invocation_id=invocation.pk,
        cancel_requested=_run_cancel_check(invocation.run_id),
    )
    started = time.monotonic()
    result, is_error, metadata = await _handler_run(spec=spec, arguments=arguments, ctx=ctx)
    return {
        "invocation_id": invocation.pk,
        "attempt": invocation.attempts,
        "result": result,
        "is_error": is_error,
        "duration_ms": int((time.monotonic() - started) * 1000),
        "metadata": metadata,
    }


def _run_cancel_asked(*, run_id: int) -> bool:
    """Whether any receiver of ``run_cancel_query`` says run ``run_id`` must stop."""
    replies = run_cancel_query.send(sender=ToolInvocation, run_id=run_id)
    return any(reply for _, reply in replies)


def _run_cancel_check(run_id: int | None) -> Callable[[], Awaitable[bool]] | None:
    """``ToolContext.cancel_requested`` for a call of run ``run_id``: asks the
    ``run_cancel_query`` signal (tools may not import conversations, which answers)."""
    if run_id is None:
        return None
    check = db_async(_run_cancel_asked)

    async def cancel_requested() -> bool:
        return await check(run_id=run_id)

    return cancel_requested


async def invocations_execute(*, invocation_ids: list[int]) -> list[ToolInvocation]:
    """Run several invocations concurrently; their rows in the given order.

    Each follows :func:`invocation_execute`'s rules (ids that are not
    ``approved`` come back unchanged). All are claimed in one transaction
    and the handlers start together; results are stored as they come, those
    finishing together in one transaction.
    """
    claimed = await _invocations_claim(invocation_ids=invocation_ids)
    rows = {pk: invocation for pk, (invocation, _, _) in claimed.items()}
    finished: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def run_one(invocation: ToolInvocation, spec: ToolSpec, arguments: dict) -> None:
        # Every log record of the call carries these (project/logs.py).
        with bound_contextvars(tool_call_id=invocation.tool_call_id, tool=spec.name):
            try:
                outcome = await _invocation_run(invocation, spec, arguments)
            except Exception as exc:  # _handler_run catches the tool's own errors; this is ours
                logger.exception("Running invocation %s failed", invocation.pk)
                outcome = {
                    "invocation_id": invocation.pk,
                    "attempt": invocation.attempts,
                    "result": f"Tool {spec.name} failed: {type(exc).__name__}: {exc}",
                    "is_error": True,
                    "duration_ms": 0,
                }
        await finished.put(outcome)

    runners = [
        asyncio.create_task(run_one(invocation, spec, arguments))
        for invocation, spec, arguments in claimed.values()
        if spec is not None and arguments is not None
    ]
    try:
        pending = len(runners)
        while pending:
            batch = [await finished.get()]
            while not finished.empty():
                batch.append(finished.get_nowait())
            pending -= len(batch)
            for invocation in await _invocations_finish(results=batch):
                rows[invocation.pk] = invocation
    finally:
        for runner in runners:
            runner.cancel()
    return [rows[pk] for pk in invocation_ids]


def _invocation_recover_claim(*, invocation_id: int, grace_seconds: float, orphaned: bool) -> bool:
    """Lock a stuck RUNNING row; re-approve it (True) or fail it (False)."""
    with transaction.atomic():
        invocation = ToolInvocation.objects.select_for_update(no_key=True).get(pk=invocation_id)
        if invocation.status != Status.RUNNING:
            return False
        spec = registry.get(invocation.tool_name)
        timeout = spec.timeout_seconds if spec else 0.0
        if invocation.started_at is not None and not orphaned:
            age = (timezone.now() - invocation.started_at).total_seconds()
            if age < timeout + grace_seconds:
                return False  # may still be running in a live worker
        if spec is not None and spec.idempotent:
            invocation.status = Status.APPROVED
            invocation.metadata = {
                **invocation.metadata,
                "recovered": invocation.metadata.get("recovered", 0) + 1,
            }
            invocation.save(update_fields=["status", "metadata"])
            return True
        _invocation_fail_locked(invocation, INTERRUPTED_NOT_RETRIED)
        return False


async def invocation_recover_interrupted(
    *, invocation_id: int, grace_seconds: float = 60.0, orphaned: bool = False
) -> ToolInvocation:
    """Settle an invocation left ``running`` by a worker that died.

    Acts only when the row is ``running`` and either ``orphaned`` (the caller
    knows the worker that ran it is gone: the run's lease, which that worker
    renewed while the call ran, expired) or started more than the tool's
    ``timeout_seconds + grace_seconds`` (seconds) ago, so a live worker's call is
    never touched; otherwise returns it unchanged. An idempotent tool (MCP
    ``idempotentHint``) is put back to ``approved`` and run again through
    :func:`invocation_execute`; any other tool is failed with
    "interrupted; not retried because the tool is not idempotent", because
    it may already have had its effect.
    """
    rerun = await db_async(_invocation_recover_claim)(
        invocation_id=invocation_id, grace_seconds=grace_seconds, orphaned=orphaned
    )
    if rerun:
        return await invocation_execute(invocation_id=invocation_id)
    return await ToolInvocation.objects.aget(pk=invocation_id)


# --- Admin changes ------------------------------------------------------------------


def tools_set_enabled(*, names: Iterable[str], enabled: bool, actor: Any) -> list[str]:
    """Enable or disable tools by name; audit ``tool.enabled``/``tool.disabled`` per tool.

    Returns the names whose state changed (others were already so).
    """
    with transaction.atomic():
        changed = list(
            Tool.objects.select_for_update()
            .filter(name__in=list(names), enabled=not enabled)
            .values_list("name", flat=True)
        )
        Tool.objects.filter(name__in=changed).update(enabled=enabled, updated_at=timezone.now())
        tools_offered_changed()
        for name in changed:
            audit_record(
                action="tool.enabled" if enabled else "tool.disabled",
                actor=actor,
                target_type="tool",
                target_id=name,
            )
    return changed


def tool_admin_change_record(*, tool: Tool, changed: Iterable[str], actor: Any) -> None:
    """Audit an admin edit of a ``Tool`` row: enabled state and group changes."""
    changed = set(changed)
    if "enabled" in changed:
        audit_record(
            action="tool.enabled" if tool.enabled else "tool.disabled",
            actor=actor,
            target_type="tool",
            target_id=tool.name,
        )
    if "groups" in changed:
        audit_record(
            action="tool.groups_changed",
            actor=actor,
            target_type="tool",
            target_id=tool.name,
            data={"groups": sorted(tool.groups.values_list("name", flat=True))},
        )


def http_allowlist_change_record(*, host: str, deleted: bool, actor: Any) -> None:
    """Audit a change to the ``http.get`` host allowlist."""
    audit_record(
        action="tool.http_allowlist_changed",
        actor=actor,
        target_type="http_allowed_host",
        target_id=host,
        data={"deleted": deleted},
    )


def note_edit(*, user: Any, note_id: int, value: str) -> Note:
    """Replace the value of ``user``'s note ``note_id`` (the Memory page) and return
    it. ``value``: at most ``notes.MAX_VALUE_CHARS`` characters (``ValueError`` past
    it). ``Note.DoesNotExist`` for another user's note or none. Audited as
    ``memory.edited`` (the key and the new length, not the text)."""
    if len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"A note holds at most {MAX_VALUE_CHARS:,} characters.")
    with transaction.atomic():
        note = Note.objects.select_for_update().get(pk=note_id, user=user)
        note.value = value
        note.save(update_fields=["value", "updated_at"])
        audit_record(
            action="memory.edited",
            actor=user,
            target_type="note",
            target_id=note.pk,
            data={"key": note.key, "chars": len(value)},
        )
    return note


def note_delete(*, user: Any, note_id: int) -> str:
    """Delete ``user``'s note ``note_id`` (the Memory page); return its key.
    ``Note.DoesNotExist`` for another user's note or none. Audited as ``memory.deleted``."""
    with transaction.atomic():
        note = Note.objects.select_for_update().get(pk=note_id, user=user)
        key = note.key
        note.delete()
        audit_record(
            action="memory.deleted",
            actor=user,
            target_type="note",
            target_id=note_id,
            data={"key": key},
        )
    return key
