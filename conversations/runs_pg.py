"""A run's hot transactions on PostgreSQL, in few round trips.

A run starts with ``message.send`` (``services.message_send``), and every model
call is bracketed by two transactions (``conversations.engine``): the claim
(lease, history, budget hold, assistant message) and the stored answer
(message, run, usage, audit). Through the ORM they took ten, ten and fifteen
round trips and most of the time before the first token and of the engine's
time per step (``bench/ttft.py``, ``bench/loop.py``). Here the common case of
each is written by hand and pipelined (``project.pgsql``):

- :func:`send_lock` and :func:`send_insert`: the conversation locked and checked
  (``BEGIN`` in the same round trip), then the user message, the run and the
  conversation's title written by one statement;
- :func:`claim`: ``BEGIN``, the lease taken and the step's message written by
  one statement that returns the run's rows, and the history read, in one
  round trip;
- :func:`store_text_steps`: ``BEGIN``, the run locked, the message written and
  the run completed, in the round trip that also settles the call's usage and
  takes the audit's next sequence number (``engine._store_text_pg``);
- :func:`persist`: a streaming reply's text saved and its run's state read.

``claim`` and ``store_text_steps`` return ``None`` when their case is not the common
one (the run is not ready, the lease was lost): the engine then takes its ORM
path, which handles and words every case (after ``store_text_steps``, and after a
refusal following a claim, once it has rolled the transaction back). The
statements test exactly the conditions the ORM path tests, so the two agree on
what happens.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NamedTuple, cast

from psycopg.types.json import Jsonb

from accounts.models import User
from conversations.models import Conversation, Message, ModelConfig, Run
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
# steps left; then what engine._prepare does (the step's assistant message,
# created, or reset on a replay), and the rows the step reads. RETURNING sees
# the new row; the CTE "old" keeps the old status.
_CLAIM = """
WITH old AS (
    SELECT id, status FROM conversations_run WHERE id = %(run)s FOR NO KEY UPDATE
), claimed AS (
    UPDATE conversations_run AS r SET
        status = %(calling)s,
        step = CASE WHEN old.status = %(queued)s THEN r.step + 1 ELSE r.step END,
        started_at = COALESCE(r.started_at, %(now)s),
        lease_owner = %(worker)s,
        lease_expires_at = %(until)s,
        updated_at = %(now)s
    FROM old
    WHERE r.id = old.id
      AND old.status IN (%(queued)s, %(calling)s)
      AND NOT r.cancel_requested
      AND (r.lease_expires_at IS NULL OR r.lease_expires_at <= %(now)s)
      AND (old.status = %(calling)s OR r.step < r.max_steps)
    RETURNING r.*
), message AS (
    INSERT INTO conversations_message AS m (
        conversation_id, run_id, role, status, content, tool_calls, tool_call_id, model,
        run_step, metadata, created_at
    )
    SELECT r.conversation_id, r.id, %(assistant)s, %(streaming)s, '', NULL, '',
           mc.litellm_model, r.step, '{{}}'::jsonb, %(now)s
    FROM claimed r
    JOIN conversations_conversation c ON c.id = r.conversation_id
    JOIN conversations_modelconfig mc ON mc.id = c.model_config_id
    ON CONFLICT (run_id, run_step) WHERE role = 'assistant'  -- the unique index's own words
    DO UPDATE SET content = '', tool_calls = NULL, status = %(streaming)s
    RETURNING {message_m}, m.xmax = 0 AS inserted
)
SELECT {run}, {conversation}, {config}, {owner}, {message}, message.inserted
FROM claimed r
JOIN conversations_conversation c ON c.id = r.conversation_id
JOIN conversations_modelconfig mc ON mc.id = c.model_config_id
JOIN accounts_user u ON u.id = c.owner_id
CROSS JOIN message
"""

_HISTORY = """
SELECT m.id, m.role, m.content, m.tool_calls::text, m.tool_call_id
FROM conversations_message m
WHERE m.conversation_id = (SELECT conversation_id FROM conversations_run WHERE id = %(run)s)
  AND m.status = ANY(%(statuses)s)
ORDER BY m.id
"""

#: The rows _CLAIM returns, in order: (placeholder, model, table alias).
_RELATED = (
    ("run", Run, "r"),
    ("conversation", Conversation, "c"),
    ("config", ModelConfig, "mc"),
    ("owner", User, "u"),
    ("message", Message, "message"),
)


@functools.cache
def _claim_sql() -> str:
    lists = {name: pgsql.select_list(model, alias) for name, model, alias in _RELATED}
    return _CLAIM.format(message_m=pgsql.select_list(Message, "m"), **lists)  # column names


class Claimed(NamedTuple):
    """What :func:`claim` took: the run (its conversation, model and owner loaded),
    the step's assistant message and whether it is new, and the history rows."""

    run: Run
    message: Message
    message_created: bool
    history: list[HistoryRow]


