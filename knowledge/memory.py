"""Memory: what the ``notes.*`` tools remember, recalled by meaning.

The notes themselves are ``tools.Note`` rows, written and deleted through the gate by
the ``notes.*`` tools as before, and shown, edited and deleted by their owner on the
Memory page (``knowledge.views``, through ``tools.services``). Recall ranks a user's
notes by the cosine similarity of their text (``key: value``) to a question, with the
same offline embeddings as documents (``knowledge.embeddings``): no exact key needed.
The ``memory.recall`` tool (read-only) is that ranking for the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from asgiref.sync import sync_to_async
from pydantic import Field

from knowledge.embeddings import texts_embed
from knowledge.tool import tool_user
from tools.builtin.notes import MAX_NOTES_PER_USER
from tools.models import Note
from tools.registry import ToolContext, tool
from tools.selectors import notes_for_user

#: The most notes one recall returns.
MAX_RECALLED = 10


@dataclass(frozen=True)
class Recalled:
    """A note and its cosine similarity to the question (-1 to 1)."""

    note: Note
    similarity: float


def notes_recall(*, user: Any, query: str, limit: int = 5) -> list[Recalled]:
    """``user``'s notes most like ``query`` in meaning, best first (at most ``limit``,
    capped at :data:`MAX_RECALLED`). Embeds the question and each note's
    ``key: value`` (at most ``MAX_NOTES_PER_USER`` notes, a few ms for hundreds); an
    empty question or no note gives ``[]``."""
    notes = list(notes_for_user(user=user)[:MAX_NOTES_PER_USER])
    if not notes or not query.strip():
        return []
    vectors = texts_embed([query, *(f"{note.key}: {note.value}" for note in notes)])
    scores = vectors[1:] @ vectors[0]
    order = np.argsort(-scores, kind="stable")[: max(1, min(limit, MAX_RECALLED))]
    return [Recalled(note=notes[i], similarity=float(scores[i])) for i in order]


def _recall(user_id: int, query: str, limit: int) -> dict[str, Any]:
    found = notes_recall(user=tool_user(user_id), query=query, limit=limit)
    return {
        "notes": [
            {"key": r.note.key, "value": r.note.value, "similarity": round(r.similarity, 3)}
            for r in found
        ]
    }


@tool(
    name="memory.recall",
    read_only=True,
    idempotent=True,
    open_world=False,
    timeout_seconds=30,
)
async def memory_recall(
    ctx: ToolContext,
    query: Annotated[
        str, Field(description="What to remember, in words.", min_length=1, max_length=1000)
    ],
    limit: Annotated[
        int, Field(description="How many notes to return.", ge=1, le=MAX_RECALLED)
    ] = 5,
) -> dict[str, Any]:
    """Recall the user's remembered notes most related in meaning to the query (no
    exact key needed), best first, each with its key, value and similarity."""
    return await sync_to_async(_recall)(ctx.user_id, query, limit)
