"""Cutting sections into overlapping chunks that never cross a section (a page, a
heading's part).

A chunk ends at the last paragraph break, else sentence end, else space, in the
second half of its ``size``; the next starts ``overlap`` characters earlier, at a
word's start. Offsets count in the document's text: its sections joined by
:data:`SEPARATOR`.
"""

from __future__ import annotations

from dataclasses import dataclass

from knowledge.extraction import Section

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Piece:
    """One chunk: its text, page or heading, and offsets in the document's text."""

    text: str
    page: int | None
    heading: str
    start: int
    end: int


def _break(text: str, start: int, end: int) -> int:
    """Where to end a chunk of ``text[start:end]``: after a paragraph, a sentence or
    a word in its second half, else at ``end``."""
    floor = start + (end - start) // 2
    for mark in ("\n\n", ". ", "\n", " "):
        found = text.rfind(mark, floor, end)
        if found != -1:
            return found + len(mark)
    return end


def chunks_make(sections: list[Section], *, size: int, overlap: int) -> list[Piece]:
    """The chunks of ``sections``, each at most ``size`` characters (stripped of
    surrounding blanks, none empty), consecutive chunks of one section sharing about
    ``overlap`` characters. Raises ``ValueError`` unless ``0 <= overlap < size // 2``."""
    if not 0 <= overlap < size // 2:
        raise ValueError("overlap must be at least 0 and less than half the size")
    pieces: list[Piece] = []
    base = 0
    for section in sections:
        text = section.text
        start = 0
        while start < len(text):
            end = min(start + size, len(text))
            if end < len(text):
                end = _break(text, start, end)
            raw = text[start:end]
            stripped = raw.strip()
            if stripped:
                lead = len(raw) - len(raw.lstrip())
                pieces.append(
                    Piece(
                        text=stripped,
                        page=section.page,
                        heading=section.heading,
                        start=base + start + lead,
                        end=base + start + lead + len(stripped),
                    )
                )
            if end >= len(text):
                break
            if not overlap:
                start = end
                continue
            following = max(end - overlap, start + 1)
            # Begin the overlap at a word, not inside one.
            space = text.find(" ", following, end)
            start = space + 1 if space != -1 else following
        base += len(text) + len(SEPARATOR)
    return pieces
