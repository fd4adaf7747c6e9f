"""Writes: appending events to the hash-chained audit trail (every app writes through here).

Appends are serialised by a row lock on the chain head (``AuditChainHead``,
pk=1), held until the surrounding transaction ends; see ``audit_record``.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from audit.canonical import json_safe
from audit.models import AuditChainHead, AuditEvent
from audit.selectors import GENESIS_HASH, audit_event_hash

logger = logging.getLogger(__name__)


def _normalise_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        return None


def _chain_head_locked() -> tuple[int, str]:
    """Lock the chain's head row; its ``(last_sequence, last_hash)``. Creates the row
    first when there is none (the first event ever, or after a test flush)."""
    locked = AuditChainHead.objects.select_for_update().filter(pk=1)
    head = next(iter(locked.values_list("last_sequence", "last_hash")), None)
    if head is not None:
        return head
    # First event ever (or after a test flush): create the head from the last
    # event, tolerating a concurrent writer that creates it first.
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
    try:
        with transaction.atomic():
            AuditChainHead.objects.create(
                pk=1,
                last_sequence=last[0] if last else 0,
                last_hash=last[1] if last else "",
            )
    except IntegrityError:
        pass
    return next(iter(locked.values_list("last_sequence", "last_hash")))


def audit_record(
    *,
    action: str,
    actor: Any = None,
    target_type: str = "",
    target_id: str | int = "",
    data: dict | None = None,
    ip: str | None = None,
) -> AuditEvent | None:
    """Append one event to the hash-chained audit trail and return it.

    ``action``: a dotted name (``approval.decided``). ``actor``: a user, a
    user id, or ``None`` (system). ``target_type``/``target_id``: what it is about.
    ``data``: JSON-able details (dates and Decimals become strings). ``ip``:
    the client address; an unparsable one is stored as null.

    Call inside or outside a transaction: appends are serialised by a row
    lock on the chain head, held until the surrounding transaction ends, so
    concurrent writers never fork the chain. Every audited transaction
    queues on that lock: audit as the last write of a transaction (the
    services here do) and keep such transactions short, so no other lock
    is awaited while holding it. An event written inside a
    transaction that rolls back disappears with it. Raises ``ValueError``
    for NaN/infinity in ``data``.

    Inside ``audit_deferred`` the event is appended when that block ends,
    with the others recorded in it, and ``None`` is returned.
    """
    fields = _audit_fields(
        action=action, actor=actor, target_type=target_type, target_id=target_id, data=data, ip=ip
    )
    pending = _deferred.get()
    if pending is not None:
        pending.append(fields)
        return None
    (event,) = _append([fields])
    return event


#: The events ``audit_deferred`` holds in this thread (``None``: none is open).
_deferred: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "audit_deferred", default=None
)


@contextlib.contextmanager
def audit_deferred() -> Iterator[None]:
    """Hold the ``audit_record`` calls made in this block and append them when it ends.

    For a transaction that audits several times (the gate: the call recorded,
    the decision, the approval request): on PostgreSQL all its events take two
    round trips (the chain head locked for as many sequence numbers, then
    every insert and the head's move), not two each, and the head, which
    every audited transaction queues on, is locked only at the end, as
    ``audit_record`` asks. Put it inside the ``transaction.atomic`` block, around
    its writes. Nested blocks: the outermost appends.

    An exception leaving the block still appends the events, as ``audit_record``
    would have (a caller that catches it and commits keeps the trail whole),
    unless the transaction is already failing: then they go with its rollback.
    """
    if _deferred.get() is not None:
        yield
        return
    pending: list[dict[str, Any]] = []
    token = _deferred.set(pending)
    try:
        yield
    except Exception:
        if pending and not connection.needs_rollback:
            try:
                _append(pending)
            except DatabaseError:  # the transaction is aborted: it rolls back anyway
                logger.debug("deferred audit events not appended", exc_info=True)
        raise
    finally:
        _deferred.reset(token)
    if pending:
        _append(pending)


def _append(events: list[dict[str, Any]]) -> list[AuditEvent]:
    """Append events (``_audit_fields`` dicts, in order) to the chain; the saved rows."""
    # No savepoint inside a caller's transaction (two round trips per event):
    # an error here must roll the audited write back with it anyway.
    with transaction.atomic(savepoint=False):
        sequence, prev_hash = _chain_head_locked()
        saved = AuditEvent.objects.bulk_create(_chained(events, sequence, prev_hash))
        last = saved[-1]
        AuditChainHead.objects.filter(pk=1).update(last_sequence=last.sequence, last_hash=last.hash)
    return saved


def _audit_fields(
    *, action: str, actor: Any, target_type: str, target_id: str | int, data: dict | None,
    ip: str | None,
) -> dict[str, Any]:  # fmt: skip
    """An event's fields but its place in the chain (raises ``ValueError`` as ``audit_record``)."""
    return {
        "actor_id": actor if isinstance(actor, int) else getattr(actor, "pk", None),
        "action": action,
        "target_type": target_type,
        "target_id": str(target_id),
        "data": json_safe(data or {}),
        "ip": _normalise_ip(ip),
    }


def _chained(events: list[dict[str, Any]], sequence: int, prev_hash: str) -> list[AuditEvent]:
    """Unsaved events for ``events`` (``_audit_fields`` dicts, in order), each linked
    to the one before, the first after the chain's ``sequence`` and ``prev_hash``."""
    chained = []
    for fields in events:
        sequence += 1
        event = _audit_event(fields, sequence, prev_hash)
        prev_hash = event.hash
        chained.append(event)
    return chained


def _audit_event(fields: dict[str, Any], sequence: int, prev_hash: str) -> AuditEvent:
    chained = {
        "sequence": sequence,
        "created_at": timezone.now(),
        **fields,
        "prev_hash": prev_hash or GENESIS_HASH,
    }
    # The hash covers exactly the fields stored (audit_verify recomputes it).
    return AuditEvent(**chained, hash=audit_event_hash(**chained))
