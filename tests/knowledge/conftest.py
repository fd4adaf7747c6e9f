"""Fixtures for the knowledge tests: files made here (PDF, DOCX, CSV, PNG), uploads
stored under a temporary MEDIA_ROOT, and ingestion run in the test's thread."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import docx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from fpdf import FPDF
from PIL import Image

from knowledge.models import Document
from knowledge.services import document_ingest, document_upload


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def pdf_bytes(pages: list[str]) -> bytes:
    """A PDF with one page per text."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def docx_bytes(parts: list[tuple[str, str]]) -> bytes:
    """A DOCX with a level-1 heading and a paragraph per ``(heading, text)``."""
    document = docx.Document()
    for heading, text in parts:
        document.add_heading(heading, level=1)
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def ingest() -> Callable[..., Document]:
    """Upload ``data`` as ``name`` for ``user`` and ingest it here and now."""

    def upload(user: Any, name: str, data: bytes, **kwargs: Any) -> Document:
        document = document_upload(user=user, upload=SimpleUploadedFile(name, data), **kwargs)
        document_ingest(document_id=document.pk)
        document.refresh_from_db()
        return document

    return upload
