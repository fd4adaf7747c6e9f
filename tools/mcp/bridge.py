"""The bridge between ``MCPServer`` rows, the tool registry and the client layer.

What lives where:

* The tool list of each server is cached in ``MCPServer.tools_cached`` (schemas and
  annotations, as ``MCPToolInfo.as_dict()``). Every process (web, worker) registers
  the tools from that cache, lazily: ``mcp_registry_ensure()`` runs one query
  (names and ``updated_at`` of all servers) from ``tools_for_user`` and the
  execution path, and re-registers a server's tools when its row changed.
  ``AppConfig.ready`` cannot do it: the database is not ready there.
* A registered MCP tool is a ``ToolSpec`` named ``<prefix>.<tool>`` whose handler
  calls the server. Which connection it uses depends on the event loop it runs in
  (``mcp_connection_mode``): the web process's long-lived loop (daphne, embedded
  dispatcher) shares one supervised connection per server (``mcp_pool``); a
  Celery worker, whose tasks each run a fresh loop (``async_to_sync``), opens a
  one-shot ``mcp_session`` per call. No process needs another's sessions.
* Status (healthy, last error, failures in a row) is written on every check and
  call outcome; ``Tool`` rows of an unhealthy or disabled server get an
  ``unavailable_reason`` so the model is not offered them. A down server is
  retried: by its pooled connection's supervisor (web process), and by the
  ``tools.mcp_servers_check`` beat task (``mcp_servers_check``) otherwise.
* Audit events: ``mcp.server_changed`` (admin save, in ``tools/admin.py``),
  ``mcp.tools_refreshed``, ``mcp.server_up`` and ``mcp.server_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Literal, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.services import audit_record
from tools.events import ProgressPusher
from tools.mcp.config import MCPServerConfig
from tools.mcp.connection import MCPConnection, mcp_session
from tools.mcp.errors import (
    MCPCancelled,
    MCPClientError,
    MCPConfigError,
    MCPUnavailable,
)
from tools.mcp.pool import mcp_pool
from tools.mcp.render import MAX_INLINE_IMAGE_BYTES, result_to_text
from tools.mcp.types import MCPCallResult, MCPToolHints, MCPToolInfo
from tools.models import MCPServer, Tool
from tools.offered import tools_offered_changed
from tools.registry import (
    ToolAlreadyRegistered,
    ToolContext,
    ToolError,
    ToolResult,
    ToolSpec,
    registry,
)

logger = logging.getLogger(__name__)

# How often a running call checks whether its run was stopped (seconds).
CANCEL_POLL_SECONDS = 0.5
# Text blocks kept for the chat's rendering of a result (characters each).
MAX_STORED_TEXT_CHARS = 100_000

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # server name -> updated_at of the row whose tools are registered
_background: set[asyncio.Task[Any]] = set()


# --- connection mode -------------------------------------------------------------------


def mcp_connection_mode() -> Literal["pool", "session"]:
    """How the running event loop should reach MCP servers: ``"pool"`` or ``"session"``.

    ``settings.TOLLGATE_MCP_CONNECTIONS`` forces one; ``"auto"`` (default) picks
    ``"pool"`` only when the embedded dispatcher runs and the running loop is the
    web server's own (daphne's Twisted asyncio reactor loop, which lives as long as
    the process), and ``"session"`` everywhere else: Celery workers
    (``async_to_sync`` per task: a fresh loop each time), management commands,
    tests. A pooled connection must not outlive its loop, which is why the
    long-lived loop has to be recognised rather than assumed.
    """
    mode = getattr(settings, "TOLLGATE_MCP_CONNECTIONS", "auto")
    if mode in ("pool", "session"):
        # Checked just above; mypy does not narrow ``in`` to the literals.
        return cast('Literal["pool", "session"]', mode)
    if settings.TOLLGATE_DISPATCHER == "celery":
        return "session"
    reactor = sys.modules.get("twisted.internet.reactor")
    server_loop = getattr(reactor, "_asyncioEventloop", None)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return "session"
    return "pool" if server_loop is not None and server_loop is running else "session"


@contextlib.asynccontextmanager
async def _connected(server_id: int, config: MCPServerConfig) -> AsyncIterator[MCPConnection]:
    """A ready-or-down connection to ``config``: pooled, or one-shot for this block."""
    if mcp_connection_mode() == "pool":
        yield await mcp_pool().get(
            config,
            on_tools_changed=_on_tools_changed(server_id),
            on_health_change=_on_health_change(server_id),
        )
        return
    async with mcp_session(config) as connection:
        yield connection


# --- the registry ------------------------------------------------------------------------


def mcp_tool_infos(*, server: MCPServer) -> list[MCPToolInfo]:
    """The server's cached tools, named with its *current* prefix and trust flag."""
    infos = []
    for item in server.tools_cached or []:
        try:
            hints = item.get("hints") or {}
            infos.append(
                MCPToolInfo(
                    server=server.name,
                    remote_name=item["remote_name"],
                    name=f"{server.tool_prefix}.{item['remote_name']}",
                    title=item.get("title") or item["remote_name"],
                    description=item.get("description") or "",
                    input_schema=dict(item.get("input_schema") or {"type": "object"}),
                    output_schema=item.get("output_schema"),
                    hints=MCPToolHints(
                        read_only_hint=bool(hints.get("read_only_hint", False)),
                        destructive_hint=bool(hints.get("destructive_hint", True)),
                        idempotent_hint=bool(hints.get("idempotent_hint", False)),
                        open_world_hint=bool(hints.get("open_world_hint", True)),
                        title=hints.get("title"),
                    ),
                    trusted=server.trusted,
                )
            )
        except (KeyError, TypeError, AttributeError):
            logger.warning("MCP server %s: skipping a malformed cached tool", server.name)
    return infos


