"""Loop events: a small, stable set of events from the run core that other code
subscribes to (metrics, tracing, an extension), instead of patching the loop.

Each event is sent once, after the transaction that made it true has committed
(so a subscriber reads the state it describes), in the order the run core made
them. Subscribe with :func:`loop_event_subscribe` (in an ``AppConfig.ready``);
a subscriber that raises is logged and does not disturb the run or the other
subscribers.

Events and their ``data`` (``docs/runs.md``, "Loop events", says the same):

============================  ===============================================================
``run.started``               ``kind`` (answer, compare, chain), ``model`` (ModelConfig name)
``step.started``              (the step number is the event's ``step``)
``step.finished``             ``outcome`` (``answer``, ``tool_calls``, ``reask``: asked again
                              by a structured-output guardrail, ``failed``, ``stopped``),
                              ``tool_calls`` (int), ``prompt_tokens``, ``completion_tokens``
                              (int tokens), ``cost_usd`` (str USD or ``None``),
                              ``latency_ms``, ``ttft_ms`` (int ms or ``None``)
``tool_call.gated``           ``tool_call_id``, ``tool``, ``decision`` (allow, ask, deny)
``tool_call.decided``         ``tool_call_id``, ``tool``, ``decision`` (approved, denied,
                              expired), ``actor_id`` (int or ``None``: expiry)
``tool_call.executed``        ``tool_call_id``, ``tool``, ``status`` (succeeded, failed),
                              ``duration_ms`` (int ms or ``None``)
``agent.handoff``             ``tool_call_id``, ``from_agent``, ``to_agent`` (agent names),
                              ``mode`` (full, no_tools, summary): an approved handoff
                              switched the run to another agent (``conversations.handoffs``)
``agent.subrun_started``      ``tool_call_id``, ``agent`` (the called agent's name),
                              ``sub_run_id`` (int): an approved call of an agent started its
                              sub-run (``conversations.subagents``)
``run.finished``              ``status`` (completed, failed, cancelled), ``steps`` (int),
                              ``error`` (str, empty unless failed), ``created_at`` (ISO
                              time the run was created: its wait for a worker included)
============================  ===============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from conversations.models import Conversation, Run

logger = logging.getLogger(__name__)

#: The events, in the order one step of a run with a tool call makes them.
LOOP_EVENTS: tuple[str, ...] = (
    "run.started",
    "step.started",
    "step.finished",
    "tool_call.gated",
    "tool_call.decided",
    "tool_call.executed",
    "agent.handoff",
    "agent.subrun_started",
    "run.finished",
)


@dataclass(frozen=True)
class LoopEvent:
    """One event of the run core: ``name`` (one of :data:`LOOP_EVENTS`), the run's
    ``run_id``, ``conversation_id`` and ``user_id``, ``step`` (the model call it
    belongs to: the run's step counter, 1 for the first call), ``at`` (when it
    happened, aware datetime) and ``data`` (the event's fields, above;
    JSON-serialisable)."""

    name: str
    run_id: int
    conversation_id: int
    user_id: int | None
    step: int
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


#: Sent with ``event`` (a :class:`LoopEvent`); use :func:`loop_event_subscribe`.
loop_event = Signal()


class PendingEvent:
    """An event waiting for its transaction to commit; :meth:`cancel` withdraws it
    (what it announced did not happen after all, such as an answer discarded)."""

    def __init__(self, event: LoopEvent) -> None:
        self.event = event
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def send(self) -> None:
        if not self.cancelled:
            _send(self.event)


def loop_event_emit(
    *, name: str, run_id: int, conversation_id: int, user_id: int | None, step: int, **data: Any
) -> PendingEvent:
    """Send the event ``name`` once the current transaction commits (at once outside
    one); returns it pending. ``ValueError`` for a name not in :data:`LOOP_EVENTS`."""
    if name not in LOOP_EVENTS:
        raise ValueError(f"Unknown loop event {name!r}.")
    pending = PendingEvent(
        LoopEvent(name, run_id, conversation_id, user_id, step, timezone.now(), data)
    )
    transaction.on_commit(pending.send)
    return pending


def loop_event_of_run(run: Run, name: str, *, step: int | None = None, **data: Any) -> PendingEvent:
    """:func:`loop_event_emit` for ``run`` (a ``Run``): its ids, and ``step`` (default:
    the run's). The owner's id comes from the run's loaded conversation, else from
    one query."""
    if Run.conversation.is_cached(run):
        user_id: int | None = run.conversation.owner_id
    else:
        user_id = (
            Conversation.objects.filter(pk=run.conversation_id)
            .values_list("owner_id", flat=True)
            .first()
        )
    return loop_event_emit(
        name=name,
        run_id=run.pk,
        conversation_id=run.conversation_id,
        user_id=user_id,
        step=run.step if step is None else step,
        **data,
    )


def _send(event: LoopEvent) -> None:
    for receiver, error in loop_event.send_robust(sender=LoopEvent, event=event):
        if isinstance(error, Exception):
            logger.error(
                "loop event %s of run %s: subscriber %r failed",
                event.name,
                event.run_id,
                receiver,
                exc_info=error,
            )


def loop_event_subscribe(callback: Callable[[LoopEvent], None]) -> Callable[[], None]:
    """Call ``callback(event)`` for every loop event from now on; returns a function
    that unsubscribes it. Keeps a strong reference to ``callback``."""

    def receiver(*, event: LoopEvent, **_signal: Any) -> None:
        callback(event)

    loop_event.connect(receiver, weak=False)

    def unsubscribe() -> None:
        loop_event.disconnect(receiver)

    return unsubscribe
