"""Celery tasks of the knowledge app: ids in, one service call."""

from __future__ import annotations

from celery import shared_task

from knowledge.services import document_ingest


@shared_task(name="knowledge.tasks.document_ingest", acks_late=True, ignore_result=True)
def document_ingest_task(document_id: int) -> None:
    """Ingest document ``document_id`` (a no-op unless it is pending)."""
    document_ingest(document_id=document_id)
