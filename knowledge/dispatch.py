"""Who ingests a document: Celery, or a thread of this process in the embedded mode.

The same choice as ``conversations.dispatch`` makes for run steps
(``settings.TOLLGATE_DISPATCHER``), made here for this app's own task, so this
app does not import the one above it.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.db import connections

from knowledge.services import document_ingest
from knowledge.tasks import document_ingest_task


def document_ingest_due_received(*, document_id: int, **_signal: Any) -> None:
    """Receiver of ``signals.document_ingest_due`` (sent on commit)."""
    if settings.TOLLGATE_DISPATCHER == "celery":
        document_ingest_task.delay(document_id)
        return
    threading.Thread(
        target=_ingest_in_thread, args=(document_id,), name=f"ingest-{document_id}", daemon=True
    ).start()


def _ingest_in_thread(document_id: int) -> None:
    try:
        document_ingest(document_id=document_id)
    finally:
        connections.close_all()
