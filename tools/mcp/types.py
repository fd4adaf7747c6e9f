"""Plain value types of the MCP client layer: tool descriptions and call results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import mcp_types


@dataclass(frozen=True, kw_only=True)
class MCPToolHints:
    """A tool's behaviour hints (MCP ``ToolAnnotations``), absent ones filled with spec defaults.

    Defaults follow the MCP specification's ``ToolAnnotations`` schema
    (https://modelcontextprotocol.io/specification/2025-11-25/schema#toolannotations):
    ``readOnlyHint`` false, ``destructiveHint`` true, ``idempotentHint`` false,
    ``openWorldHint`` true. ``destructiveHint`` and ``idempotentHint`` are meaningful
    only when ``readOnlyHint`` is false. The spec says clients MUST treat annotations as
    untrusted unless they come from a trusted server; see ``trusted``.
    """

    read_only_hint: bool = False
    destructive_hint: bool = True
    idempotent_hint: bool = False
    open_world_hint: bool = True
    title: str | None = None

    @classmethod
    def from_annotations(cls, annotations: mcp_types.ToolAnnotations | None) -> MCPToolHints:
        if annotations is None:
            return cls()
        return cls(
            read_only_hint=_or(annotations.read_only_hint, False),
            destructive_hint=_or(annotations.destructive_hint, True),
            idempotent_hint=_or(annotations.idempotent_hint, False),
            open_world_hint=_or(annotations.open_world_hint, True),
            title=annotations.title,
        )


def _or(value: bool | None, default: bool) -> bool:
    return default if value is None else bool(value)


@dataclass(frozen=True, kw_only=True)
class MCPToolInfo:
    """One tool offered by an MCP server, as the registry should register it.

    Attributes:
        server: the server's config name.
        remote_name: the tool's name on the server (what ``tools/call`` sends).
        name: ``<tool_prefix>.<remote_name>``, the registry name.
        title: display title (``Tool.title``, else ``annotations.title``, else the name).
        description: the server's description (untrusted text).
        input_schema: JSON Schema object for the arguments.
        output_schema: JSON Schema of ``structuredContent``, or None.
        hints: annotations with spec defaults applied (as sent, even when untrusted).
        trusted: copied from the server config; when False the registry/gate must not
            rely on ``hints`` to relax anything.
    """

    server: str
    remote_name: str
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    hints: MCPToolHints = field(default_factory=MCPToolHints)
    trusted: bool = False

    def gate_default(self) -> Literal["allow", "ask"]:
        """The gate's default when no admin policy matches (issue 7).

        ``allow`` only for a read-only tool of a trusted server; everything else asks.
        """
        if self.trusted and self.hints.read_only_hint:
            return "allow"
        return "ask"

    def always_allow_permitted(self) -> bool:
        """Whether a user's "always allow" may cover this tool.

        Never for a destructive tool (``destructiveHint`` defaults to true), and never for
        an untrusted server, whose hints cannot be believed.
        """
        if not self.trusted:
            return False
        return self.hints.read_only_hint or not self.hints.destructive_hint

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (for storing in the registry or the DB)."""
        return {
            "server": self.server,
            "remote_name": self.remote_name,
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "hints": {
                "read_only_hint": self.hints.read_only_hint,
                "destructive_hint": self.hints.destructive_hint,
                "idempotent_hint": self.hints.idempotent_hint,
                "open_world_hint": self.hints.open_world_hint,
                "title": self.hints.title,
            },
            "trusted": self.trusted,
        }


@dataclass(frozen=True, kw_only=True)
class MCPCallResult:
    """The outcome of one ``tools/call`` that the server answered.

    ``content`` holds the SDK's content blocks (text, image, audio, resource link,
    embedded resource); ``is_error`` is the server's ``isError`` (a tool-level
    failure the model should see, not a protocol error).
    """

    server: str
    tool: str
    content: tuple[mcp_types.ContentBlock, ...]
    structured_content: dict[str, Any] | None = None
    is_error: bool = False

    @classmethod
    def from_sdk(cls, *, server: str, tool: str, result: mcp_types.CallToolResult) -> MCPCallResult:
        return cls(
            server=server,
            tool=tool,
            content=tuple(result.content),
            structured_content=result.structured_content,
            is_error=bool(result.is_error),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (camelCase content blocks as on the wire), for a JSON column."""
        return {
            "server": self.server,
            "tool": self.tool,
            "content": [
                b.model_dump(by_alias=True, mode="json", exclude_none=True) for b in self.content
            ],
            "structuredContent": self.structured_content,
            "isError": self.is_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MCPCallResult:
        """Inverse of ``to_dict`` (validates the content blocks)."""
        result = mcp_types.CallToolResult.model_validate(
            {
                "content": data.get("content", []),
                "structuredContent": data.get("structuredContent"),
                "isError": data.get("isError", False),
            }
        )
        return cls.from_sdk(server=data.get("server", ""), tool=data.get("tool", ""), result=result)
