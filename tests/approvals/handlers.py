"""A decided-handler for tests: counts calls in memory and in the invocation row."""

from __future__ import annotations

import threading

from django.db.models import F

from tools.models import ToolInvocation

CALLS: list[tuple[int, str]] = []
_lock = threading.Lock()


def record_decided(approval) -> None:
    with _lock:
        CALLS.append((approval.pk, approval.status))
    # Like the conversations engine would: settle the invocation in the same transaction.
    status = {
        "approved": ToolInvocation.Status.APPROVED,
        "denied": ToolInvocation.Status.DENIED,
        "expired": ToolInvocation.Status.EXPIRED,
    }[approval.status]
    ToolInvocation.objects.filter(pk=approval.invocation_id).update(
        attempts=F("attempts") + 1,
        status=status,
        arguments_executed=approval.effective_arguments,
    )


def exploding(approval) -> None:
    raise RuntimeError("handler failed")
