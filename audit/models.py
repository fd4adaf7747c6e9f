"""The append-only, hash-chained audit trail: its events and the chain's head.

The bottom app layer: nothing here imports or points at another Tollgate
app. The actor is a plain user id, not a foreign key (see ``AuditEvent``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models


class AuditAppendOnlyError(Exception):
    """An audit event was about to be changed or deleted; the trail is append-only."""


class AuditEventQuerySet(models.QuerySet):
    """A queryset that refuses every write but the insert of new, chained events.

    ``update``, ``delete`` and ``bulk_update`` raise ``AuditAppendOnlyError``, and
    so does ``bulk_create`` of rows without their chain hashes; new events are
    written by ``audit.services.audit_record`` only, which chains them.
    """

    def update(self, **kwargs: Any) -> int:
        raise AuditAppendOnlyError("Audit events cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditAppendOnlyError("Audit events cannot be deleted.")

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        raise AuditAppendOnlyError("Audit events cannot be updated.")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list:
        """Insert new, chained events only (``audit_record`` appends a transaction's
        events in one statement); raises ``AuditAppendOnlyError`` for anything else."""
        objs = list(objs)
        conflicts = kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts")
        if conflicts or any(not e._state.adding or not e.hash or not e.prev_hash for e in objs):
            raise AuditAppendOnlyError("Write audit events with audit_record().")
        return super().bulk_create(objs, *args, **kwargs)

    def _raw_delete(self, using: str | None) -> int:
        raise AuditAppendOnlyError("Audit events cannot be deleted.")

    delete.alters_data = True  # type: ignore[attr-defined]
    update.alters_data = True  # type: ignore[attr-defined]


class AuditEvent(models.Model):
    """One thing that happened, hash-chained to the event before it.

    ``hash`` is SHA-256 over the canonical JSON of (sequence, created_at,
    actor_id, action, target_type, target_id, data, ip, prev_hash); see
    ``audit.selectors.audit_event_hash``. Any edit of a stored row, or a row
    removed from the middle, breaks the chain; ``manage.py audit_verify``
    finds it.

    The actor is a plain id column (the user is ``accounts``', an app above
    this one: docs/architecture.md), so deleting a user neither rewrites
    (``SET NULL``) nor deletes (``CASCADE``) history.
    """

    sequence = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    actor_id = models.BigIntegerField(
        null=True, blank=True, db_index=True, help_text="The user who acted; none for the system."
    )
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ("-sequence",)
        indexes: ClassVar = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Insert once; refuse every later save. Raises ``AuditAppendOnlyError``."""
        if not self._state.adding or kwargs.get("force_update") or kwargs.get("update_fields"):
            raise AuditAppendOnlyError("Audit events cannot be changed once written.")
        if not self.hash or not self.prev_hash:
            raise AuditAppendOnlyError("Write audit events with audit.services.audit_record().")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Always raises ``AuditAppendOnlyError``."""
        raise AuditAppendOnlyError("Audit events cannot be deleted.")


class AuditChainHead(models.Model):
    """The single row (pk=1) that holds the newest event's sequence and hash.

    Appending locks it (``SELECT … FOR UPDATE``), which serialises writers on
    PostgreSQL; SQLite serialises writers by itself. It also lets
    ``audit_verify`` notice rows removed from the end of the chain.
    """

    last_sequence = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"audit chain head #{self.last_sequence}"