def _description(server_name: str, info: MCPToolInfo) -> str:
    # The server's name leads, so an approval card says where the tool comes from.
    text = info.description.strip() or info.title
    return f"[MCP server: {server_name}] {text}"


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    parameters = dict(schema)
    parameters["type"] = "object"  # providers require an object schema at the top
    parameters.setdefault("properties", {})
    return parameters


def mcp_tool_spec(*, server: MCPServer, info: MCPToolInfo) -> ToolSpec:
    """The ``ToolSpec`` of one MCP tool (see ``mcp_tools_register``).

    Raises ``ValueError`` when the name cannot be a tool name (too long on the wire).
    """
    hints = info.hints
    return ToolSpec(
        name=info.name,
        description=_description(server.name, info),
        parameters=_parameters(info.input_schema),
        handler=_handler(server_name=server.name, remote_name=info.remote_name, name=info.name),
        read_only=hints.read_only_hint,
        destructive=hints.destructive_hint,
        # Only a trusted server's word makes a call safe to repeat after a worker died
        # (invocation_recover_interrupted re-runs idempotent tools).
        idempotent=hints.idempotent_hint and server.trusted,
        open_world=hints.open_world_hint,
        # A one-shot session spends up to the connect timeout starting the server.
        timeout_seconds=server.call_timeout_seconds + server.connect_timeout_seconds + 5,
        source=server.source,
        enabled_by_default=True,
        metadata={
            "trusted": server.trusted,
            "mcp_server": server.name,
            "mcp_tool": info.remote_name,
            "title": info.title,
        },
    )


