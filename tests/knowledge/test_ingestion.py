"""Uploads, type detection, extraction, chunking and embeddings, on real files made here."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from knowledge import extraction
from knowledge.chunking import chunks_make
from knowledge.embeddings import DIMENSIONS, texts_embed, vectors_from
from knowledge.errors import DocumentNotFound, DocumentOverLimit, DocumentRefused, KnowledgeError
from knowledge.extraction import Section, content_type_detect
from knowledge.models import Chunk, Document
from knowledge.services import document_ingest, document_retry, document_upload
from tests.factories import CollectionFactory

from .conftest import csv_bytes, docx_bytes, pdf_bytes, png_bytes

pytestmark = pytest.mark.django_db

PAGES = [
    "Page one is about the harbour. Ferries leave the harbour every hour.",
    "Page two is about the orchard. Apples are picked in September.",
    "Page three is about the observatory. The telescope opens at night.",
]


def test_types_are_detected_from_content_not_name():
    assert content_type_detect(pdf_bytes(["x"])) == extraction.PDF
    assert content_type_detect(docx_bytes([("H", "t")])) == extraction.DOCX
    assert content_type_detect(png_bytes()) == "image/png"
    assert content_type_detect(b"name,age\nann,3\nbob,4\n") == extraction.CSV
    assert content_type_detect(b"<html><body><p>hi</p></body></html>") == extraction.HTML
    assert content_type_detect(b"# Title\n\nSome text.\n") == extraction.MARKDOWN
    assert content_type_detect(b"Just a sentence, nothing else.") == extraction.TEXT
    with pytest.raises(DocumentRefused, match="cannot be read"):
        content_type_detect(b"\x7fELF\x02\x01\x01\x00" + bytes(100))


def test_a_three_page_pdf_is_chunked_by_page(user, ingest):
    document = ingest(user, "report.txt", pdf_bytes(PAGES))  # the name does not matter
    assert document.status == Document.Status.READY
    assert document.content_type == extraction.PDF
    assert (document.progress, document.pages, document.error) == (100, 3, "")
    chunks = list(document.chunks.order_by("ordinal"))
    assert [c.page for c in chunks] == [1, 2, 3]
    assert "harbour" in chunks[0].text and "orchard" in chunks[1].text
    assert "telescope" in chunks[2].text
    assert chunks[1].char_start > chunks[0].char_end
    assert vectors_from([chunks[0].embedding]).shape == (1, DIMENSIONS)
    if connection.vendor == "postgresql":
        assert Chunk.objects.filter(document=document, search="telescope").count() == 1


def test_docx_chunks_carry_their_headings(user, ingest):
    data = docx_bytes([("Pricing", "The plan costs ten euros."), ("Support", "Mail us.")])
    document = ingest(user, "d.docx", data)
    assert document.content_type == extraction.DOCX
    assert [(c.section, c.text.splitlines()[0]) for c in document.chunks.all()] == [
        ("Pricing", "Pricing"),
        ("Support", "Support"),
    ]


def test_csv_rows_keep_their_column_names(user, ingest):
    data = csv_bytes([["city", "population"], ["Lyon", "520000"], ["Graz", "290000"]])
    document = ingest(user, "cities", data)
    assert document.content_type == extraction.CSV
    (chunk,) = document.chunks.all()
    assert chunk.text == "city: Lyon; population: 520000\ncity: Graz; population: 290000"


def test_markdown_and_html_split_at_headings():
    md = extraction.sections_extract(b"intro\n# One\nfirst\n## Two\nsecond\n", extraction.MARKDOWN)
    assert [(s.heading, s.text.strip()) for s in md] == [
        ("", "intro"),
        ("One", "# One\nfirst"),
        ("Two", "## Two\nsecond"),
    ]
    html = (
        b"<html><body><script>x()</script><h1>A</h1><p>alpha</p><h2>B</h2><p>beta</p></body></html>"
    )
    sections = extraction.sections_extract(html, extraction.HTML)
    assert [(s.heading, s.text) for s in sections] == [("A", "A\n\nalpha"), ("B", "B\n\nbeta")]


def test_an_image_is_stored_not_chunked(user, ingest):
    document = ingest(user, "red.png", png_bytes())
    assert document.content_type == "image/png"
    assert document.status == Document.Status.READY
    assert not document.chunks.exists()
    assert Path(document.file.path).read_bytes() == png_bytes()


def test_chunks_overlap_and_never_cross_a_section():
    words = " ".join(f"word{i}." for i in range(400))
    pieces = chunks_make(
        [Section(text=words, page=1), Section(text="short page", page=2)], size=300, overlap=60
    )
    assert [p.page for p in pieces][-1] == 2 and pieces[-1].text == "short page"
    first_page = [p for p in pieces if p.page == 1]
    assert len(first_page) > 5
    assert all(len(p.text) <= 300 for p in pieces)
    for before, after in itertools.pairwise(first_page):
        assert after.start < before.end  # they overlap
        assert words[before.start : before.end] == before.text
        assert after.text.split()[0].startswith("word")  # starts at a word
    whole = words + "\n\n" + "short page"
    assert whole[pieces[-1].start : pieces[-1].end] == "short page"
    with pytest.raises(ValueError, match="overlap"):
        chunks_make([], size=100, overlap=60)


def test_embeddings_are_the_shipped_offline_model(monkeypatch):
    def refused(*_args, **_kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr("knowledge.embeddings._model", None)  # loaded afresh, offline
    with monkeypatch.context() as offline:
        offline.setattr(socket.socket, "connect", refused)
        vectors = texts_embed(["a cat sat on the mat", "a kitten rested on a rug", "quarterly tax"])
    assert vectors.shape == (3, DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_a_file_over_the_limit_is_refused_with_nothing_stored(user, settings, _media):
    settings.TOLLGATE_KNOWLEDGE_MAX_FILE_BYTES = 1000
    with pytest.raises(DocumentOverLimit, match=r"the limit per file is 0\.0 MB"):
        document_upload(user=user, upload=SimpleUploadedFile("big.txt", b"x" * 1001))
    assert not Document.objects.exists()
    assert not list(Path(_media).rglob("*.txt"))


def test_the_quota_is_refused_with_nothing_stored(user, other_user, settings, _media, ingest):
    settings.TOLLGATE_KNOWLEDGE_QUOTA_BYTES = 3000
    ingest(user, "a.txt", b"a" * 2000)
    ingest(other_user, "b.txt", b"b" * 2000)  # another user's files do not count
    with pytest.raises(DocumentOverLimit, match="storage quota"):
        document_upload(user=user, upload=SimpleUploadedFile("c.txt", b"c" * 1001))
    assert Document.objects.filter(owner=user).count() == 1
    assert len(list(Path(_media).rglob("*.txt"))) == 2


def test_a_failure_after_the_file_was_written_leaves_nothing(user, _media, monkeypatch):
    def broken(**_kwargs):
        raise RuntimeError("audit down")

    monkeypatch.setattr("knowledge.services.audit_record", broken)
    with pytest.raises(RuntimeError):
        document_upload(user=user, upload=SimpleUploadedFile("a.txt", b"hello"))
    assert not Document.objects.exists()
    assert not list(Path(_media).rglob("*.txt"))


def test_an_unreadable_type_and_a_foreign_collection_are_refused(user, other_user):
    with pytest.raises(DocumentRefused, match="Upload PDF, DOCX"):
        document_upload(user=user, upload=SimpleUploadedFile("x.bin", bytes(range(256))))
    theirs = CollectionFactory(owner=other_user)
    with pytest.raises(DocumentNotFound):
        document_upload(
            user=user, upload=SimpleUploadedFile("a.txt", b"hi"), collection_id=theirs.pk
        )
    assert not Document.objects.exists()


def test_a_failed_ingestion_stores_why_and_can_be_retried(user, ingest, monkeypatch):
    def broken(data, content_type):
        raise extraction.ExtractionFailed("The file could not be read: broken on purpose")

    with monkeypatch.context() as patch:
        patch.setattr("knowledge.services.sections_extract", broken)
        document = ingest(user, "a.txt", b"hello there")
    assert document.status == Document.Status.FAILED
    assert document.error == "The file could not be read: broken on purpose"
    document_retry(user=user, document_id=document.pk)
    document.refresh_from_db()
    assert (document.status, document.error, document.progress) == ("pending", "", 0)
    document_ingest(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == Document.Status.READY
    assert document.chunks.get().text == "hello there"
    with pytest.raises(KnowledgeError, match="Only a failed document"):
        document_retry(user=user, document_id=document.pk)
    document_ingest(document_id=document.pk)  # a replayed task is a no-op
    assert document.chunks.count() == 1


def test_an_upload_is_enqueued_on_commit(
    user, settings, django_capture_on_commit_callbacks, monkeypatch
):
    settings.TOLLGATE_DISPATCHER = "celery"
    sent: list[int] = []
    monkeypatch.setattr("knowledge.dispatch.document_ingest_task.delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        document = document_upload(user=user, upload=SimpleUploadedFile("a.txt", b"hi"))
        assert not sent
    assert len(callbacks) == 1
    assert sent == [document.pk]
