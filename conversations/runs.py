"""The run state machine: a run's states, the transitions allowed between them, and
the one function that performs a transition (Wagtail's ``TaskState`` habit).

DESIGN.md, "The agent loop"::

    queued → calling_llm → completed                     (a text answer)
                         → calling_llm                   (asked again: structured output)
                         → gating → executing_tools → calling_llm …
                                  → awaiting_approval → executing_tools | calling_llm
                                  → calling_llm        (every call settled at the gate)
    every unfinished state → cancelled | failed

An orchestrating run (``Run.kind`` compare or chain) has parts: runs whose
``orchestrator`` it is. It waits for them durably, as a run waits for people::

    queued → awaiting_parts → calling_llm …    (a compare's summary, once its parts ended)
                            → completed        (a chain's last step ended)
           awaiting_parts → awaiting_parts     (a chain starts its next step)

When a part reaches a terminal status, :data:`run_part_ended` is sent on commit;
the receiver for the orchestrator's kind locks the orchestrator and moves it on.
``TRANSITIONS`` is that table; :func:`run_transition` is the only code that
assigns a run's status. It checks the table (``IllegalTransition``), writes with
one compare-and-set ``UPDATE … WHERE status = <the status read>`` (``RunChanged``
if another writer got there first), records the ``run.<status>`` audit event,
pushes the run's status line and, when the new state needs a worker, schedules
the next step, both on commit. The lease (which worker advances the run now)
and the Stop flag are written here too, by the functions below.

Lock order. Every service that locks more than one row takes the locks in this
order, so no two transactions can wait on each other in a circle (a Stop racing
an approval, an expiry racing either):

1. the conversation, when a service changes it together with its runs
   (send, retry, archive);
2. the run (:func:`run_lock`); an orchestrating run before its parts;
3. its tool invocations, by id (``tools``);
4. approval requests, by id (``approvals``: a decision or an expiry first sends
   ``approvals.signals.approval_deciding``, whose receiver here locks the run and
   the invocation before the request is locked);
5. budget reservations by id, then budget counters by (budget id, id) (``accounts``);
6. the audit chain head, last (``audit_record`` as a transaction's last write, or
   ``audit_deferred`` around it).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

from accounts.services import budget_release_approved
from audit.services import audit_record
from conversations import events
from conversations.loopevents import loop_event_of_run
from conversations.models import Message, Run

logger = logging.getLogger(__name__)

S = Run.Status

#: Allowed transitions: current status → the statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.CALLING_LLM, S.AWAITING_PARTS, S.FAILED, S.CANCELLED}),
    # calling_llm → calling_llm: an answer that failed a structured-output guardrail
    # is asked again (conversations.guarding), once per run.
    S.CALLING_LLM: frozenset({S.CALLING_LLM, S.GATING, S.COMPLETED, S.FAILED, S.CANCELLED}),
    S.GATING: frozenset(
        {S.AWAITING_APPROVAL, S.EXECUTING_TOOLS, S.CALLING_LLM, S.FAILED, S.CANCELLED}
    ),
    S.AWAITING_APPROVAL: frozenset({S.EXECUTING_TOOLS, S.CALLING_LLM, S.FAILED, S.CANCELLED}),
    # executing_tools → awaiting_parts: the turn's calls of agents wait on their
    # sub-runs (conversations.subagents).
    S.EXECUTING_TOOLS: frozenset({S.CALLING_LLM, S.AWAITING_PARTS, S.FAILED, S.CANCELLED}),
    # An orchestrating run: its parts ended (a compare's summary call, a chain's end,
    # an answer's next model call after its sub-runs), or a chain moved on to its
    # next part.
    S.AWAITING_PARTS: frozenset(
        {S.AWAITING_PARTS, S.CALLING_LLM, S.COMPLETED, S.FAILED, S.CANCELLED}
    ),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: Statuses in which a worker has work to do (the others wait on people or are over).
ADVANCEABLE: frozenset[str] = frozenset({S.QUEUED, S.CALLING_LLM, S.GATING, S.EXECUTING_TOOLS})

#: Transitions into these are audited (``run.<status>``): a run's outcome, and each
#: wait on people. The moves between (a model call, the gate, the tools) are audited
#: by what happens in them: ``llm.call``, ``gate.decided``, ``tool.executed``.
AUDITED: frozenset[str] = frozenset(
    {S.AWAITING_APPROVAL, S.AWAITING_PARTS, S.COMPLETED, S.FAILED, S.CANCELLED}
)

#: Statuses of a tool turn: approval holds (``accounts``) may exist for the run then.
_AFTER_TOOLS = frozenset({S.GATING, S.AWAITING_APPROVAL, S.EXECUTING_TOOLS})

#: Sent on commit when a run has a step for a worker to take: ``run_id`` (int).
#: ``conversations.dispatch`` receives it (Celery or an asyncio task).
run_step_due = Signal()

#: Sent on commit when a part of an orchestrating run reached a terminal status:
#: ``orchestrator_id`` (int), ``kind`` (the orchestrator's ``Run.Kind``), ``part_id``
#: (int). Each kind's module connects a receiver that ignores the other kinds; it
#: locks the orchestrator (``run_lock``) before any part (the lock order below).
#: Also sent by :func:`runs_recover_stale` for an orchestrator whose parts have all
#: ended while it still waits (a receiver lost with its process): receivers must be
#: idempotent, checking the orchestrator's status and parts under the lock.
run_part_ended = Signal()


class RunStateError(Exception):
    """Base of the state machine's errors (a bug or a race, never bad user input)."""