def mcp_tools_register(*, server: MCPServer) -> list[ToolSpec]:
    """Register the server's cached tools in this process's registry; return the specs.

    Each becomes ``ToolSpec(name="<prefix>.<tool>", parameters=<input schema, type
    object>, description="[MCP server: <name>] ...", hints from the annotations
    (``destructiveHint`` defaults to true per the MCP spec), source="mcp:<name>",
    metadata={"trusted", "mcp_server", "mcp_tool"}, timeout = call + connect
    timeout)``; ``idempotent`` only for a trusted server. Tools of this server
    no longer listed are unregistered. A tool
    whose name clashes with a tool of another source (a built-in) or cannot be
    a provider tool name is skipped with a warning. Does not touch the database.
    """
    specs: list[ToolSpec] = []
    for info in mcp_tool_infos(server=server):
        try:
            spec = mcp_tool_spec(server=server, info=info)
        except ValueError as exc:
            logger.warning("MCP server %s: tool %r skipped: %s", server.name, info.name, exc)
            continue
        existing = registry.get(spec.name)
        if existing is not None and existing.source != spec.source:
            logger.warning(
                "MCP server %s: tool %s skipped, the name belongs to %s",
                server.name,
                spec.name,
                existing.source,
            )
            continue
        try:
            registry.register(spec, replace=True)
        except ToolAlreadyRegistered as exc:
            logger.warning("MCP server %s: %s", server.name, exc)
            continue
        specs.append(spec)
    names = {spec.name for spec in specs}
    for old in registry.all():
        if old.source == server.source and old.name not in names:
            registry.unregister(old.name)
    with _lock:
        _loaded[server.name] = server.updated_at
    return specs


def mcp_tools_unregister(*, server_name: str) -> None:
    """Remove every tool of server ``server_name`` from this process's registry."""
    source = f"mcp:{server_name}"
    for spec in registry.all():
        if spec.source == source:
            registry.unregister(spec.name)
    with _lock:
        _loaded.pop(server_name, None)


def mcp_registry_ensure() -> None:
    """Bring this process's registry up to date with the ``MCPServer`` rows.

    One query (names and ``updated_at``); servers whose row changed since this
    process registered them are loaded and re-registered, deleted ones are
    unregistered. Call from sync code (it uses the ORM). Cheap enough to call on
    every tool lookup that matters.
    """
    stamps = dict(MCPServer.objects.values_list("name", "updated_at"))
    with _lock:
        loaded = dict(_loaded)
    if stamps == loaded:
        return
    for name in loaded.keys() - stamps.keys():
        mcp_tools_unregister(server_name=name)
    changed = [name for name, stamp in stamps.items() if loaded.get(name) != stamp]
    for server in MCPServer.objects.filter(name__in=changed):
        mcp_tools_register(server=server)


# --- Tool rows, status, cache -----------------------------------------------------------


def _unavailable_reason(server: MCPServer) -> str:
    if not server.enabled:
        return f"MCP server {server.name!r} is disabled."
    if not server.healthy:
        why = server.last_error or "not connected yet (refresh its tool list in admin)"
        return f"MCP server {server.name!r} is down: {why}"[:2000]
    return ""


def mcp_tool_rows_sync(*, server: MCPServer) -> None:
    """Create or update the ``Tool`` rows of the server's cached tools.

    New rows start enabled (the gate still decides each call). Description and
    hints follow the cache; the admin's ``enabled`` and ``groups`` are kept.
    ``unavailable_reason`` says why while the server is disabled or down, and
    "no longer offered" for rows of tools the server stopped listing. A name
    taken by a tool of another source is left alone.
    """
    reason = _unavailable_reason(server)
    infos = {info.name: info for info in mcp_tool_infos(server=server)}
    with transaction.atomic():
        rows = {
            row.name: row
            for row in Tool.objects.select_for_update().filter(
                Q(source=server.source) | Q(name__in=list(infos))
            )
        }
        for name, info in infos.items():
            values = {
                "description": _description(server.name, info),
                "read_only": info.hints.read_only_hint,
                "destructive": info.hints.destructive_hint,
                "idempotent": info.hints.idempotent_hint,
                "open_world": info.hints.open_world_hint,
                "source": server.source,
                "unavailable_reason": reason,
            }
            row = rows.get(name)
            if row is None:
                Tool.objects.get_or_create(name=name, defaults={**values, "enabled": True})
                continue
            if row.source != server.source:
                continue  # a built-in (or another server) owns the name
            changed = [key for key, value in values.items() if getattr(row, key) != value]
            if changed:
                for key in changed:
                    setattr(row, key, values[key])
                row.save(update_fields=[*changed, "updated_at"])
        gone = f"No longer offered by MCP server {server.name!r}."
        for name, row in rows.items():
            if name not in infos and row.source == server.source and row.unavailable_reason != gone:
                row.unavailable_reason = gone
                row.save(update_fields=["unavailable_reason", "updated_at"])


