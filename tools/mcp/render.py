"""Turn an MCP tool result into text for the model and safe HTML for the chat.

Tool output is untrusted input (DESIGN.md, security model): the HTML renderer
escapes every string it takes from the server and only inlines images whose
MIME type is an allowed raster format and whose size is under a cap.
"""

from __future__ import annotations

import base64
import binascii
import json
from html import escape
from typing import Any

import mcp_types

from tools.mcp.types import MCPCallResult

# Images larger than this are summarised instead of inlined (bytes, decoded).
MAX_INLINE_IMAGE_BYTES = 512 * 1024
_INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Embedded text resources are cut to this many characters for the model.
MAX_EMBEDDED_TEXT_CHARS = 20_000


def _b64_size(data: str) -> int:
    """Decoded size of base64 ``data`` in bytes, without decoding it."""
    stripped = data.strip()
    padding = stripped.count("=", max(0, len(stripped) - 2))
    return max(0, len(stripped) * 3 // 4 - padding)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _resource_text(
    resource: mcp_types.TextResourceContents | mcp_types.BlobResourceContents,
) -> str:
    mime = resource.mime_type or "unknown type"
    if isinstance(resource, mcp_types.TextResourceContents):
        text = resource.text
        if len(text) > MAX_EMBEDDED_TEXT_CHARS:
            more = f"\n[... {len(resource.text)} characters in all]"
            text = text[:MAX_EMBEDDED_TEXT_CHARS] + more
        return f"[embedded resource: {resource.uri} ({mime})]\n{text}"
    return f"[embedded resource: {resource.uri} ({mime}, {_b64_size(resource.blob)} bytes, binary)]"


def block_to_text(block: mcp_types.ContentBlock) -> str:
    """One content block as text for the model."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent):
        return f"[image: {block.mime_type}, {_b64_size(block.data)} bytes]"
    if isinstance(block, mcp_types.AudioContent):
        return f"[audio: {block.mime_type}, {_b64_size(block.data)} bytes]"
    if isinstance(block, mcp_types.ResourceLink):
        label = f" {block.name}" if block.name else ""
        description = f" - {block.description}" if block.description else ""
        return f"[resource: {block.uri}{label}]{description}"
    if isinstance(block, mcp_types.EmbeddedResource):
        return _resource_text(block.resource)
    return f"[{getattr(block, 'type', 'unknown')} content]"  # a future block type


def result_to_text(result: MCPCallResult) -> tuple[str, bool]:
    """The tool result the model sees, and whether it is an error.

    Text blocks are joined with blank lines. Structured content is added as JSON
    only when the result has no text block: the MCP spec (server/tools, "Structured
    Content") says a tool returning structured content SHOULD also return it
    serialised in a text block, so the model need not read it twice. Images, audio,
    resource links and embedded resources become short bracketed summaries.

    Returns:
        ``(text, is_error)`` with ``is_error`` = the server's ``isError``.
    """
    parts = [block_to_text(block) for block in result.content]
    has_text = any(isinstance(block, mcp_types.TextContent) for block in result.content)
    if result.structured_content is not None and not has_text:
        parts.append(_json(result.structured_content))
    text = "\n\n".join(p for p in parts if p)
    if not text:
        text = "(the tool returned no content)"
    return text, result.is_error


def result_parts(result: MCPCallResult) -> list[dict[str, Any]]:
    """A structured, JSON-able summary of the result for templates.

    Each part is ``{"kind": "text"|"image"|"audio"|"link"|"resource"|"json", ...}``
    with plain (unescaped) strings; templates autoescape them. Image parts carry
    ``src`` (a ``data:`` URI) only when the image is an allowed type under the size cap.
    """
    parts: list[dict[str, Any]] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append({"kind": "text", "text": block.text})
        elif isinstance(block, mcp_types.ImageContent):
            size = _b64_size(block.data)
            part: dict[str, Any] = {"kind": "image", "mime_type": block.mime_type, "size": size}
            if block.mime_type in _INLINE_IMAGE_TYPES and size <= MAX_INLINE_IMAGE_BYTES:
                try:
                    base64.b64decode(block.data, validate=True)
                except (binascii.Error, ValueError):
                    pass
                else:
                    part["src"] = f"data:{block.mime_type};base64,{block.data.strip()}"
            parts.append(part)
        elif isinstance(block, mcp_types.AudioContent):
            parts.append(
                {"kind": "audio", "mime_type": block.mime_type, "size": _b64_size(block.data)}
            )
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(
                {
                    "kind": "link",
                    "uri": block.uri,
                    "name": block.title or block.name,
                    "description": block.description or "",
                    "mime_type": block.mime_type or "",
                }
            )
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            part = {"kind": "resource", "uri": resource.uri, "mime_type": resource.mime_type or ""}
            if isinstance(resource, mcp_types.TextResourceContents):
                part["text"] = resource.text[:MAX_EMBEDDED_TEXT_CHARS]
            else:
                part["size"] = _b64_size(resource.blob)
            parts.append(part)
    if result.structured_content is not None:
        parts.append(
            {
                "kind": "json",
                "text": json.dumps(result.structured_content, indent=2, ensure_ascii=False),
            }
        )
    return parts


_SAFE_LINK_SCHEMES = ("http://", "https://")


def result_to_html(result: MCPCallResult) -> str:
    """Safe HTML for the chat's tool-result card. Every server string is escaped.

    Images inline as ``<img src="data:...">`` (allowed raster types, size-capped) with
    an escaped alt; links are clickable only for http(s) URIs, otherwise shown as text.
    """
    html: list[str] = []
    css = "mcp-result mcp-result--error" if result.is_error else "mcp-result"
    html.append(f'<div class="{css}">')
    for part in result_parts(result):
        kind = part["kind"]
        if kind == "text":
            html.append(f'<pre class="mcp-text">{escape(part["text"])}</pre>')
        elif kind == "image":
            label = (
                f"image from {result.server}.{result.tool} "
                f"({part['mime_type']}, {part['size']} bytes)"
            )
            if "src" in part:
                html.append(
                    f'<img class="mcp-image" src="{escape(part["src"])}" alt="{escape(label)}" '
                    'loading="lazy">'
                )
            else:
                html.append(f'<p class="mcp-media">[{escape(label)}, not shown]</p>')
        elif kind == "audio":
            html.append(
                f'<p class="mcp-media">[audio: {escape(part["mime_type"])}, '
                f"{part['size']} bytes]</p>"
            )
        elif kind == "link":
            uri = part["uri"]
            name = part["name"] or uri
            if uri.lower().startswith(_SAFE_LINK_SCHEMES):
                anchor = (
                    f'<a href="{escape(uri)}" rel="noopener noreferrer nofollow" '
                    f'target="_blank">{escape(name)}</a>'
                )
            else:
                anchor = f"<code>{escape(uri)}</code> {escape(name)}"
            description = f" — {escape(part['description'])}" if part["description"] else ""
            html.append(f'<p class="mcp-link">{anchor}{description}</p>')
        elif kind == "resource":
            head = f"{escape(part['uri'])} ({escape(part['mime_type'] or 'unknown type')})"
            if "text" in part:
                html.append(
                    f'<details class="mcp-resource"><summary>{head}</summary>'
                    f"<pre>{escape(part['text'])}</pre></details>"
                )
            else:
                html.append(f'<p class="mcp-resource">{head}, {part["size"]} bytes</p>')
        elif kind == "json":
            html.append(f'<pre class="mcp-json">{escape(part["text"])}</pre>')
    html.append("</div>")
    return "".join(html)
