"""Built-in tools. Importing this package registers them in ``tools.registry.registry``.

Imported by ``ToolsConfig.ready``; ``tools_sync`` then creates their ``Tool`` rows.
"""

from __future__ import annotations

from tools.builtin import calc, clock, code, http, notes

__all__ = ["calc", "clock", "code", "http", "notes"]