def mcp_tool_rows_retire(*, server_name: str, reason: str) -> None:
    """Mark every ``Tool`` row of server ``server_name`` unavailable (server deleted)."""
    Tool.objects.filter(source=f"mcp:{server_name}").update(
        unavailable_reason=reason, updated_at=timezone.now()
    )
    tools_offered_changed()


def mcp_server_health_record(
    *, server_id: int, healthy: bool, error: str = "", actor: Any = None
) -> bool:
    """Store a check's or a call's outcome; return whether the server's health changed.

    Writes ``healthy``, ``last_error``, ``last_checked_at`` and ``failures`` (with a
    queryset update: ``updated_at`` is left alone, so no process re-registers
    anything), updates the ``Tool`` rows' availability, and on a change (or the
    first check) audits ``mcp.server_up`` / ``mcp.server_down``. Locks the row.
    """
    error = (error or "")[:4000]
    with transaction.atomic():
        server = MCPServer.objects.select_for_update().filter(pk=server_id).first()
        if server is None:
            return False
        changed = server.healthy != healthy or server.last_checked_at is None
        previous_error = server.last_error
        server.healthy = healthy
        server.last_error = "" if healthy else error
        server.last_checked_at = timezone.now()
        server.failures = 0 if healthy else server.failures + 1
        MCPServer.objects.filter(pk=server_id).update(
            healthy=server.healthy,
            last_error=server.last_error,
            last_checked_at=server.last_checked_at,
            failures=server.failures,
        )
        if changed or previous_error != server.last_error:
            mcp_tool_rows_sync(server=server)
        if changed:
            audit_record(
                action="mcp.server_up" if healthy else "mcp.server_down",
                actor=actor,
                target_type="mcp_server",
                target_id=server.pk,
                data={"server": server.name, "reason": server.last_error},
            )
    return changed


def mcp_server_tools_store(
    *, server_id: int, tools: list[MCPToolInfo], actor: Any = None
) -> MCPServer | None:
    """Cache a freshly listed tool list, register it here, and sync the ``Tool`` rows.

    A list equal to the cached one changes nothing but ``tools_refreshed_at`` (so
    other processes are not made to re-register). A changed list bumps
    ``updated_at`` (other processes re-register on their next lookup) and is
    audited as ``mcp.tools_refreshed`` with the names added and removed.
    Returns the server, or None if it was deleted meanwhile.
    """
    data = [tool.as_dict() for tool in tools]
    now = timezone.now()
    with transaction.atomic():
        server = MCPServer.objects.select_for_update().filter(pk=server_id).first()
        if server is None:
            return None
        before = {item.get("remote_name") for item in server.tools_cached or []}
        after = {item["remote_name"] for item in data}
        changed = data != server.tools_cached
        server.tools_refreshed_at = now
        if changed:
            server.tools_cached = data
            server.save(update_fields=["tools_cached", "tools_refreshed_at", "updated_at"])
        else:
            MCPServer.objects.filter(pk=server_id).update(tools_refreshed_at=now)
        mcp_tool_rows_sync(server=server)
        audit_record(
            action="mcp.tools_refreshed",
            actor=actor,
            target_type="mcp_server",
            target_id=server.pk,
            data={
                "server": server.name,
                "tools": len(data),
                "changed": changed,
                "added": sorted(after - before),
                "removed": sorted(before - after),
            },
        )
    mcp_tools_register(server=server)
    return server


# --- checks and refreshes ------------------------------------------------------------------