class IllegalTransition(RunStateError):
    """The table has no transition from the run's status to the one asked for."""


class RunChanged(RunStateError):
    """The run's row no longer had the status it was read with (the caller did not
    hold the run's lock, and another writer moved it first)."""


def worker_id(prefix: str) -> str:
    """A lease owner id unique to one attempt: ``<prefix>@<host>/<pid>/<random>``."""
    return f"{prefix}@{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def lease_until(seconds: float | None = None) -> datetime:
    """When a lease taken now ends: ``seconds`` (default ``TOLLGATE_RUN_LEASE_SECONDS``) on."""
    return timezone.now() + timedelta(
        seconds=settings.TOLLGATE_RUN_LEASE_SECONDS if seconds is None else seconds
    )


def run_lock(*, run_id: int, owner: Any = None) -> Run | None:
    """Lock run ``run_id`` (``SELECT … FOR NO KEY UPDATE``) with its conversation,
    owner and model configs (the run's and the conversation's) loaded; ``None``
    when there is no such run (or, with ``owner``, none of that user's). Call
    inside ``transaction.atomic``."""
    runs = Run.objects.select_for_update(no_key=True, of=("self",)).select_related(
        "conversation__owner", "conversation__model_config", "model_config"
    )
    if owner is not None:
        runs = runs.filter(conversation__owner=owner)
    try:
        return runs.get(pk=run_id)  # not .first(): no ORDER BY to build for one row
    except Run.DoesNotExist:
        return None


def run_lease_is_live(run: Run) -> bool:
    """Whether some worker holds an unexpired lease on ``run``."""
    return run.lease_expires_at is not None and run.lease_expires_at > timezone.now()


def _write(run: Run, expected: str, fields: dict[str, Any], *, holder: str | None = None) -> None:
    """Compare-and-set: write ``fields`` if the row's status is still ``expected``
    (and, with ``holder``, its lease still that worker's), and copy them onto
    ``run``. Raises ``RunChanged`` otherwise."""
    fields["updated_at"] = timezone.now()
    condition: dict[str, Any] = {"pk": run.pk, "status": expected}
    if holder is not None:
        condition["lease_owner"] = holder
    if not Run.objects.filter(**condition).update(**fields):
        raise RunChanged(f"Run {run.pk} is no longer {expected} (or no longer {holder}'s).")
    for name, value in fields.items():
        setattr(run, name, value)


