"""Signals of the knowledge app."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent on commit when a document waits for ingestion (uploaded, or retried), with
#: ``document_id``. ``knowledge.dispatch`` receives it (connected in
#: ``KnowledgeConfig.ready``), so the services need not import their dispatcher.
document_ingest_due = Signal()

#: Asked for the deployment's embedding model when text is to be embedded (a chunk at
#: ingestion, a query at search). Sent with ``sender=None``; a receiver returns an
#: ``knowledge.embeddings.Embedder`` or ``None`` (no model of its own configured);
#: when none returns one, the offline model is used. ``conversations`` answers
#: (``ModelConfig`` of kind embedding, through litellm), connected in its
#: ``AppConfig.ready``, so this app need not import it. A receiver raises
#: ``EmbeddingFailed`` when the configured model cannot be used.
embedder_query = Signal()
