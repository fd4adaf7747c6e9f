"""Writes of the knowledge app: uploads, ingestion, retries, deletes, collections.

An upload is checked (size per file, the owner's storage quota, the type read
from its content) before anything is stored; the row and the file are written
together, and a file written for a row that is then rolled back is deleted, so a
refused or failed upload leaves nothing behind. Ingestion (:func:`document_ingest`)
runs outside the request (``knowledge.dispatch``), writes its progress to the
document as it goes, and stores why it failed; a failed document may be retried.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.postgres.search import SearchVector
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from audit.services import audit_record
from knowledge.chunking import chunks_make
from knowledge.embeddings import embedder_current, vector_bytes
from knowledge.errors import (
    DocumentNotFound,
    DocumentOverLimit,
    KnowledgeError,
)
from knowledge.extraction import content_type_detect, sections_extract
from knowledge.models import Chunk, Collection, Document
from knowledge.signals import document_ingest_due

logger = logging.getLogger(__name__)

Status = Document.Status

#: Chunks embedded per call, and between two progress writes.
EMBED_BATCH = 64


def _megabytes(count: int) -> str:
    return f"{count / 1_048_576:.1f} MB"


def _ingest_due(document_id: int) -> None:
    transaction.on_commit(
        lambda: document_ingest_due.send(sender=Document, document_id=document_id)
    )


def document_upload(
    *, user: Any, upload: UploadedFile, collection_id: int | None = None
) -> Document:
    """Store ``upload`` as a pending document of ``user`` (in their collection
    ``collection_id`` when given) and have it ingested after commit.

    Raises, with nothing stored, ``DocumentOverLimit`` when the file is larger than
    ``TOLLGATE_KNOWLEDGE_MAX_FILE_BYTES`` or would take the user past
    ``TOLLGATE_KNOWLEDGE_QUOTA_BYTES`` (their documents' sizes added up),
    ``DocumentRefused`` when it is of a type that cannot be read; ``DocumentNotFound``
    for a collection that is not theirs. The user's row is locked while the quota
    is checked, so two uploads at once cannot both pass it.
    """
    limit = settings.TOLLGATE_KNOWLEDGE_MAX_FILE_BYTES
    size = upload.size or 0
    if size > limit:
        raise DocumentOverLimit(
            f"{upload.name} is {_megabytes(size)}; the limit per file is {_megabytes(limit)}."
        )
    data = upload.read(limit + 1)
    if len(data) > limit:  # the declared size was wrong
        raise DocumentOverLimit(
            f"{upload.name} is larger than the limit per file, {_megabytes(limit)}."
        )
    content_type = content_type_detect(data)
    name = (upload.name or "upload").rsplit("/", 1)[-1][:255]
    stored = ""
    try:
        with transaction.atomic():
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            collection = None
            if collection_id is not None:
                collection = Collection.objects.filter(pk=collection_id, owner=user).first()
                if collection is None:
                    raise DocumentNotFound("No such collection.")
            quota = settings.TOLLGATE_KNOWLEDGE_QUOTA_BYTES
            used = Document.objects.filter(owner=user).aggregate(total=Sum("size_bytes"))["total"]
            used = used or 0
            if used + len(data) > quota:
                raise DocumentOverLimit(
                    f"{name} ({_megabytes(len(data))}) would take your documents past your "
                    f"storage quota of {_megabytes(quota)}: {_megabytes(used)} is used. "
                    "Delete some documents first."
                )
            document = Document(
                owner=user,
                collection=collection,
                name=name,
                content_type=content_type,
                size_bytes=len(data),
            )
            document.file.save(name, ContentFile(data), save=False)
            stored = document.file.name or ""
            document.save()
            audit_record(
                action="knowledge.document_uploaded",
                actor=user,
                target_type="document",
                target_id=document.pk,
                data={"name": name, "content_type": content_type, "size_bytes": len(data)},
            )
            _ingest_due(document.pk)
    except BaseException:
        if stored:
            Document.file.field.storage.delete(stored)
        raise
    return document


def _embedding_text(heading: str, text: str) -> str:
    # The heading is embedded with the text: a chunk is about what it is under.
    return f"{heading}\n{text}" if heading else text


def _progress(document_id: int, percent: int) -> None:
    Document.objects.filter(pk=document_id, status=Status.INGESTING).update(progress=percent)


def document_ingest(*, document_id: int) -> None:
    """Read, chunk and embed pending document ``document_id``; it ends ``ready``
    with its chunks, or ``failed`` with why. A document that is not pending (already
    taken by another worker, deleted, ready) is left alone, so a replayed task is a
    no-op. Progress (0 to 100) is written to the document as the work goes on. The
    chunks are embedded by the deployment's embedding model (``embedder_current``),
    whose calls are charged to the document's owner. Call outside a transaction."""
    with transaction.atomic():
        document = Document.objects.select_for_update(no_key=True).filter(pk=document_id).first()
        if document is None or document.status != Status.PENDING:
            return
        document.status, document.progress, document.error = Status.INGESTING, 5, ""
        document.save(update_fields=["status", "progress", "error"])
    try:
        embedder = embedder_current()
        # Through the storage API (file system or object storage), never a path.
        with document.file.open("rb") as handle:
            data = handle.read()
        sections = sections_extract(data, document.content_type)
        _progress(document_id, 30)
        pieces = chunks_make(
            sections,
            size=settings.TOLLGATE_KNOWLEDGE_CHUNK_CHARS,
            overlap=settings.TOLLGATE_KNOWLEDGE_CHUNK_OVERLAP,
        )
        chunks: list[Chunk] = []
        for first in range(0, len(pieces), EMBED_BATCH):
            batch = pieces[first : first + EMBED_BATCH]
            vectors = embedder.embed(
                [_embedding_text(p.heading, p.text) for p in batch],
                user=document.owner,
                target_type="document",
                target_id=document_id,
            )
            chunks.extend(
                Chunk(
                    document_id=document_id,
                    ordinal=first + offset,
                    text=piece.text,
                    page=piece.page,
                    section=piece.heading[:300],
                    char_start=piece.start,
                    char_end=piece.end,
                    embedding=vector_bytes(vector),
                    embedding_model=embedder.name,
                )
                for offset, (piece, vector) in enumerate(zip(batch, vectors, strict=True))
            )
            _progress(document_id, 30 + 60 * min(len(chunks), len(pieces)) // max(len(pieces), 1))
        pages = max((s.page for s in sections if s.page is not None), default=None)
        with transaction.atomic():
            locked = Document.objects.select_for_update(no_key=True).filter(pk=document_id).first()
            if locked is None or locked.status != Status.INGESTING:
                return  # deleted meanwhile
            Chunk.objects.filter(document_id=document_id).delete()
            Chunk.objects.bulk_create(chunks, batch_size=500)
            if connection.vendor == "postgresql":
                Chunk.objects.filter(document_id=document_id).update(
                    search=SearchVector("section", weight="A", config="english")
                    + SearchVector("text", weight="B", config="english")
                )
            locked.status, locked.progress, locked.pages = Status.READY, 100, pages
            locked.ingested_at = timezone.now()
            locked.save(update_fields=["status", "progress", "pages", "ingested_at"])
    except (KnowledgeError, OSError, IntegrityError, ValueError, MemoryError) as error:
        _fail(document_id, str(error) or type(error).__name__)
    except Exception as error:
        logger.exception("Ingesting document %s failed", document_id)
        _fail(document_id, f"Ingestion failed unexpectedly ({type(error).__name__}).")


def _fail(document_id: int, why: str) -> None:
    Document.objects.filter(pk=document_id, status=Status.INGESTING).update(
        status=Status.FAILED, error=why[:2000]
    )


def chunks_reembed(*, document_id: int) -> int:
    """Embed again, with the deployment's embedding model, the chunks of document
    ``document_id`` that another model embedded (after
    ``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL`` changed), ``EMBED_BATCH`` at a time, each
    batch written as it is done (a chunk's vector and model name change together),
    charged to the document's owner. Returns how many chunks were re-embedded (0
    when none is stale). Raises ``EmbeddingFailed``; the batches written before
    stay written. Call outside a transaction."""
    embedder = embedder_current()
    document = Document.objects.select_related("owner").filter(pk=document_id).first()
    if document is None:
        return 0
    stale = list(
        Chunk.objects.filter(document_id=document_id)
        .exclude(embedding_model=embedder.name)
        .order_by("ordinal")
        .only("pk", "section", "text")
    )
    for first in range(0, len(stale), EMBED_BATCH):
        batch = stale[first : first + EMBED_BATCH]
        vectors = embedder.embed(
            [_embedding_text(chunk.section, chunk.text) for chunk in batch],
            user=document.owner,
            target_type="document",
            target_id=document_id,
        )
        for chunk, vector in zip(batch, vectors, strict=True):
            chunk.embedding, chunk.embedding_model = vector_bytes(vector), embedder.name
        Chunk.objects.bulk_update(batch, ["embedding", "embedding_model"])
    return len(stale)


def document_retry(*, user: Any, document_id: int) -> Document:
    """Put ``user``'s failed document back to pending and have it ingested again.
    Raises ``DocumentNotFound`` (not theirs, or none) or ``KnowledgeError`` (not failed)."""
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(no_key=True)
            .filter(pk=document_id, owner=user)
            .first()
        )
        if document is None:
            raise DocumentNotFound("No such document.")
        if document.status != Status.FAILED:
            raise KnowledgeError("Only a failed document can be retried.")
        document.status, document.progress, document.error = Status.PENDING, 0, ""
        document.save(update_fields=["status", "progress", "error"])
        _ingest_due(document.pk)
    return document


def document_delete(*, user: Any, document_id: int) -> None:
    """Delete ``user``'s document, its chunks, and (after commit) its file. Raises
    ``DocumentNotFound`` when it is not theirs."""
    with transaction.atomic():
        document = Document.objects.filter(pk=document_id, owner=user).first()
        if document is None:
            raise DocumentNotFound("No such document.")
        name, storage = document.file.name or "", document.file.storage
        document.delete()
        audit_record(
            action="knowledge.document_deleted",
            actor=user,
            target_type="document",
            target_id=document_id,
            data={"name": document.name},
        )
        if name:
            transaction.on_commit(lambda: storage.delete(name))


def collection_create(*, user: Any, name: str) -> Collection:
    """A new collection of ``user``. Raises ``KnowledgeError`` for an empty name or
    one they already use."""
    name = name.strip()[:120]
    if not name:
        raise KnowledgeError("A collection needs a name.")
    try:
        with transaction.atomic():
            return Collection.objects.create(owner=user, name=name)
    except IntegrityError:
        raise KnowledgeError(f"You already have a collection named {name!r}.") from None


def collection_share(*, user: Any, collection_id: int, group_ids: list[int]) -> Collection:
    """Share ``user``'s collection with exactly ``group_ids``, each a group they are
    in. Raises ``DocumentNotFound`` (not their collection) or ``KnowledgeError``
    (a group they are not in)."""
    collection = Collection.objects.filter(pk=collection_id, owner=user).first()
    if collection is None:
        raise DocumentNotFound("No such collection.")
    groups = list(Group.objects.filter(pk__in=group_ids, user=user))
    if len(groups) != len(set(group_ids)):
        raise KnowledgeError("A collection can be shared only with groups you are in.")
    collection.groups.set(groups)
    return collection


def collection_delete(*, user: Any, collection_id: int) -> None:
    """Delete ``user``'s collection; its documents stay theirs, in no collection (and
    no longer shared). Raises ``DocumentNotFound`` when it is not theirs."""
    deleted, _ = Collection.objects.filter(pk=collection_id, owner=user).delete()
    if not deleted:
        raise DocumentNotFound("No such collection.")
