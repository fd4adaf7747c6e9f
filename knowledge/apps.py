from __future__ import annotations

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    """Uploaded files, collections, chunks, embeddings and search (below conversations).

    ``ready`` imports ``knowledge.tool``, which registers the read-only
    ``knowledge.search`` tool in ``tools.registry`` (and ``knowledge.memory`` the
    ``memory.recall`` tool) (its ``Tool`` row is written by
    ``tools_sync`` after ``migrate``, like the built-ins'), connects this app's
    dispatcher to ``signals.document_ingest_due``, and adds its section to ``/healthz``.
    """

    name = "knowledge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: these modules import models, which the app registry
        # allows only once it is ready. Importing the tool registers it.
        import knowledge.memory
        import knowledge.tool  # noqa: F401
        from knowledge import dispatch, selectors
        from knowledge.models import Document
        from knowledge.signals import document_ingest_due
        from project.health import health_sections

        document_ingest_due.connect(
            dispatch.document_ingest_due_received, sender=Document, dispatch_uid="knowledge"
        )
        health_sections.connect(selectors.healthz_knowledge, dispatch_uid="knowledge")
