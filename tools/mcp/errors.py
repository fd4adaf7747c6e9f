"""Errors raised by the MCP client layer. Each message is safe to show a user or a model."""

from __future__ import annotations


class MCPClientError(Exception):
    """Base class: something went wrong talking to an MCP server."""


class MCPConfigError(MCPClientError, ValueError):
    """The server configuration is invalid or refers to an unset environment variable."""


class MCPUnavailable(MCPClientError):
    """The server is not running (failed to start, crashed, or is reconnecting).

    ``server`` names it; ``reason`` is the last error seen (may include the tail
    of the server's stderr).
    """

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"MCP server {server!r} is unavailable: {reason}")


class MCPTimeout(MCPClientError):
    """A call ran past its timeout; MCP ``notifications/cancelled`` was sent for it."""

    def __init__(self, server: str, tool: str, seconds: float) -> None:
        self.server = server
        self.tool = tool
        self.seconds = seconds
        super().__init__(
            f"MCP tool {tool!r} on server {server!r} timed out after {seconds:g} s "
            "and was cancelled."
        )


class MCPCancelled(MCPClientError):
    """The caller cancelled a call (run stopped); MCP ``notifications/cancelled`` was sent."""

    def __init__(self, server: str, tool: str) -> None:
        self.server = server
        self.tool = tool
        super().__init__(f"MCP tool {tool!r} on server {server!r} was cancelled.")


class MCPInvalidArguments(MCPClientError, ValueError):
    """Arguments do not match the tool's input schema; nothing was sent to the server."""


class MCPProtocolError(MCPClientError):
    """The server answered with a JSON-RPC error (e.g. unknown tool) instead of a result."""

    def __init__(self, server: str, tool: str, code: int, message: str) -> None:
        self.server = server
        self.tool = tool
        self.code = code
        super().__init__(f"MCP server {server!r} rejected {tool!r}: {message} (code {code})")
