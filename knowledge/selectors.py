"""Reads of the knowledge app. Who sees what is decided in one place,
:func:`documents_visible`: a user's own documents, and those in collections shared
with a group they are in. Every read and search starts from it.

Search (:func:`chunks_search`) is hybrid: a full-text rank (PostgreSQL's
``ts_rank`` over the chunks' ``tsvector``; on SQLite, FTS5's ``bm25``) and exact
cosine similarity of embeddings (numpy, over every visible chunk embedded by the
deployment's embedding model, at or above ``TOLLGATE_KNOWLEDGE_MIN_SIMILARITY``),
fused by reciprocal rank fusion (k = 60).
``docs/knowledge.md`` says how this scales with pgvector.
"""

from __future__ import annotations

import re
from collections import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection
from django.db.models import F, Q, QuerySet

from knowledge.embeddings import Embedder, embedder_current, vectors_from
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
    """Chunk ids by full-text rank, best first (at most ``CANDIDATES``): PostgreSQL's
    ``ts_rank`` over the chunks' ``tsvector``, SQLite's FTS5 ``bm25``."""
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
    # SQLite (the embedded mode): FTS5's bm25 over ``knowledge_chunk_fts``, the index
    # migration 0003 made and its triggers keep. Any of the words, each quoted.
    visible, params = chunks.values("pk").query.sql_with_params()
    match = " OR ".join(f'"{word}"' for word in words)
    sql = (
        "SELECT rowid FROM knowledge_chunk_fts WHERE knowledge_chunk_fts MATCH %s"  # noqa: S608 - ``visible`` is the ORM's SQL, its values in params
        f" AND rowid IN ({visible}) ORDER BY bm25(knowledge_chunk_fts), rowid LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *params, CANDIDATES])
        return [row[0] for row in cursor.fetchall()]


def chunks_rank_meaning(
    chunks: QuerySet[Chunk], query: str, *, embedder: Embedder, user: Any
) -> list[int]:
    """Ids of ``chunks`` embedded by ``embedder`` (``Chunk.embedding_model``; vectors
    of other models are never compared) by cosine similarity to ``query``, best
    first, at most ``CANDIDATES``, none below ``TOLLGATE_KNOWLEDGE_MIN_SIMILARITY``
    (-1 to 1). The query is embedded only when there are chunks to compare, charged
    to ``user``. Raises ``EmbeddingFailed`` (``Embedder.embed``)."""
    rows = list(chunks.filter(embedding_model=embedder.name).values_list("pk", "embedding"))
    if not rows:
        return []
    ids = np.fromiter((pk for pk, _ in rows), dtype=np.int64, count=len(rows))
    vector = embedder.embed([query], user=user, target_type="user", target_id=user.pk)[0]
    similarity = vectors_from([blob for _, blob in rows]) @ vector
    kept = np.flatnonzero(similarity >= settings.TOLLGATE_KNOWLEDGE_MIN_SIMILARITY)
    if not kept.size:
        return []
    ids, similarity = ids[kept], similarity[kept]
    top = min(CANDIDATES, len(ids))
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
    message, ``conversations.attachments``). ``[]`` when no chunk matches a word of
    the query nor comes near it in meaning (the similarity floor). Raises
    ``EmbeddingFailed`` when the deployment's embedding model cannot embed the query."""
    query = query.replace("\x00", "").strip()
    if not query or (document_ids is not None and not document_ids):
        return []
    documents = documents_visible(user=user).filter(status=Document.Status.READY)
    if document_ids is not None:
        documents = documents.filter(pk__in=list(document_ids))
    chunks = Chunk.objects.filter(document__in=documents)
    meaning = chunks_rank_meaning(chunks, query, embedder=embedder_current(), user=user)
    scores: dict[int, float] = {}
    for ranking in (chunks_rank_words(chunks, _words(query)), meaning):
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
