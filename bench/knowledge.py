"""Benchmark 13: knowledge ingestion and hybrid search, against a plain full-text query.

In this process (Django on the stack's PostgreSQL), with the offline embedding model:

- ingestion: a PDF of ``pages`` pages (about 1,500 characters each, made with fpdf2)
  is uploaded and ingested by the services (read, chunk, embed, store, tsvector);
  pages per second over the whole ``document_ingest``;
- search: one user's 10,000 chunks, and another's 100,000 (made from a fixed
  vocabulary, embedded with the shipped model ``CORPUS_BATCH`` at a time, bulk
  inserted as ingestion stores them), then questions over each, each asked three
  ways, interleaved so all see the same load: the plain full-text
  query (``ts_rank`` over the GIN-indexed tsvector, top 5: the baseline), the
  embedding ranking alone (numpy over every chunk's vector), and ``chunks_search``
  (both, fused); at the larger size, where the embedding ranking's time goes.

    DATABASE_URL=... uv run python bench/knowledge.py [--chunks 10000] [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table

VOCABULARY = [
    "invoice",
    "payment",
    "supplier",
    "delivery",
    "contract",
    "warehouse",
    "shipment",
    "customer",
    "refund",
    "budget",
    "forecast",
    "quarter",
    "revenue",
    "expense",
    "travel",
    "receipt",
    "policy",
    "approval",
    "manager",
    "employee",
    "vacation",
    "leave",
    "holiday",
    "training",
    "safety",
    "badge",
    "security",
    "parking",
    "office",
    "printer",
    "network",
    "password",
    "server",
    "backup",
    "database",
    "release",
    "deploy",
    "incident",
    "outage",
    "ticket",
    "support",
    "escalation",
    "priority",
    "deadline",
    "meeting",
    "agenda",
    "minutes",
    "project",
    "milestone",
    "roadmap",
    "feature",
    "request",
    "bug",
    "report",
    "test",
    "coverage",
    "review",
    "merge",
    "branch",
    "harbour",
    "ferry",
    "orchard",
    "apple",
    "telescope",
    "observatory",
    "river",
    "bridge",
    "station",
    "platform",
    "train",
    "schedule",
    "timetable",
    "weather",
    "forecast",
    "storm",
    "harvest",
    "market",
    "price",
    "index",
    "insurance",
    "claim",
    "premium",
    "coverage",
    "pension",
    "salary",
    "bonus",
    "tax",
    "return",
    "audit",
    "compliance",
]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def _chunk_text(rng: random.Random, chars: int = 900) -> str:
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(_sentence(rng))
    return " ".join(parts)


def _ingest(user, pages: int) -> tuple[float, int]:
    """Seconds to ingest a ``pages``-page PDF, and the chunks it made."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from fpdf import FPDF

    from knowledge.services import document_ingest, document_upload

    rng = random.Random(7)
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    for _ in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 5, _chunk_text(rng, 1500))
    document = document_upload(
        user=user, upload=SimpleUploadedFile("bench.pdf", bytes(pdf.output()))
    )
    started = time.perf_counter()
    # The upload also sent the stack's worker its ingestion task: whichever claims the
    # document first reads it (the other finds it taken and returns), so wait for the
    # document to be read, by either.
    document_ingest(document_id=document.pk)
    deadline = started + 120
    document.refresh_from_db()
    while document.status not in ("ready", "failed") and time.perf_counter() < deadline:
        time.sleep(0.02)
        document.refresh_from_db()
    took = time.perf_counter() - started
    if document.status != "ready":
        raise RuntimeError(f"ingestion failed ({document.status}): {document.error}")
    return took, document.chunks.count()


#: Chunks embedded and stored per round while a corpus is built (its texts, vectors
#: and rows are let go after each, so 100,000 chunks never sit in memory at once).
CORPUS_BATCH = 10_000


def _corpus(user, count: int) -> float:
    """Store ``count`` chunks for ``user`` as ingestion does (one document per
    ``CORPUS_BATCH``), bulk-inserted; seconds spent embedding."""
    from django.contrib.postgres.search import SearchVector
    from django.core.files.base import ContentFile

    from knowledge.embeddings import texts_embed, vector_bytes
    from knowledge.models import Chunk, Document

    rng = random.Random(11)
    embedding = 0.0
    for first in range(0, count, CORPUS_BATCH):
        document = Document(
            owner=user, name="corpus.txt", content_type="text/plain", size_bytes=0, status="ready"
        )
        document.file.save("corpus.txt", ContentFile(b"synthetic"), save=False)
        document.save()
        texts = [_chunk_text(rng) for _ in range(min(CORPUS_BATCH, count - first))]
        started = time.perf_counter()
        vectors = texts_embed(texts)
        embedding += time.perf_counter() - started
        Chunk.objects.bulk_create(
            (
                Chunk(
                    document=document,
                    ordinal=i,
                    text=text,
                    char_start=0,
                    char_end=len(text),
                    embedding=vector_bytes(vector),
                )
                for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
            ),
            batch_size=1000,
        )
        Chunk.objects.filter(document=document).update(
            search=SearchVector("section", weight="A", config="english")
            + SearchVector("text", weight="B", config="english")
        )
    return embedding


def _plain_fulltext(user, query: str) -> list[int]:
    """The baseline: websearch full-text query, ranked, top 5 (the GIN index)."""
    from django.contrib.postgres.search import SearchQuery, SearchRank
    from django.db.models import F

    from knowledge.models import Chunk
    from knowledge.selectors import documents_visible

    search = SearchQuery(query, search_type="websearch", config="english")
    return list(
        Chunk.objects.filter(document__in=documents_visible(user=user), search=search)
        .annotate(rank=SearchRank(F("search"), search))
        .order_by("-rank")
        .values_list("pk", flat=True)[:5]
    )


