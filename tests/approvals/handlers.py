"""A receiver of ``approvals.signals.approval_decided`` for the approvals tests, in
place of the real one (``conversations.toolphase.approval_decided``): counts calls in
memory and in the invocation row, and settles the invocation as the engine would."""

from __future__ import annotations

import threading
from typing import Any

from django.db.models import F

from tools.models import ToolInvocation

CALLS: list[tuple[int, str]] = []
_lock = threading.Lock()


def record_decided(*, approval: Any, **_signal: Any) -> None:
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


def exploding(**_signal: Any) -> None:
    raise RuntimeError("receiver failed")