async def mcp_server_refresh(
    *, server_id: int, actor: Any = None, reconnect: bool = False
) -> MCPServer:
    """Connect to the server, list its tools afresh, cache and register them.

    ``reconnect=True`` first drops this process's pooled connection (admin
    "Reconnect"). The outcome is recorded (``mcp_server_health_record``); on
    success the list is stored (``mcp_server_tools_store``). Returns the server
    row as stored afterwards.

    Raises:
        MCPServer.DoesNotExist: no such server.
        MCPClientError: it could not be reached or listed; the message says why
            (the server is then marked down with that message).
    """
    server = await MCPServer.objects.aget(pk=server_id)
    try:
        config = server.to_config()
        if reconnect and mcp_connection_mode() == "pool":
            await mcp_pool().remove(server.name)
        async with _connected(server.pk, config) as connection:
            if not connection.healthy:
                await connection.reconnect_now()
                await connection.wait_ready(config.connect_timeout_seconds)
            if not connection.healthy:
                raise MCPUnavailable(server.name, connection.last_error or "not connected")
            tools = await connection.list_tools(refresh=True)
    except MCPClientError as exc:
        reason = exc.reason if isinstance(exc, MCPUnavailable) else str(exc)
        await sync_to_async(mcp_server_health_record)(
            server_id=server.pk, healthy=False, error=reason, actor=actor
        )
        raise
    await sync_to_async(mcp_server_health_record)(server_id=server.pk, healthy=True, actor=actor)
    await sync_to_async(mcp_server_tools_store)(server_id=server.pk, tools=tools, actor=actor)
    return await MCPServer.objects.aget(pk=server_id)


def _retry_due(server: MCPServer, now: Any) -> bool:
    if server.last_checked_at is None:
        return True
    initial = float(getattr(settings, "TOLLGATE_MCP_RECONNECT_INITIAL_SECONDS", 0.5))
    maximum = float(getattr(settings, "TOLLGATE_MCP_RECONNECT_MAX_SECONDS", 60.0))
    wait = min(maximum, initial * (2 ** min(server.failures, 30)))
    return now - server.last_checked_at >= timedelta(seconds=wait)


async def mcp_servers_check() -> list[str]:
    """Retry the enabled servers that are down, with backoff; return the names tried.

    For processes without a pooled connection that reconnects on its own (Celery
    workers; beat runs it as ``tools.mcp_servers_check``). A server is retried once
    its wait has passed: the reconnect settings' initial wait doubled per failure
    in a row, up to the maximum. Each try is ``mcp_server_refresh``.
    """
    now = timezone.now()
    tried = []
    async for server in MCPServer.objects.filter(enabled=True, healthy=False):
        if not _retry_due(server, now):
            continue
        tried.append(server.name)
        try:
            await mcp_server_refresh(server_id=server.pk)
        except MCPClientError as exc:
            logger.info("MCP server %s still down: %s", server.name, exc)
    return tried


# --- callbacks of pooled connections ---------------------------------------------------------


def _on_health_change(server_id: int) -> Any:
    async def callback(connection: MCPConnection, healthy: bool, reason: str | None) -> None:
        # Runs in a task of its own inside the connection supervisor: never raise.
        try:
            await sync_to_async(mcp_server_health_record)(
                server_id=server_id, healthy=healthy, error=reason or ""
            )
            if healthy and connection.tools_snapshot:
                await sync_to_async(mcp_server_tools_store)(
                    server_id=server_id, tools=connection.tools_snapshot
                )
        except Exception:
            logger.exception("recording MCP server %s health failed", connection.config.name)

    return callback


def _on_tools_changed(server_id: int) -> Any:
    async def callback(connection: MCPConnection) -> None:
        # Called inside the session's receive loop: listing from here would wait on
        # the loop that must deliver the answer, so the refresh runs in its own task.
        task = asyncio.get_running_loop().create_task(_tools_changed_refresh(server_id, connection))
        _background.add(task)
        task.add_done_callback(_background.discard)

    return callback


