"""Uploaded files, their collections and the chunks search reads.

A ``Document`` is one uploaded file, stored through Django's storage API; its
``status`` moves pending → ingesting → ready or failed (``services``). A
``Chunk`` is a piece of its text with where it came from (page or heading,
character offsets), its embedding (float32 bytes, ``knowledge.embeddings``) and,
on PostgreSQL, a ``tsvector`` for full-text rank (GIN-indexed; on SQLite the
column stays empty and search falls back to matching words).
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models


class Collection(models.Model):
    """A named set of documents; shared with groups, whose members may search it."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections"
    )
    name = models.CharField(max_length=120)
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="knowledge_collections",
        help_text="Members of these groups may read and search the collection.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["owner", "name"], name="knowledge_collection_name")
        ]

    def __str__(self) -> str:
        return self.name


def document_path(document: Document, filename: str) -> str:
    """Where a document's file is stored: by owner, never by its (untrusted) name alone."""
    return f"knowledge/{document.owner_id}/{filename}"


class Document(models.Model):
    """One uploaded file and where its ingestion stands."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INGESTING = "ingesting", "Ingesting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="documents"
    )
    collection = models.ForeignKey(
        Collection, on_delete=models.SET_NULL, null=True, blank=True, related_name="documents"
    )
    name = models.CharField(max_length=255, help_text="The file's name as uploaded.")
    file = models.FileField(upload_to=document_path, max_length=500)
    content_type = models.CharField(
        max_length=100, help_text="Detected from the file's content, not its name."
    )
    size_bytes = models.PositiveBigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, help_text="Why ingestion failed.")
    progress = models.PositiveSmallIntegerField(default=0, help_text="0 to 100.")
    pages = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes: ClassVar = [models.Index(fields=["owner", "status"])]

    def __str__(self) -> str:
        return self.name


class Chunk(models.Model):
    """A piece of a document's text, searchable by words and by meaning."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True, help_text="1-based, for PDFs.")
    section = models.CharField(max_length=300, blank=True, help_text="The heading above it.")
    char_start = models.PositiveIntegerField()
    char_end = models.PositiveIntegerField()
    #: float32 values, little-endian (``knowledge.embeddings.vector_bytes``).
    embedding = models.BinaryField()
    #: The model that made ``embedding`` (``Embedder.name``); search compares a query's
    #: vector only with chunks of the model that embedded it.
    embedding_model = models.CharField(max_length=200, default="wordllama/l2_supercat")
    #: PostgreSQL only: filled by ``services`` with ``to_tsvector('english', text)``.
    search = SearchVectorField(null=True)

    class Meta:
        ordering = ("document", "ordinal")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="knowledge_chunk_ordinal")
        ]
        indexes: ClassVar = [GinIndex(fields=["search"], name="knowledge_chunk_search")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