def run_transition(
    *,
    run: Run,
    to: str,
    worker: str = "",
    error: str = "",
    actor: Any = None,
    data: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    holder: str | None = None,
) -> str:
    """Move ``run`` from its current status to ``to``; returns the status reached.

    Precondition: inside ``transaction.atomic`` with ``run`` locked (``run_lock``),
    or ``holder`` given: the worker whose lease the caller expects the run to
    carry, checked by the write itself, which then takes the row's lock (a step's
    last transaction, with ``run`` as its claim loaded it). ``run`` is updated in
    place.

    - ``to`` must be in ``TRANSITIONS[run.status]``, else ``IllegalTransition``.
    - Into ``calling_llm`` the step counter (model calls) goes up by one; a run
      that has made ``max_steps`` calls fails instead, with a message saying so
      (the status returned is then ``failed``).
    - Leaving ``queued`` sets ``started_at``; a terminal status sets
      ``finished_at`` and ``error`` (≤ 2,000 characters); ``cancelled`` and
      ``failed`` mark the run's still-streaming messages stopped or failed and
      release the budget holds its approved tool calls took (``accounts``).
    - ``worker``: the caller goes on advancing the run in this step and keeps
      (or takes) its lease for ``TOLLGATE_RUN_LEASE_SECONDS``. Otherwise the
      lease is released and, if ``to`` needs a worker (``ADVANCEABLE``), a step
      is scheduled on commit (``run_step_due``).
    - Written with one compare-and-set ``UPDATE``; ``RunChanged`` if the row's
      status was no longer the one ``run`` carries.
    - Audits ``run.<to>`` when ``to`` is in ``AUDITED`` (``actor``: who caused it,
      ``None`` for the system; ``data`` is added to the event's), and pushes the
      status line on commit.
    - ``metadata``: the run's new ``metadata``, written by the same ``UPDATE``.
    """
    current = run.status
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"Run {run.pk}: {current} → {to} is not a transition.")
    fields: dict[str, Any] = {"status": to}
    if metadata is not None:
        fields["metadata"] = metadata
    if to == S.CALLING_LLM:
        if run.step >= run.max_steps:
            return run_transition(
                run=run,
                to=S.FAILED,
                actor=actor,
                metadata=metadata,
                error=(
                    f"Stopped after {run.step} model calls without a final answer "
                    f"(this run's limit is {run.max_steps} steps)."
                    if run.step
                    else f"This run may not call the model (limit {run.max_steps} steps)."
                ),
            )
        fields["step"] = run.step + 1
    now = timezone.now()
    if current == S.QUEUED and run.started_at is None:
        fields["started_at"] = now
    terminal = to in Run.TERMINAL
    if terminal:
        fields["finished_at"] = now
        fields["error"] = error[:2000]
    keep = bool(worker) and not terminal
    fields["lease_owner"] = worker if keep else ""
    fields["lease_expires_at"] = lease_until() if keep else None
    _write(run, current, fields, holder=holder)
    if to in (S.CANCELLED, S.FAILED):  # a completed run's reply was stored complete
        _streaming_messages_end(run, cancelled=to == S.CANCELLED)
        if current in _AFTER_TOOLS or run.step > 1:
            # Holds taken when its tool calls were approved, for a model call that
            # will not come (the next call's admission releases them otherwise).
            budget_release_approved(run_id=run.pk)
    if to in AUDITED:
        event: dict[str, Any] = {"from": current, "step": run.step, **(data or {})}
        if error:
            event["error"] = error[:500]
        audit_record(
            action=f"run.{to}", actor=actor, target_type="run", target_id=run.pk, data=event
        )
    if current == S.QUEUED and to not in Run.TERMINAL:
        model = run.model_config.name if run.model_config is not None else ""
        loop_event_of_run(run, "run.started", kind=run.kind, model=model)
    if to == S.CALLING_LLM:
        loop_event_of_run(run, "step.started")
    if terminal:
        loop_event_of_run(
            run,
            "run.finished",
            status=to,
            steps=run.step,
            error=error[:500],
            created_at=run.created_at.isoformat() if run.created_at else None,
        )
    events.run_status_changed(run_id=run.pk, run=run)
    if not keep and to in ADVANCEABLE:
        run_step_schedule(run_id=run.pk)
    if terminal and run.orchestrator_id is not None:
        _part_ended_schedule(run)
    return to


