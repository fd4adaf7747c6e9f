"""This process's cache of the tools offered to each user, and what forgets it.

``tools.selectors.tools_offered_for_user`` fills :data:`cache`; the functions
here empty it when what a user may be offered changes. A module of its own,
below both ``tools.selectors`` and ``tools.mcp.bridge``: the selectors load
MCP tools through the bridge, and the bridge forgets the cache when it retires
a server's tools, so neither has to import the other.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tools.registry import ToolSpec

#: user id -> (monotonic expiry, registry version, specs)
cache: dict[int, tuple[float, int, list[ToolSpec]]] = {}


def tools_offered_changed(**_signal: Any) -> None:
    """What users may be offered changed: forget the cached lists now and again when
    the current transaction commits, so no thread caches the old rows in between.

    Connected to the ``Tool``/``MCPServer``/group signals (``ToolsConfig.ready``);
    call it after a bulk ``update()`` of ``Tool`` rows, which sends none.
    """
    tools_offered_cache_clear()
    transaction.on_commit(tools_offered_cache_clear)


def tools_offered_cache_clear(**_signal: Any) -> None:
    """Forget every cached list of tools offered (also a signal receiver)."""
    cache.clear()
