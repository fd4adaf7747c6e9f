"""``manage.py knowledge_reembed``: embed again, with the deployment's embedding model
(``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL``), every chunk another model embedded, so
search by meaning finds them again (it never compares vectors of two models)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from knowledge.embeddings import embedder_current
from knowledge.errors import EmbeddingFailed
from knowledge.models import Chunk
from knowledge.services import chunks_reembed


class Command(BaseCommand):
    help = "Re-embed the chunks that another embedding model than the deployment's embedded."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            name = embedder_current().name
            document_ids = list(
                Chunk.objects.exclude(embedding_model=name)
                .values_list("document_id", flat=True)
                .distinct()
                .order_by("document_id")
            )
            total = 0
            for document_id in document_ids:
                total += chunks_reembed(document_id=document_id)
        except EmbeddingFailed as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"Re-embedded {total} chunks of {len(document_ids)} documents with {name}."
        )
