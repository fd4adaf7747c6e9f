"""Reads: which tools a user may use, and what a settled invocation says to the model."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.db.models import Exists, Q
from django.utils import timezone

from tools import offered
from tools.mcp.bridge import mcp_registry_ensure
from tools.models import Note, Tool, ToolInvocation
from tools.registry import ToolSpec, registry


def _usable_specs(*, user_id: int, active: bool = False) -> list[ToolSpec]:
    """The registered tools whose ``Tool`` row is enabled, available, and has no
    group or a group the user is in: one query, plus one for MCP servers
    (``active``: and only if the user is active, checked in the same query)."""
    mcp_registry_ensure()
    rows = Tool.objects.filter(enabled=True, unavailable_reason="").filter(
        Q(groups__isnull=True) | Q(groups__user__id=user_id)
    )
    if active:
        rows = rows.filter(Exists(get_user_model().objects.filter(pk=user_id, is_active=True)))
    names = set(rows.values_list("name", flat=True).distinct())
    return [spec for spec in registry.all() if spec.name in names]


def tools_for_user(*, user: Any) -> list[ToolSpec]:
    """The tools ``user`` may be offered, sorted by name (one query, plus one for MCP servers).

    A tool qualifies when it is registered in this process AND its ``Tool`` row
    is enabled AND the row has no groups or ``user`` is in one of them AND the
    row has no ``unavailable_reason``. Anonymous and inactive users get ``[]``.
    A tool without a ``Tool`` row (not yet synced) is not offered: deny by default.
    """
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    return _usable_specs(user_id=user.pk)


#: Seconds this process reuses a user's list of tools offered to the model.
OFFERED_CACHE_SECONDS = 5.0
_OFFERED_MAX_USERS = 10_000


def tools_offered_for_user(*, user: Any) -> list[ToolSpec]:
    """``tools_for_user`` for a model call's tool list, reused up to ``OFFERED_CACHE_SECONDS``.

    It was two queries per model call (about 1.7 ms). What is offered to a model
    is advisory: recording a call and running it check the tool afresh
    (``tools.services``), so a tool disabled meanwhile is refused, never run.
    Changes in this process (``Tool`` and ``MCPServer`` rows, group membership,
    the registry) take effect at once (``tools.offered.tools_offered_changed``);
    changes made in another process, within ``OFFERED_CACHE_SECONDS``.
    """
    now = time.monotonic()
    hit = offered.cache.get(user.pk)
    if hit is not None and hit[0] > now and hit[1] == registry.version:
        return hit[2]
    version = registry.version
    specs = tools_for_user(user=user)
    if len(offered.cache) >= _OFFERED_MAX_USERS:
        offered.cache.clear()
    offered.cache[user.pk] = (now + OFFERED_CACHE_SECONDS, version, specs)
    return specs


def tool_get_for_user(*, user: Any, name: str) -> ToolSpec | None:
    """The tool called ``name`` (dotted) if ``user`` may use it, else ``None``."""
    for spec in tools_for_user(user=user):
        if spec.name == name:
            return spec
    return None


def tool_names_for_user_id(*, user_id: int) -> set[str]:
    """Names of the tools user ``user_id`` may use (same rules as ``tools_for_user``;
    an inactive or unknown user may use none). One query, plus one for MCP servers."""
    return {spec.name for spec in _usable_specs(user_id=user_id, active=True)}


def invocation_tool_message(*, invocation: ToolInvocation) -> dict[str, str]:
    """The OpenAI-format tool message answering a settled invocation.

    ``{"role": "tool", "tool_call_id": ..., "content": ...}``; the content is the
    stored result (errors included), or a short status line when it is empty.
    """
    content = invocation.result or invocation.error
    if not content:
        content = f"Tool call {invocation.status}."
    return {"role": "tool", "tool_call_id": invocation.tool_call_id, "content": content}


def invocation_ids_interrupted(
    *, grace_seconds: float = 60.0, now: dt.datetime | None = None, message_id: int | None = None
) -> list[int]:
    """Ids of invocations left ``running`` past their tool's timeout plus ``grace_seconds``.

    Those were started by a worker that died (or is hung); the recovery job
    passes each to ``invocation_recover_interrupted``. Unregistered tools count
    as timeout 0. ``message_id``: only that assistant message's calls (one
    tool turn, as a run's execution step checks).
    """
    mcp_registry_ensure()  # an MCP tool's timeout is known only once it is registered
    now = now or timezone.now()
    stuck = []
    running = ToolInvocation.objects.filter(
        status=ToolInvocation.Status.RUNNING, started_at__isnull=False
    )
    if message_id is not None:
        running = running.filter(message_id=message_id)
    rows = running.values_list("pk", "tool_name", "started_at")
    for pk, tool_name, started_at in rows:
        spec = registry.get(tool_name)
        timeout = spec.timeout_seconds if spec else 0.0
        # Never None: the rows are filtered on started_at__isnull=False.
        started = cast(dt.datetime, started_at)
        if started <= now - dt.timedelta(seconds=timeout + grace_seconds):
            stuck.append(pk)
    return stuck


def workspace_owned_by(*, user: Any, conversation_id: int) -> bool:
    """Whether ``user`` owns the conversation whose sandbox workspace this is.

    Only code tools write workspaces, and every invocation row records its
    user and conversation, so ownership is answered without importing
    ``conversations`` (one query).
    """
    if not getattr(user, "is_authenticated", False):
        return False
    return ToolInvocation.objects.filter(user_id=user.pk, conversation_id=conversation_id).exists()


def notes_for_user(*, user: Any) -> Any:
    """``user``'s notes (what the ``notes.*`` tools remember), most recent first: a
    queryset of ``Note``."""
    return Note.objects.filter(user=user).order_by("-updated_at", "key")