def _part_ended_schedule(part: Run) -> None:
    orchestrator_id = part.orchestrator_id
    if orchestrator_id is None:
        return
    kind = Run.objects.filter(pk=orchestrator_id).values_list("kind", flat=True).first()
    if kind is None:
        return
    part_id = part.pk
    transaction.on_commit(
        lambda: run_part_ended.send(
            sender=Run, orchestrator_id=orchestrator_id, kind=kind, part_id=part_id
        )
    )


def _streaming_messages_end(run: Run, *, cancelled: bool) -> None:
    status = Message.Status.STOPPED if cancelled else Message.Status.FAILED
    for message in Message.objects.filter(run=run, status=Message.Status.STREAMING):
        message.status = status
        message.save(update_fields=["status"])
        events.message_replaced(message_id=message.pk, run_id=run.pk, message=message)


def run_import(*, status: str, **fields: Any) -> Run:
    """Create a finished run brought in by a conversation import (``conversations.exports``).

    ``status``: the run's status in the file, kept when it is terminal
    (``Run.TERMINAL``), else ``cancelled`` (a run cannot be imported half-way:
    nothing would advance it). ``fields``: the other ``Run`` fields. The only
    place outside a transition that sets a run's status; no audit event (the
    import audits itself) and no step is scheduled.
    """
    return Run.objects.create(status=status if status in Run.TERMINAL else S.CANCELLED, **fields)


def run_step_schedule(*, run_id: int) -> None:
    """Have a worker take run ``run_id``'s next step once the current transaction
    commits (at once outside one): ``run_step_due`` is sent then."""
    transaction.on_commit(lambda: run_step_due.send(sender=Run, run_id=run_id))


class Claim(NamedTuple):
    """What :func:`run_claim` took: the locked ``run`` (its conversation, owner and
    model config loaded), and whether a worker held this step before (``resumed``: its
    lease expired; what it wrote of the step, an assistant message, may be there)."""

    run: Run
    resumed: bool


def run_claim(*, run_id: int, worker: str) -> Claim | None:
    """Lock run ``run_id`` and take its lease for ``worker``, if it has work for one.

    ``None`` (nothing written) when the run does not exist, waits on people or is
    over, or another worker holds a live lease (a duplicate or redelivered task).
    A queued run moves to ``calling_llm`` (its first model call; or ``failed``
    when it may make none: then ``None``). A run whose Stop was asked for comes
    back without a lease: the caller stops it (``toolphase.run_stop``).
    Call inside ``transaction.atomic``; the run stays locked until it ends.
    """
    run = run_lock(run_id=run_id)
    if run is None or run.status not in ADVANCEABLE or run_lease_is_live(run):
        return None
    resumed = bool(run.lease_owner)
    if run.cancel_requested:
        return Claim(run, resumed)
    if run.status == S.QUEUED:
        if run_transition(run=run, to=S.CALLING_LLM, worker=worker) != S.CALLING_LLM:
            return None
        return Claim(run, resumed)
    fields: dict[str, Any] = {"lease_owner": worker, "lease_expires_at": lease_until()}
    if resumed:  # the status line says so until the step is done (Run.is_resuming)
        fields["metadata"] = {**run.metadata, "resumed_step": run.step}
        logger.info("run %s: resumed by %s after %s stopped", run.pk, worker, run.lease_owner)
    _write(run, run.status, fields)
    events.run_status_changed(run_id=run.pk, run=run)
    return Claim(run, resumed)


