"""Signals of the knowledge app."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent on commit when a document waits for ingestion (uploaded, or retried), with
#: ``document_id``. ``knowledge.dispatch`` receives it (connected in
#: ``KnowledgeConfig.ready``), so the services need not import their dispatcher.
document_ingest_due = Signal()