def _visible_chunks(user):
    from knowledge import selectors
    from knowledge.models import Chunk

    return Chunk.objects.filter(document__in=selectors.documents_visible(user=user))


def _vector_only(user, query: str) -> list[int]:
    from knowledge import selectors
    from knowledge.embeddings import embedder_current

    return selectors.chunks_rank_meaning(
        _visible_chunks(user), query, embedder=embedder_current(), user=user
    )[:5]


def _phases(user, questions: list[str]) -> dict[str, list[float]]:
    """Where the embedding ranking's time goes, per query (ms): reading the vectors
    out of PostgreSQL into Python, decoding the bytes into one numpy array, and
    embedding the query plus the cosine and top 50."""
    import numpy as np

    from knowledge.embeddings import texts_embed, vectors_from

    phases: dict[str, list[float]] = {"read": [], "decode": [], "rank": []}
    for question in questions:
        started = time.perf_counter()
        rows = list(_visible_chunks(user).values_list("pk", "embedding"))
        read = time.perf_counter()
        vectors = vectors_from([blob for _, blob in rows])
        decoded = time.perf_counter()
        similarity = vectors @ texts_embed([question])[0]
        np.argpartition(-similarity, 49)[:50]
        ranked = time.perf_counter()
        phases["read"].append((read - started) * 1000)
        phases["decode"].append((decoded - read) * 1000)
        phases["rank"].append((ranked - decoded) * 1000)
    return phases


def _search_times(user, questions: list[str]) -> dict[str, list[float]]:
    """Milliseconds per query of each way, interleaved (all see the same load)."""
    from knowledge.selectors import chunks_search

    ways = {
        "plain full text (baseline)": lambda q: _plain_fulltext(user, q),
        "embedding ranking alone (numpy)": lambda q: _vector_only(user, q),
        "hybrid: chunks_search": lambda q: chunks_search(user=user, query=q, limit=5),
    }
    for way in ways.values():  # warm: the model, the plans, the caches
        way(questions[0])
    times: dict[str, list[float]] = {name: [] for name in ways}
    for question in questions:
        for name, way in ways.items():
            started = time.perf_counter()
            way(question)
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def _measure(env: BenchEnv, *, sizes: dict[int, int], pages: int, phase_queries: int) -> Result:
    """``sizes``: chunks of one user's corpus → queries asked over it."""
    from knowledge.embeddings import texts_embed

    rng = random.Random(3)
    questions = [" ".join(rng.sample(VOCABULARY, 3)) for _ in range(max(sizes.values()))]
    texts_embed(["warm"])  # the model's one-off load (about a second) is not ingestion's
    reader = env.user("knowledge-ingest", http=False)
    ingest_seconds, pdf_chunks = _ingest(reader, pages)
    ingest_rows = [
        [
            f"{pages}-page PDF → {pdf_chunks} chunks",
            fmt(ingest_seconds, 2),
            fmt(pages / ingest_seconds, 1),
        ],
    ]
    rows = []
    largest = max(sizes)
    phases: dict[str, list[float]] = {}
    for chunks, queries in sorted(sizes.items()):
        # One user per size: each searches exactly its own corpus.
        searcher = env.user(f"knowledge-search-{chunks}", http=False)
        embed_seconds = _corpus(searcher, chunks)
        ingest_rows.append(
            [f"embedding {chunks:,} chunks of ~900 characters", fmt(embed_seconds, 2), ""]
        )
        times = _search_times(searcher, questions[:queries])
        base = p50(times["plain full text (baseline)"])
        rows.extend(
            [
                name,
                f"{chunks:,}",
                queries,
                fmt(p50(t), 1),
                fmt(percentile(t, 0.99), 1),
                fmt(p50(t) / base, 1) + "x",
            ]
            for name, t in times.items()
        )
        if chunks == largest:
            phases = _phases(searcher, questions[:phase_queries])
    phase_text = ", ".join(f"{name} {fmt(p50(t), 0)} ms" for name, t in phases.items())
    summary = ", ".join(f"{chunks:,}" for chunks in sorted(sizes))
    return Result(
        key="knowledge",
        title=f"13. Knowledge: ingestion, and search over {summary} chunks",
        table=table(["ingestion", "seconds", "pages/s"], ingest_rows)
        + "\n\n"
        + table(
            [
                "search (one user's chunks)",
                "chunks",
                "queries",
                "p50 ms",
                "p99 ms",
                "p50 / baseline",
            ],
            rows,
        ),
        notes=[
            "Search reads every visible chunk's 1 KiB vector per query (exact cosine in "
            "numpy); docs/knowledge.md gives the pgvector HNSW path for larger corpora.",
            f"The embedding ranking at {largest:,} chunks, by phase (p50 of "
            f"{phase_queries} queries): {phase_text} (read: the vectors out of PostgreSQL "
            "into Python rows; decode: the bytes into one numpy array; rank: the query's "
            "embedding, the cosine and the top 50).",
        ],
    )


def measure(env: BenchEnv, *, quick: bool = False, chunks: int = 10_000) -> Result:
    """Benchmark 13: the full run searches 10,000 chunks (200 queries) and 100,000
    (50 queries: a hybrid query there takes about a second); ``quick``, 300 and 1,000."""
    if quick:
        return _measure(env, sizes={300: 5, 1_000: 5}, pages=3, phase_queries=3)
    return _measure(env, sizes={chunks: 200, 10 * chunks: 50}, pages=50, phase_queries=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--chunks", type=int, default=10_000, help="the smaller corpus; the larger is ten times it"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, chunks=args.chunks).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
