"""Reads of the knowledge app. Who sees what is decided in one place,
:func:`documents_visible`: a user's own documents, and those in collections shared
with a group they are in. Every read and search starts from it.

Search (:func:`chunks_search`) is hybrid: a full-text rank (PostgreSQL's
``ts_rank`` over the chunks' ``tsvector``; elsewhere, the count of query words a
chunk contains) and exact cosine similarity of embeddings (numpy, over every
visible chunk), fused by reciprocal rank fusion (k = 60). ``docs/knowledge.md``
says how this scales with pgvector.
"""

from __future__ import annotations

import re
from collections import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import Group
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection
from django.db.models import F, Q, QuerySet

from knowledge.embeddings import texts_embed, vectors_from
from knowledge.errors import DocumentNotFound
from knowledge.models import Chunk, Collection, Document

#: Reciprocal rank fusion's constant (Cormack et al., 2009).
RRF_K = 60
#: How many of each ranking are fused.
CANDIDATES = 50
MAX_RESULTS = 20
_WORD_RE = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32


def _group_ids(user: Any) -> QuerySet[Group, Any]:
    return Group.objects.filter(user=user).values("pk")


def collections_visible(*, user: Any) -> QuerySet[Collection]:
    """The collections ``user`` owns or that are shared with a group they are in."""
    if user is None or not user.is_authenticated:
        return Collection.objects.none()
    shared = Collection.groups.through.objects.filter(group__in=_group_ids(user)).values(
        "collection_id"
    )
    return Collection.objects.filter(Q(owner=user) | Q(pk__in=shared))


def documents_visible(*, user: Any) -> QuerySet[Document]:
    """The documents ``user`` may read: their own, and those in a collection shared
    with one of their groups."""
    if user is None or not user.is_authenticated:
        return Document.objects.none()
    shared = Collection.groups.through.objects.filter(group__in=_group_ids(user)).values(
        "collection_id"
    )
    return Document.objects.filter(Q(owner=user) | Q(collection__in=shared))


def document_get(*, user: Any, document_id: int) -> Document:
    """One document ``user`` may read. Raises ``DocumentNotFound`` otherwise."""
    document = (
        documents_visible(user=user)
        .select_related("collection", "owner")
        .filter(pk=document_id)
        .first()
    )
    if document is None:
        raise DocumentNotFound("No such document.")
    return document


def knowledge_page(*, user: Any) -> dict[str, Any]:
    """What the Knowledge page lists: the visible collections and documents (a fixed
    number of queries, whatever the counts)."""
    return {
        "collections": list(
            collections_visible(user=user).select_related("owner").prefetch_related("groups")
        ),
        "documents": list(documents_visible(user=user).select_related("collection", "owner")[:500]),
    }


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk (with its document) and its fused score."""

    chunk: Chunk
    score: float

    @property
    def where(self) -> str:
        """Where the chunk is in its document: ``page 3``, ``section 'Pricing'``, or ``""``."""
        if self.chunk.page is not None:
            return f"page {self.chunk.page}"
        if self.chunk.section:
            return f"section {self.chunk.section!r}"
        return ""


def _words(query: str) -> list[str]:
    return _WORD_RE.findall(query.lower())[:MAX_QUERY_WORDS]


def chunks_rank_words(chunks: QuerySet[Chunk], words: list[str]) -> list[int]:
    """Chunk ids by full-text rank, best first (at most ``CANDIDATES``)."""
    if not words:
        return []
    if connection.vendor == "postgresql":
        # Any of the words (a question rarely has all of its words in one chunk);
        # each is \w+ only, so the raw tsquery cannot be malformed.
        search = SearchQuery(" | ".join(words), search_type="raw", config="english")
        return list(
            chunks.filter(search=search)
            .annotate(rank=SearchRank(F("search"), search))
            .order_by("-rank", "pk")
            .values_list("pk", flat=True)[:CANDIDATES]
        )
    matching = Q()
    for word in words:
        matching |= Q(text__icontains=word)
    scored = [
        (sum(word in text.lower() for word in words), pk)
        for pk, text in chunks.filter(matching).values_list("pk", "text")
    ]
    scored.sort(key=lambda row: (-row[0], row[1]))
    return [pk for _, pk in scored[:CANDIDATES]]


def chunks_rank_meaning(chunks: QuerySet[Chunk], query: str) -> list[int]:
    """Chunk ids by cosine similarity to ``query``, best first (at most ``CANDIDATES``)."""
    rows = list(chunks.values_list("pk", "embedding"))
    if not rows:
        return []
    ids = np.fromiter((pk for pk, _ in rows), dtype=np.int64, count=len(rows))
    similarity = vectors_from([blob for _, blob in rows]) @ texts_embed([query])[0]
    top = min(CANDIDATES, len(rows))
    best = np.argpartition(-similarity, top - 1)[:top]
    best = best[np.lexsort((ids[best], -similarity[best]))]
    return [int(ids[i]) for i in best]


def chunks_search(
    *, user: Any, query: str, limit: int = 5, document_ids: abc.Collection[int] | None = None
) -> list[Hit]:
    """The chunks of ``user``'s visible, ready documents that best answer ``query``,
    best first, at most ``limit`` (capped at ``MAX_RESULTS``): full-text and
    embedding rankings fused by reciprocal rank fusion. ``document_ids``: only
    those documents (still only the visible ones: the files attached to a chat
    message, ``conversations.attachments``)."""
    query = query.replace("\x00", "").strip()
    if not query or (document_ids is not None and not document_ids):
        return []
    documents = documents_visible(user=user).filter(status=Document.Status.READY)
    if document_ids is not None:
        documents = documents.filter(pk__in=list(document_ids))
    chunks = Chunk.objects.filter(document__in=documents)
    scores: dict[int, float] = {}
    for ranking in (chunks_rank_words(chunks, _words(query)), chunks_rank_meaning(chunks, query)):
        for rank, pk in enumerate(ranking, start=1):
            scores[pk] = scores.get(pk, 0.0) + 1.0 / (RRF_K + rank)
    best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[: min(limit, MAX_RESULTS)]
    rows = Chunk.objects.select_related("document").in_bulk([pk for pk, _ in best])
    return [Hit(chunk=rows[pk], score=score) for pk, score in best if pk in rows]


def pgvector_installed() -> bool:
    """Whether PostgreSQL's ``vector`` extension is installed in this database (the
    scale path of ``docs/knowledge.md``; search does not use it yet)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone() is not None


def healthz_knowledge(**_signal: Any) -> dict[str, Any]:
    """Receiver of ``project.health.health_sections``: how vectors are searched, and
    whether pgvector is there to take over (informational)."""
    return {"knowledge": {"vector_search": "numpy, exact", "pgvector": pgvector_installed()}}
