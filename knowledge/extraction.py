"""What a file is (from its bytes, not its name) and the text in it.

:func:`content_type_detect` names a type of :data:`SUPPORTED`; binary formats are
recognised by ``puremagic`` (pure Python, no libmagic), text by its content:
HTML by its tags, CSV by a consistent delimiter, Markdown by headings or lists.
:func:`sections_extract` reads a file's text as :class:`Section` pieces that
chunks never cross: a PDF's pages, the parts under a Markdown, HTML or DOCX
heading. Images are stored but give no text.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass

import docx
import puremagic
from bs4 import BeautifulSoup
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from knowledge.errors import DocumentRefused, ExtractionFailed

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
CSV = "text/csv"
IMAGES = frozenset({"image/png", "image/jpeg", "image/webp"})
SUPPORTED = frozenset({PDF, DOCX, TEXT, MARKDOWN, HTML, CSV, *IMAGES})

_HTML_RE = re.compile(rb"^\s*(<!doctype html|<html|<head|<body)|<(p|div|h[1-6]|table)[\s>]", re.I)
_MD_HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_MD_HINT_RE = re.compile(r"^(#{1,6}\s|[-*+]\s|\d+\.\s|```|>\s)", re.M)
_CSV_SAMPLE_LINES = 20


@dataclass(frozen=True)
class Section:
    """A run of text that no chunk crosses: a page (``page``, 1-based) or the part
    under a heading (``heading``)."""

    text: str
    page: int | None = None
    heading: str = ""


def content_type_detect(data: bytes) -> str:
    """The type of ``data`` (one of :data:`SUPPORTED`). Raises ``DocumentRefused``
    naming what was found when it is none of them."""
    if not data:
        raise DocumentRefused("The file is empty.")
    try:
        found = puremagic.from_string(data, mime=True)
    except puremagic.PureError:
        found = ""
    if found == "application/zip" and _is_docx(data):
        found = DOCX
    if found in SUPPORTED - {TEXT}:
        return found
    text = _decoded(data)
    if text is None:
        what = found or "an unrecognised binary format"
        raise DocumentRefused(
            f"This file is {what}, which cannot be read. Upload PDF, DOCX, plain text, "
            "Markdown, HTML, CSV, PNG, JPEG or WebP."
        )
    if _HTML_RE.search(data[:4096]):
        return HTML
    if _looks_csv(text):
        return CSV
    if _MD_HINT_RE.search(text[:20_000]):
        return MARKDOWN
    return TEXT


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _decoded(data: bytes) -> str | None:
    """``data`` as UTF-8 text (a BOM dropped), or ``None`` for binary content."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _looks_csv(text: str) -> bool:
    lines = [line for line in text.splitlines()[:_CSV_SAMPLE_LINES] if line.strip()]
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(lines, dialect)}
    return len(widths) == 1 and widths.pop() >= 2


def sections_extract(data: bytes, content_type: str) -> list[Section]:
    """The text of a file of ``content_type`` as sections (none for an image).
    Raises ``ExtractionFailed`` when the content does not read as that type."""
    try:
        if content_type == PDF:
            return _pdf(data)
        if content_type == DOCX:
            return _docx(data)
        if content_type in IMAGES:
            return []
        text = _decoded(data)
        if text is None:
            raise ExtractionFailed("The file is not UTF-8 text.")
        if content_type == HTML:
            return _html(text)
        if content_type == CSV:
            return _csv(text)
        if content_type == MARKDOWN:
            return _markdown(text)
        return [Section(text=text)] if text.strip() else []
    except (PyPdfError, zipfile.BadZipFile, KeyError, ValueError, csv.Error) as error:
        raise ExtractionFailed(f"The file could not be read: {error}") from error


def _pdf(data: bytes) -> list[Section]:
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise ExtractionFailed("The PDF is encrypted.")
    return [
        Section(text=page.extract_text() or "", page=number)
        for number, page in enumerate(reader.pages, start=1)
    ]


def _markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading, start = "", 0
    for match in _MD_HEADING_RE.finditer(text):
        if text[start : match.start()].strip():
            sections.append(Section(text=text[start : match.start()], heading=heading))
        heading, start = match.group(2), match.start()
    if text[start:].strip():
        sections.append(Section(text=text[start:], heading=heading))
    return sections


def _html(text: str) -> list[Section]:
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    body = soup.body or soup
    sections: list[Section] = []
    heading, lines = "", list[str]()
    for element in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td"]):
        if element.find_parent(["p", "li", "pre", "td"]) is not None:
            continue  # its text is in its parent's
        content = element.get_text(" ", strip=True)
        if element.name.startswith("h"):
            if any(line.strip() for line in lines):
                sections.append(Section(text="\n\n".join(lines), heading=heading))
            heading, lines = content, [content]
        elif content:
            lines.append(content)
    if any(line.strip() for line in lines):
        sections.append(Section(text="\n\n".join(lines), heading=heading))
    if not sections:
        whole = body.get_text("\n", strip=True)
        return [Section(text=whole)] if whole else []
    return sections


def _csv(text: str) -> list[Section]:
    sample = "\n".join(text.splitlines()[:_CSV_SAMPLE_LINES])
    dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    # One line per row, each value under its column's name, so a chunk read alone
    # still says what its numbers are.
    lines = [
        "; ".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value)
        for row in body
    ]
    return [Section(text="\n".join(line for line in lines if line))]


def _docx(data: bytes) -> list[Section]:
    document = docx.Document(io.BytesIO(data))
    sections: list[Section] = []
    heading, lines = "", list[str]()
    for paragraph in document.paragraphs:
        style = paragraph.style.name if paragraph.style is not None else ""
        content = paragraph.text.strip()
        if style.startswith("Heading") or style == "Title":
            if lines:
                sections.append(Section(text="\n\n".join(lines), heading=heading))
            heading, lines = content, [content] if content else []
        elif content:
            lines.append(content)
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    if lines:
        sections.append(Section(text="\n\n".join(lines), heading=heading))
    return sections
