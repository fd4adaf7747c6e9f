"""The process's MCP connections, one pool per running event loop.

Which variant the engine should use:

* Web process / embedded mode (daphne runs one long-lived asyncio loop; the
  embedded dispatcher runs the agent loop as tasks on it): use
  ``await mcp_pool().get(config)``. Servers start once, stay up, reconnect on
  their own, and their tool lists are cached.
* Celery worker: a task that runs ``asyncio.run(...)`` gets a fresh loop each
  time, and a connection cannot outlive its loop (its supervisor task and the
  server's pipes belong to it). Use ``async with mcp_session(config) as conn:``
  inside the task's coroutine: start, call, stop. If the worker keeps one
  long-lived loop instead (a loop thread per worker process), ``mcp_pool()``
  works there too; call ``await mcp_pool().close_all()`` before that loop ends.

``mcp_pool()`` returns the pool of the *running* loop, so a pool entry is always
created inside the loop that uses it. Nothing here is shared between processes:
each process holds its own sessions, as DESIGN.md requires.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.conf import settings

from tools.mcp.config import MCPServerConfig
from tools.mcp.connection import HealthCallback, MCPConnection, ToolsChangedCallback

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MCPPool] = weakref.WeakKeyDictionary()


def _backoff_settings() -> tuple[float, float]:
    try:
        return (
            float(getattr(settings, "TOLLGATE_MCP_RECONNECT_INITIAL_SECONDS", 0.5)),
            float(getattr(settings, "TOLLGATE_MCP_RECONNECT_MAX_SECONDS", 60.0)),
        )
    except Exception:  # Django not configured: library defaults
        return 0.5, 60.0


class MCPPool:
    """Long-lived connections of one event loop, keyed by ``MCPServerConfig.name``."""

    def __init__(self) -> None:
        self._connections: dict[str, MCPConnection] = {}
        self._lock = asyncio.Lock()

    async def get(
        self,
        config: MCPServerConfig,
        *,
        on_tools_changed: ToolsChangedCallback | None = None,
        on_health_change: HealthCallback | None = None,
    ) -> MCPConnection:
        """The connection for ``config.name``, created and started on first use.

        Never raises because the server is down: the returned connection then has
        ``healthy == False`` and ``last_error`` set, its calls raise ``MCPUnavailable``,
        and it keeps retrying in the background. A config that differs from the
        pooled one (edited in admin) replaces the old connection. The callbacks
        are those of the call that creates the connection (see ``MCPConnection``).
        """
        async with self._lock:
            connection = self._connections.get(config.name)
            stale = None
            if connection is not None and (
                connection.config != config or connection.state == "closed"
            ):
                stale, connection = connection, None
            if connection is None:
                initial, maximum = _backoff_settings()
                connection = MCPConnection(
                    config,
                    on_tools_changed=on_tools_changed,
                    on_health_change=on_health_change,
                    reconnect_initial_seconds=initial,
                    reconnect_max_seconds=maximum,
                )
                self._connections[config.name] = connection
        if stale is not None:
            await stale.close()
        await connection.start(raise_on_failure=False)
        return connection

    def peek(self, name: str) -> MCPConnection | None:
        """The pooled connection for ``name`` without starting anything."""
        return self._connections.get(name)

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: {"healthy", "state", "last_error", "tools"}}`` for every pooled server."""
        return {
            name: {
                "healthy": c.healthy,
                "state": c.state,
                "last_error": c.last_error,
                "tools": len(c.tools_snapshot),
            }
            for name, c in self._connections.items()
        }

    async def remove(self, name: str) -> None:
        """Close and forget the connection for ``name`` (server deleted or disabled)."""
        async with self._lock:
            connection = self._connections.pop(name, None)
        if connection is not None:
            await connection.close()

    async def close_all(self) -> None:
        """Close every connection (call before the loop ends)."""
        async with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


def mcp_pool() -> MCPPool:
    """The MCP pool of the running event loop (created on first use).

    Raises:
        RuntimeError: no event loop is running (call from async code).
    """
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = MCPPool()
        _pools[loop] = pool
    return pool
