"""A run step's two hot transactions on PostgreSQL, in few round trips.

Every model call is bracketed by two transactions (``conversations.engine``):
the claim (lease, history, budget hold, assistant message) and the stored
answer (message, run, usage, audit). Through the ORM they took ten and fifteen
round trips and most of the engine's time per step (``bench/loop.py``). Here
the common case of each is written by hand and pipelined (``project.pgsql``):

- :func:`claim`: ``BEGIN``, the lease taken by one ``UPDATE … RETURNING``, and
  the history read, in one round trip;
- :func:`store_text`: ``BEGIN``, the run locked, the message written and the run
  completed, in one round trip.

Each returns ``None`` when its case is not the common one (the run is not
ready, the lease was lost); the engine then rolls the transaction back and
takes its ORM path, which handles and words every case. The statements test
exactly the conditions the ORM path tests, so the two agree on what happens.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from psycopg.types.json import Jsonb

from conversations.models import Message, Run
from project import pgsql

S = Run.Status


class HistoryRow(NamedTuple):
    """One stored message as the model's history needs it (``engine.history_messages``)."""

    id: int
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str


#: Columns of ``HistoryRow``, for ``values_list`` on the ORM path.
HISTORY_FIELDS = HistoryRow._fields
#: Messages the history is built from (streaming and failed ones are left out).
HISTORY_STATUSES = (Message.Status.COMPLETE.value, Message.Status.STOPPED.value)

# The claim: what engine._claim does for a run that is queued (a new step) or
# was moved to calling_llm by its tool phase, with no live lease, no Stop and
# steps left. RETURNING sees the new row; the CTE keeps the old status.
_CLAIM = """
WITH old AS (
    SELECT id, status FROM conversations_run WHERE id = %(run)s FOR NO KEY UPDATE
)
UPDATE conversations_run AS r SET
    status = %(calling)s,
    step = CASE WHEN old.status = %(queued)s THEN r.step + 1 ELSE r.step END,
    started_at = COALESCE(r.started_at, %(now)s),
    lease_owner = %(worker)s,
    lease_expires_at = %(until)s
FROM old
WHERE r.id = old.id
  AND old.status IN (%(queued)s, %(calling)s)
  AND NOT r.cancel_requested
  AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= %(now)s)
  AND (old.status = %(calling)s OR r.step < r.max_steps)
RETURNING old.status = %(queued)s
"""

_HISTORY = """
SELECT m.id, m.role, m.content, m.tool_calls::text, m.tool_call_id
FROM conversations_message m
WHERE m.conversation_id = (SELECT conversation_id FROM conversations_run WHERE id = %(run)s)
  AND m.status = ANY(%(statuses)s)
ORDER BY m.id
"""


def claim(
    *, run_id: int, worker: str, now: datetime, until: datetime
) -> tuple[bool, list[HistoryRow]] | None:
    """Take run ``run_id``'s lease for a model call and read its history (one round trip).

    Inside ``transaction.atomic``. Returns ``(fresh, history)``: ``fresh`` is
    True when the run was queued (this call is a new step, so no assistant
    message of it exists yet); ``history`` is the conversation's complete and
    stopped messages as ``HistoryRow`` in id order. Returns ``None`` and
    changes nothing when the run is not claimable this way (any other status,
    a live lease, Stop requested, no steps left): the ORM path decides.
    """
    claimed, rows = pgsql.pipeline(
        (
            _CLAIM,
            {
                "run": run_id,
                "worker": worker,
                "now": now,
                "until": until,
                "queued": S.QUEUED.value,
                "calling": S.CALLING_LLM.value,
            },
        ),
        (_HISTORY, {"run": run_id, "statuses": list(HISTORY_STATUSES)}),
    )
    if not claimed:
        return None
    history = [
        HistoryRow(pk, role, content, json.loads(calls) if calls else None, call_id)
        for pk, role, content, calls, call_id in rows
    ]
    return bool(claimed[0][0]), history


# The stored answer of a text reply: the run locked and checked, the message
# finished, the run completed with this step's context note merged into its
# metadata (engine._store_answer's ORM path does the same in Python).
_LOCK_RUN = """
SELECT r.lease_owner, r.status, r.conversation_id, c.owner_id
FROM conversations_run r JOIN conversations_conversation c ON c.id = r.conversation_id
WHERE r.id = %(run)s FOR NO KEY UPDATE OF r
"""

_FINISH_MESSAGE = """
UPDATE conversations_message SET
    content = %(content)s, tool_calls = NULL, status = %(complete)s,
    model = COALESCE(NULLIF(%(model)s, ''), model),
    prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
    cost_usd = %(cost)s, latency_ms = %(latency_ms)s, metadata = metadata || %(metadata)s
WHERE id = %(message)s AND run_id = %(run)s
RETURNING model
"""

_COMPLETE_RUN = """
UPDATE conversations_run SET
    status = %(completed)s, error = '', finished_at = %(now)s,
    lease_owner = '', lease_expires_at = NULL,
    metadata = jsonb_set(
        metadata, '{context}',
        COALESCE(metadata -> 'context', '{}'::jsonb)
            || jsonb_build_object(step::text, jsonb_build_object('dropped_messages', %(dropped)s))
    ) || CASE WHEN %(dropped)s > 0 THEN jsonb_build_object(
        'context_dropped_messages',
        COALESCE((metadata ->> 'context_dropped_messages')::int, 0) + %(dropped)s
    ) ELSE '{}'::jsonb END
WHERE id = %(run)s AND lease_owner = %(worker)s AND status = %(calling)s
RETURNING step
"""


class Stored(NamedTuple):
    """What :func:`store_text` wrote: the message's model, the run's step, the owner."""

    model: str
    step: int
    conversation_id: int
    owner_id: int


def store_text(
    *,
    run_id: int,
    worker: str,
    message_id: int,
    now: datetime,
    fields: dict[str, Any],
    metadata: dict[str, Any],
    dropped: int,
) -> Stored | None:
    """Finish a text answer and complete its run (one round trip), inside ``transaction.atomic``.

    ``fields``: the message's ``content``, ``model``, ``prompt_tokens``,
    ``completion_tokens``, ``cost_usd`` (USD), ``latency_ms``; ``metadata`` is
    merged into the message's. ``dropped``: messages the context fit left out.
    Returns ``None`` when ``worker`` no longer holds a live lease on the run
    in ``calling_llm``: the statements may have written, so the caller must
    roll back (and let the ORM path discard the result).
    """
    params = {
        "run": run_id,
        "worker": worker,
        "message": message_id,
        "now": now,
        "content": fields["content"],
        "model": fields["model"],
        "prompt_tokens": fields["prompt_tokens"],
        "completion_tokens": fields["completion_tokens"],
        "cost": fields["cost_usd"],
        "latency_ms": fields["latency_ms"],
        "metadata": Jsonb(metadata),
        "dropped": dropped,
        "complete": Message.Status.COMPLETE.value,
        "completed": S.COMPLETED.value,
        "calling": S.CALLING_LLM.value,
    }
    locked, message, run = pgsql.pipeline(
        (_LOCK_RUN, params), (_FINISH_MESSAGE, params), (_COMPLETE_RUN, params)
    )
    if not (locked and message and run) or locked[0][0] != worker:
        return None
    return Stored(
        model=message[0][0], step=run[0][0], conversation_id=locked[0][2], owner_id=locked[0][3]
    )