def claim(*, run_id: int, worker: str, now: datetime, until: datetime) -> Claimed | None:
    """Take run ``run_id``'s lease for a model call, create (or, on a replay,
    reset) the step's assistant message, and read the history: one round trip.

    Inside ``transaction.atomic``, whose commit then does not wait for the disk
    (``synchronous_commit`` off: see the comment in the code). The history is
    the conversation's complete and stopped messages (the new message is
    streaming, so not among them).
    Returns ``None`` and changes nothing when the run is not claimable this
    way (any other status, a live lease, Stop requested, no steps left): the
    ORM path decides.
    """
    _, claimed, rows = pgsql.pipeline(
        # What a database crash may forget of this transaction is harmless: the run is
        # queued again (recovery re-dispatches it) and the hold and the empty message
        # go with it, as budgets' own holds do; the stored answer commits durably. The
        # same holds when the ORM claim goes on in this transaction (a tool phase's
        # lease, or a run it ends: Stop, no steps left), which recovery redoes.
        ("SET LOCAL synchronous_commit TO OFF", {}),
        (
            _claim_sql(),
            {
                "run": run_id,
                "worker": worker,
                "now": now,
                "until": until,
                "queued": S.QUEUED.value,
                "calling": S.CALLING_LLM.value,
                "assistant": Message.Role.ASSISTANT.value,
                "streaming": Message.Status.STREAMING.value,
            },
        ),
        (_HISTORY, {"run": run_id, "statuses": list(HISTORY_STATUSES)}),
    )
    if not claimed:
        return None
    objects, (created,) = pgsql.instances(claimed[0], *(model for _, model, _ in _RELATED))
    # ``instances`` builds one instance of each model passed, in order (``_RELATED``'s).
    run, conversation, config, owner, message = cast(
        "tuple[Run, Conversation, ModelConfig, User, Message]", objects
    )
    conversation.model_config = config
    conversation.owner = owner
    run.conversation = conversation
    history = [
        HistoryRow(pk, role, content, json.loads(calls) if calls else None, call_id)
        for pk, role, content, calls, call_id in rows
    ]
    return Claimed(run=run, message=message, message_created=created, history=history)


# The stored answer of a text reply: the run locked and checked, the message
# finished, the run completed with this step's context note merged into its
# metadata (engine._store_answer's ORM path does the same in Python).
_LOCK_RUN = """
SELECT r.lease_owner, r.status, r.conversation_id, c.owner_id
FROM conversations_run r JOIN conversations_conversation c ON c.id = r.conversation_id
WHERE r.id = %(run)s FOR NO KEY UPDATE OF r
"""

_FINISH_MESSAGE = """
UPDATE conversations_message AS m SET
    content = %(content)s, tool_calls = NULL, status = %(complete)s,
    model = COALESCE(NULLIF(%(model)s, ''), model),
    prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
    cost_usd = %(cost)s, latency_ms = %(latency_ms)s, metadata = metadata || %(metadata)s
WHERE id = %(message)s AND run_id = %(run)s
RETURNING {message}
"""

_COMPLETE_RUN = """
UPDATE conversations_run AS r SET
    status = %(completed)s, error = '', finished_at = %(now)s, updated_at = %(now)s,
    lease_owner = '', lease_expires_at = NULL,
    metadata = jsonb_set(
        metadata, '{{context}}',
        COALESCE(metadata -> 'context', '{{}}'::jsonb)
            || jsonb_build_object(step::text, jsonb_build_object('dropped_messages', %(dropped)s))
    ) || CASE WHEN %(dropped)s > 0 THEN jsonb_build_object(
        'context_dropped_messages',
        COALESCE((metadata ->> 'context_dropped_messages')::int, 0) + %(dropped)s
    ) ELSE '{{}}'::jsonb END
WHERE id = %(run)s AND lease_owner = %(worker)s AND status = %(calling)s
RETURNING {run}
"""


class Stored(NamedTuple):
    """What :func:`store_text_steps` wrote: the message and the run as they now are, and
    the conversation's owner."""

    message: Message
    run: Run
    owner_id: int


@functools.cache
def _store_sql() -> tuple[str, str]:
    return (
        _FINISH_MESSAGE.format(message=pgsql.select_list(Message, "m")),
        _COMPLETE_RUN.format(run=pgsql.select_list(Run, "r")),
    )  # column names only


def store_text_steps(
    *,
    run_id: int,
    worker: str,
    message_id: int,
    now: datetime,
    fields: dict[str, Any],
    metadata: dict[str, Any],
    dropped: int,
) -> pgsql.Steps[Stored | None]:
    """Finish a text answer and complete its run: ``pgsql`` steps of one round
    (``pgsql.gather`` shares it with the ledger and the audit), inside
    ``transaction.atomic``.

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
    finish_message, complete_run = _store_sql()
    locked, message, run = yield [
        (_LOCK_RUN, params),
        (finish_message, params),
        (complete_run, params),
    ]
    if not (locked and message and run) or locked[0][0] != worker:
        return None
    return Stored(
        message=cast(Message, pgsql.instance(Message, message[0])),
        run=cast(Run, pgsql.instance(Run, run[0])),
        owner_id=locked[0][3],
    )


# message.send: the conversation, its model and whether a reply is still being
# written, locked as services._own_conversation locks it.
_SEND_LOCK = """
SELECT {conversation}, {config},
       EXISTS (SELECT 1 FROM conversations_run r
               WHERE r.conversation_id = c.id AND r.status <> ALL(%(terminal)s))