async def _tools_changed_refresh(server_id: int, connection: MCPConnection) -> None:
    try:
        tools = await connection.list_tools(refresh=True)
        await sync_to_async(mcp_server_tools_store)(server_id=server_id, tools=tools)
    except Exception:
        logger.exception(
            "refreshing MCP server %s after list_changed failed", connection.config.name
        )


# --- the handler ---------------------------------------------------------------------------------


def _cut(mapping: dict[str, Any], key: str, limit: int, replacement: str | None = None) -> None:
    value = mapping.get(key)
    if isinstance(value, str) and len(value) > limit:
        mapping[key] = value[:limit] if replacement is None else replacement


def _stored_result(result: MCPCallResult) -> dict[str, Any]:
    """``result.to_dict()`` cut to a size fit for a JSON column: media over the inline
    cap lose their data (the chat then says "not shown"), long texts are cut."""
    media_limit = MAX_INLINE_IMAGE_BYTES * 4 // 3 + 4  # base64 characters
    data = result.to_dict()
    for block in data.get("content", []):
        _cut(block, "data", media_limit, "")
        _cut(block, "text", MAX_STORED_TEXT_CHARS)
        resource = block.get("resource")
        if isinstance(resource, dict):
            _cut(resource, "blob", media_limit, "")
            _cut(resource, "text", MAX_STORED_TEXT_CHARS)
    return data


async def _watch_cancel(ctx: ToolContext, event: asyncio.Event) -> None:
    check = ctx.cancel_requested
    if check is None:
        return
    while not event.is_set():
        try:
            if await check():
                event.set()
                return
        except Exception:
            logger.exception("run cancel check failed")
        await asyncio.sleep(CANCEL_POLL_SECONDS)


def _handler(*, server_name: str, remote_name: str, name: str) -> Any:
    async def handler(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Call ``remote_name`` on MCP server ``server_name`` (see the module docstring).

        Returns a ``ToolResult``: the text the model reads (``result_to_text``), the
        server's ``isError``, and ``metadata["mcp_result"]`` (``to_dict()``) for the
        chat. Raises ``ToolError`` with a clear message when the server is disabled,
        down, exits mid-call, times out, rejects the call, or the run was stopped.
        """
        server = await MCPServer.objects.filter(name=server_name).afirst()
        if server is None or not server.enabled:
            state = "deleted" if server is None else "disabled"
            raise ToolError(f"MCP server {server_name!r} is {state}; {name} was not run.")
        try:
            config = server.to_config()
        except MCPConfigError as exc:
            raise ToolError(f"{exc} {name} was not run.") from exc
        on_progress = None
        if ctx.conversation_id is not None and ctx.invocation_id is not None:
            on_progress = ProgressPusher(
                conversation_id=ctx.conversation_id,
                invocation_id=ctx.invocation_id,
                run_id=ctx.run_id,
            )
        cancel = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(_watch_cancel(ctx, cancel))
        try:
            async with _connected(server.pk, config) as connection:
                result = await connection.call_tool(
                    remote_name,
                    arguments,
                    timeout_seconds=config.call_timeout_seconds,
                    on_progress=on_progress,
                    cancel_event=cancel,
                )
        except MCPUnavailable as exc:
            await sync_to_async(mcp_server_health_record)(
                server_id=server.pk, healthy=False, error=exc.reason
            )
            raise ToolError(f"{exc} The tool {name} did not run (or did not finish).") from exc
        except MCPCancelled as exc:
            raise ToolError(f"{exc} The run was stopped.") from exc
        except MCPClientError as exc:  # timeout, protocol error, invalid arguments
            raise ToolError(str(exc)) from exc
        finally:
            watcher.cancel()
        if not server.healthy:
            await sync_to_async(mcp_server_health_record)(server_id=server.pk, healthy=True)
        text, is_error = result_to_text(result)
        return ToolResult(
            text=text,
            is_error=is_error,
            metadata={"mcp_server": server_name, "mcp_result": _stored_result(result)},
        )

    return handler
