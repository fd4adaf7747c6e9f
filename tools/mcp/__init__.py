"""MCP (Model Context Protocol) client layer: connect to servers, list and call their tools.

Public API (see each module's docstrings):

* ``MCPServerConfig`` - how to reach a server (stdio or Streamable HTTP).
* ``MCPConnection`` - one supervised session; ``mcp_session()`` for one-shot use,
  ``mcp_pool()`` for the long-lived per-loop pool.
* ``MCPToolInfo`` / ``MCPToolHints`` - a tool as the registry registers it.
* ``MCPCallResult`` with ``result_to_text()`` (for the model) and
  ``result_to_html()`` / ``result_parts()`` (for the chat).
* Errors: ``MCPClientError`` and its subclasses.
"""

from __future__ import annotations

from tools.mcp.config import MCPServerConfig
from tools.mcp.connection import MCPConnection, mcp_session, tool_arguments_validate
from tools.mcp.errors import (
    MCPCancelled,
    MCPClientError,
    MCPConfigError,
    MCPInvalidArguments,
    MCPProtocolError,
    MCPTimeout,
    MCPUnavailable,
)
from tools.mcp.pool import MCPPool, mcp_pool
from tools.mcp.render import result_parts, result_to_html, result_to_text
from tools.mcp.types import MCPCallResult, MCPToolHints, MCPToolInfo

__all__ = [
    "MCPCallResult",
    "MCPCancelled",
    "MCPClientError",
    "MCPConfigError",
    "MCPConnection",
    "MCPInvalidArguments",
    "MCPPool",
    "MCPProtocolError",
    "MCPServerConfig",
    "MCPTimeout",
    "MCPToolHints",
    "MCPToolInfo",
    "MCPUnavailable",
    "mcp_pool",
    "mcp_session",
    "result_parts",
    "result_to_html",
    "result_to_text",
    "tool_arguments_validate",
]