FROM conversations_conversation c
JOIN conversations_modelconfig mc ON mc.id = c.model_config_id
WHERE c.id = %(conversation)s AND c.owner_id = %(owner)s
FOR NO KEY UPDATE OF c
"""

_SEND_INSERT = """
WITH m AS (
    INSERT INTO conversations_message AS new_m ({message_columns}) VALUES ({message_values})
    RETURNING {message_m}
), r AS (
    INSERT INTO conversations_run AS new_r ({run_columns}) SELECT {run_values} FROM m
    RETURNING {run_r}
), c AS (
    UPDATE conversations_conversation SET title = %(title)s, updated_at = %(now)s
    WHERE id = %(conversation)s
)
SELECT {message}, {run} FROM m, r
"""


@functools.cache
def _send_sql() -> tuple[str, str]:
    lock = _SEND_LOCK.format(
        conversation=pgsql.select_list(Conversation, "c"),
        config=pgsql.select_list(ModelConfig, "mc"),
    )
    message_columns, message_values = pgsql.insert_sql(Message, "m")
    run_columns, run_values = pgsql.insert_sql(Run, "r", {"user_message_id": "m.id"})
    insert = _SEND_INSERT.format(
        message_columns=message_columns,
        message_values=message_values,
        message_m=pgsql.select_list(Message, "new_m"),
        run_columns=run_columns,
        run_values=run_values,
        run_r=pgsql.select_list(Run, "new_r"),
        message=pgsql.select_list(Message, "m"),
        run=pgsql.select_list(Run, "r"),
    )
    return lock, insert  # column names and placeholders only


def send_lock(*, conversation_id: int, owner_id: int) -> tuple[Conversation, bool] | None:
    """Lock conversation ``conversation_id`` of ``owner_id`` (its model loaded) and
    say whether one of its runs is still going: one round trip with ``BEGIN``.

    Inside ``transaction.atomic``. ``None`` when there is no such conversation.
    """
    lock, _ = _send_sql()
    [rows] = pgsql.pipeline(
        (
            lock,
            {
                "conversation": conversation_id,
                "owner": owner_id,
                "terminal": sorted(Run.TERMINAL),
            },
        )
    )
    if not rows:
        return None
    objects, (in_progress,) = pgsql.instances(rows[0], Conversation, ModelConfig)
    conversation, config = cast("tuple[Conversation, ModelConfig]", objects)
    conversation.model_config = config
    return conversation, bool(in_progress)


def send_insert_steps(
    *, conversation: Conversation, message: Message, run: Run, title: str, now: datetime
) -> pgsql.Steps[tuple[Message, Run]]:
    """Insert the user ``message`` and its ``run`` (unsaved instances; the run's
    ``user_message`` is the new message) and set the conversation's ``title`` and
    ``updated_at``: one statement, as ``pgsql`` steps (one round, to share with
    the audit's). Returns both as stored."""
    _, insert = _send_sql()
    params = {
        **pgsql.insert_params(message, "m"),
        **pgsql.insert_params(run, "r"),
        "title": title,
        "now": now,
        "conversation": conversation.pk,
    }
    ([row],) = yield [(insert, params)]
    objects, _ = pgsql.instances(row, Message, Run)
    message, run = cast("tuple[Message, Run]", objects)  # the models passed, in order
    return message, run


# While a reply streams (engine._persist_partial): the text so far, and the
# run's lease and Stop flag read back, in one round trip.
_PERSIST_TEXT = """
UPDATE conversations_message SET content = %(text)s
WHERE id = %(message)s AND status = %(streaming)s
"""
_RENEW_LEASE = """
UPDATE conversations_run SET lease_expires_at = %(until)s
WHERE id = %(run)s AND lease_owner = %(worker)s
"""
_RUN_STATE = "SELECT lease_owner, cancel_requested FROM conversations_run WHERE id = %(run)s"


def persist(
    *, run_id: int, worker: str, message_id: int, text: str, renew_until: datetime | None
) -> tuple[str, bool] | None:
    """Save a streaming message's text, renew the lease when ``renew_until`` is given,
    and read the run's ``(lease_owner, cancel_requested)``: one round trip, each
    statement in its own transaction (autocommit). ``None``: no such run."""
    params = {
        "run": run_id,
        "worker": worker,
        "message": message_id,
        "text": text,
        "until": renew_until,
        "streaming": Message.Status.STREAMING.value,
    }
    statements = [(_PERSIST_TEXT, params), (_RUN_STATE, params)]
    if renew_until is not None:
        statements.insert(1, (_RENEW_LEASE, params))
    state = pgsql.pipeline(*statements)[-1]
    return (state[0][0], state[0][1]) if state else None