def run_relock(*, run: Run, worker: str) -> bool:
    """Lock the row of ``run`` (loaded earlier in this step) and refresh its status,
    lease and Stop flag; whether ``worker`` still holds its lease and it is not over.

    One light query, for a step's later transactions: the conversation, owner and
    model config loaded by the claim are kept. Call inside ``transaction.atomic``.
    """
    row = (
        Run.objects.select_for_update(no_key=True)
        .filter(pk=run.pk)
        .values_list("status", "lease_owner", "lease_expires_at", "cancel_requested")
        .first()
    )
    if row is None:
        return False
    run.status, run.lease_owner, run.lease_expires_at, run.cancel_requested = row
    return run.lease_owner == worker and not run.is_terminal


def run_lease_release(*, run: Run) -> None:
    """Give up the caller's lease on locked ``run`` without changing its status."""
    _write(run, run.status, {"lease_owner": "", "lease_expires_at": None})


def run_lease_renew(*, run_id: int, worker: str) -> bool:
    """The heartbeat of a worker advancing run ``run_id``: its lease runs
    ``TOLLGATE_RUN_LEASE_SECONDS`` from now again. Returns whether ``worker`` still
    held it (a lease lost meanwhile is not renewed: the owner is part of the
    ``UPDATE``'s condition). One statement, no lock held."""
    renewed = Run.objects.filter(pk=run_id, lease_owner=worker).update(
        lease_expires_at=lease_until()
    )
    return bool(renewed)


def run_control(*, run_id: int) -> tuple[str, bool]:
    """``(lease_owner, cancel_requested)`` of run ``run_id`` (``("", False)`` when it is
    gone): whether a streaming worker still holds it, and whether Stop was pressed."""
    row = Run.objects.filter(pk=run_id).values_list("lease_owner", "cancel_requested")
    return next(iter(row), ("", False))


def run_cancel_request(*, run: Run, actor: Any) -> bool:
    """Flag locked ``run`` to stop (Stop was pressed) and audit ``run.cancel_requested``.

    Returns whether a worker holds a live lease on it: that worker stops at its
    next save of the reply; otherwise the caller stops the run now
    (``toolphase.run_stop``). Raises ``IllegalTransition`` for a finished run.
    """
    if run.is_terminal:
        raise IllegalTransition(f"Run {run.pk} is {run.status}: nothing to stop.")
    _write(run, run.status, {"cancel_requested": True})
    audit_record(action="run.cancel_requested", actor=actor, target_type="run", target_id=run.pk)
    return run_lease_is_live(run)


def runs_recover_stale(*, grace_seconds: int = 30) -> list[int]:
    """Have workers take the runs whose worker stopped: a lease expired in a state
    with work to do, or queued ``grace_seconds`` (seconds) with no lease (its
    dispatch was lost). Returns the run ids (at most 500 per call).

    ``awaiting_approval`` runs wait for people; their decisions move them on. An
    ``awaiting_parts`` run whose parts have all ended (for ``grace_seconds``) is sent
    :data:`run_part_ended` again, for its last part: the receiver that should have
    moved it on went with its process.
    """
    now = timezone.now()
    ids = list(
        Run.objects.filter(status__in=ADVANCEABLE)
        .filter(
            Q(lease_expires_at__lt=now)
            | Q(
                lease_expires_at__isnull=True, updated_at__lt=now - timedelta(seconds=grace_seconds)
            )
        )
        .values_list("pk", flat=True)[:500]
    )
    for run_id in ids:
        events.run_status_changed(run_id=run_id)  # "Resuming…" until a worker has it
        run_step_due.send(sender=Run, run_id=run_id)
    waiting = (
        Run.objects.filter(
            status=S.AWAITING_PARTS, updated_at__lt=now - timedelta(seconds=grace_seconds)
        )
        .exclude(parts__status__in=set(S.values) - Run.TERMINAL)
        .values_list("pk", "kind")[:500]
    )
    for orchestrator_id, kind in waiting:
        part_id = (
            Run.objects.filter(orchestrator_id=orchestrator_id)
            .order_by("-position", "-pk")
            .values_list("pk", flat=True)
            .first()
        )
        if part_id is not None:
            run_part_ended.send(
                sender=Run, orchestrator_id=orchestrator_id, kind=kind, part_id=part_id
            )
            ids.append(orchestrator_id)
    return ids
