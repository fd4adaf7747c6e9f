"""Reads: the audit trail's event hash and the verification of the whole chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audit.canonical import canonical_json, sha256_hex
from audit.models import AuditChainHead, AuditEvent

#: ``prev_hash`` of the first event of the chain.
GENESIS_HASH = "0" * 64


def audit_event_hash(
    *,
    sequence: int,
    created_at: datetime,
    actor_id: int | None,
    action: str,
    target_type: str,
    target_id: str,
    data: Any,
    ip: str | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON of one event's fields and the previous hash."""
    payload = {
        "sequence": sequence,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "actor_id": actor_id,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "data": data,
        "ip": ip,
        "prev_hash": prev_hash,
    }
    return sha256_hex(canonical_json(payload))


@dataclass(frozen=True)
class AuditVerifyResult:
    """Outcome of ``audit_verify``: ``ok``, rows ``checked``, the first broken row's id and why."""

    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str


def audit_verify(*, chunk_size: int = 2000) -> AuditVerifyResult:
    """Walk the whole chain in sequence order and recompute every hash.

    Checks, for each row: the sequence follows the previous one (no gap),
    ``prev_hash`` equals the previous row's ``hash`` (nothing removed or
    inserted), and ``hash`` matches the row's content (nothing edited). Then
    the last row must be the one the chain head records (nothing removed
    from the end). Only rows up to the head read at the start are checked,
    so events appended meanwhile do not count as breakage.
    """
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None and AuditEvent.objects.exists():
        return AuditVerifyResult(False, 0, None, "the chain head row is missing")
    head_sequence = head.last_sequence if head else 0
    rows = (
        AuditEvent.objects.filter(sequence__lte=head_sequence)
        .order_by("sequence")
        .values_list(
            "id",
            "sequence",
            "created_at",
            "actor_id",
            "action",
            "target_type",
            "target_id",
            "data",
            "ip",
            "prev_hash",
            "hash",
        )
    )
    checked = 0
    previous_sequence = 0
    previous_hash = GENESIS_HASH
    for row in rows.iterator(chunk_size=chunk_size):
        pk, sequence, created_at, actor_id, action, ttype, tid, data, ip, prev_hash, stored = row
        if sequence != previous_sequence + 1:
            return AuditVerifyResult(
                False,
                checked,
                pk,
                f"sequence {sequence} follows {previous_sequence}: events are missing",
            )
        if prev_hash != previous_hash:
            return AuditVerifyResult(
                False,
                checked,
                pk,
                "prev_hash does not match the previous event's hash: an event was removed, "
                "inserted or edited",
            )
        expected = audit_event_hash(
            sequence=sequence,
            created_at=created_at,
            actor_id=actor_id,
            action=action,
            target_type=ttype,
            target_id=tid,
            data=data,
            ip=ip,
            prev_hash=prev_hash,
        )
        if expected != stored:
            return AuditVerifyResult(
                False, checked, pk, "hash does not match the event's content: the row was edited"
            )
        checked += 1
        previous_sequence = sequence
        previous_hash = stored
    if head is not None and (
        previous_sequence != head_sequence or previous_hash != (head.last_hash or GENESIS_HASH)
    ):
        return AuditVerifyResult(
            False,
            checked,
            None,
            f"the chain head records event {head_sequence} but the chain ends at "
            f"{previous_sequence}: events were removed from the end",
        )
    return AuditVerifyResult(True, checked, None, "")
