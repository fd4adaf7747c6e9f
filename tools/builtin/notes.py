"""``notes.*``: a small key-value store per user (list, read, write, delete).

Every handler works on ``ctx.user_id``'s notes only; no argument can name
another user. ``notes.delete`` is the destructive one (MCP ``destructiveHint``);
``notes.write`` replaces an existing value, which the issue leaves non-destructive
so a policy can allow writes while still asking for deletes.
"""

from __future__ import annotations

from typing import Annotated, Any

from django.db import IntegrityError
from pydantic import Field

from tools.models import Note
from tools.registry import ToolContext, ToolError, tool

MAX_KEY_CHARS = 200
MAX_VALUE_CHARS = 10_000
MAX_NOTES_PER_USER = 1_000
MAX_LISTED = 200

Key = Annotated[
    str,
    Field(
        description="Name of the note, e.g. 'shopping-list'.",
        min_length=1,
        max_length=MAX_KEY_CHARS,
    ),
]


@tool(name="notes.list", read_only=True, idempotent=True, open_world=False, timeout_seconds=10)
async def notes_list(
    ctx: ToolContext,
    prefix: Annotated[
        str, Field(description="Only keys starting with this text.", max_length=MAX_KEY_CHARS)
    ] = "",
) -> dict[str, Any]:
    """List the user's notes (keys, sizes, last update), optionally by key prefix."""
    notes = Note.objects.filter(user_id=ctx.user_id, key__startswith=prefix).order_by("key")
    total = await notes.acount()
    items = [
        {"key": note.key, "chars": len(note.value), "updated_at": note.updated_at.isoformat()}
        async for note in notes[:MAX_LISTED]
    ]
    return {"count": total, "notes": items, "truncated": total > len(items)}


@tool(name="notes.read", read_only=True, idempotent=True, open_world=False, timeout_seconds=10)
async def notes_read(ctx: ToolContext, key: Key) -> dict[str, Any]:
    """Read one of the user's notes by key."""
    note = await Note.objects.filter(user_id=ctx.user_id, key=key).afirst()
    if note is None:
        raise ToolError(f"No note named {key!r}.")
    return {"key": note.key, "value": note.value, "updated_at": note.updated_at.isoformat()}


@tool(
    name="notes.write",
    read_only=False,
    destructive=False,
    idempotent=True,
    open_world=False,
    timeout_seconds=10,
)
async def notes_write(
    ctx: ToolContext,
    key: Key,
    value: Annotated[
        str, Field(description="Text to store under the key.", max_length=MAX_VALUE_CHARS)
    ],
) -> dict[str, Any]:
    """Create a note, or replace the value of an existing note with the same key."""
    updated = await Note.objects.filter(user_id=ctx.user_id, key=key).aupdate(value=value)
    if updated:
        return {"key": key, "created": False}
    if await Note.objects.filter(user_id=ctx.user_id).acount() >= MAX_NOTES_PER_USER:
        raise ToolError(f"Note limit reached ({MAX_NOTES_PER_USER}); delete some notes first.")
    try:
        await Note.objects.acreate(user_id=ctx.user_id, key=key, value=value)
    except IntegrityError:
        # Written concurrently by another call between our update and insert.
        await Note.objects.filter(user_id=ctx.user_id, key=key).aupdate(value=value)
        return {"key": key, "created": False}
    return {"key": key, "created": True}


@tool(
    name="notes.delete",
    read_only=False,
    destructive=True,
    idempotent=True,
    open_world=False,
    timeout_seconds=10,
)
async def notes_delete(ctx: ToolContext, key: Key) -> dict[str, Any]:
    """Delete one of the user's notes by key. This cannot be undone."""
    deleted, _ = await Note.objects.filter(user_id=ctx.user_id, key=key).adelete()
    if not deleted:
        raise ToolError(f"No note named {key!r}; nothing was deleted.")
    return {"key": key, "deleted": True}
