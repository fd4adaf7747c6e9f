"""MCP config validation and result rendering: pure functions, no server needed."""

from __future__ import annotations

import base64

import mcp_types
import pytest

from tools.mcp import (
    MCPCallResult,
    MCPConfigError,
    MCPServerConfig,
    result_parts,
    result_to_html,
    result_to_text,
)


def test_config_validation():
    with pytest.raises(MCPConfigError, match="command"):
        MCPServerConfig(name="x", transport="stdio")
    with pytest.raises(MCPConfigError, match="URL"):
        MCPServerConfig(name="x", transport="http", url="ftp://example")
    with pytest.raises(MCPConfigError, match="prefix"):
        MCPServerConfig(name="x", command="y", tool_prefix="has.dot")
    with pytest.raises(MCPConfigError, match="environment variable"):
        MCPServerConfig(name="x", command="y", env={"KEY": "not a var name"})
    with pytest.raises(MCPConfigError, match="positive"):
        MCPServerConfig(name="x", command="y", call_timeout_seconds=0)
    config = MCPServerConfig(name="srv", command="y", env={"B": "VB", "A": "VA"})
    assert config.tool_prefix == "srv"
    assert config == MCPServerConfig(name="srv", command="y", env={"A": "VA", "B": "VB"})
    assert hash(config)


def test_secret_values_are_read_from_the_environment_at_connect_time(monkeypatch):
    config = MCPServerConfig(
        name="h", transport="http", url="https://mcp.example/mcp", headers={"X-Key": "TG_T_KEY"}
    )
    assert "secret" not in repr(config)
    monkeypatch.setenv("TG_T_KEY", "secret")
    assert config.resolved_headers() == {"X-Key": "secret"}
    monkeypatch.delenv("TG_T_KEY")
    with pytest.raises(MCPConfigError, match="TG_T_KEY"):
        config.resolved_headers()


def _result(*blocks, structured=None, is_error=False) -> MCPCallResult:
    return MCPCallResult(
        server="srv",
        tool="t<x>",
        content=tuple(blocks),
        structured_content=structured,
        is_error=is_error,
    )


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()


def test_html_escapes_everything_the_server_sends():
    result = _result(
        mcp_types.TextContent(type="text", text="<script>alert(1)</script>"),
        mcp_types.ResourceLink(
            type="resource_link", uri="javascript:alert(1)", name='x" onclick="evil'
        ),
        mcp_types.ResourceLink(
            type="resource_link", uri="https://example.com/?a=1&b=<2>", name="ok"
        ),
        mcp_types.ImageContent(type="image", data=PNG, mime_type="image/png"),
        mcp_types.ImageContent(type="image", data=PNG, mime_type="image/svg+xml"),
    )
    html = result_to_html(result)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript' not in html  # only http(s) links are clickable
    assert 'onclick="evil' not in html
    assert 'href="https://example.com/?a=1&amp;b=&lt;2&gt;"' in html
    assert html.count("<img ") == 1  # svg is never inlined
    assert 'alt="image from srv.t&lt;x&gt; (image/png, 48 bytes)"' in html
    assert "(image/svg+xml, 48 bytes), not shown]" in html


def test_large_or_invalid_images_are_not_inlined():
    big = base64.b64encode(b"\0" * (600 * 1024)).decode()
    parts = result_parts(
        _result(
            mcp_types.ImageContent(type="image", data=big, mime_type="image/png"),
            mcp_types.ImageContent(type="image", data="not base64!!", mime_type="image/png"),
        )
    )
    assert [("src" in p) for p in parts] == [False, False]
    assert parts[0]["size"] == 600 * 1024


def test_text_for_the_model():
    result = _result(
        mcp_types.TextContent(type="text", text="first"),
        mcp_types.ImageContent(type="image", data=PNG, mime_type="image/png"),
        mcp_types.AudioContent(type="audio", data=PNG, mime_type="audio/wav"),
        mcp_types.ResourceLink(
            type="resource_link", uri="file:///a.txt", name="a.txt", description="the file"
        ),
        mcp_types.EmbeddedResource(
            type="resource",
            resource=mcp_types.BlobResourceContents(
                uri="file:///b.bin", blob=PNG, mime_type="application/octet-stream"
            ),
        ),
        is_error=True,
    )
    text, is_error = result_to_text(result)
    assert is_error is True
    assert text.split("\n\n") == [
        "first",
        "[image: image/png, 48 bytes]",
        "[audio: audio/wav, 48 bytes]",
        "[resource: file:///a.txt a.txt] - the file",
        "[embedded resource: file:///b.bin (application/octet-stream, 48 bytes, binary)]",
    ]
    # Structured content alone is given as JSON; with a text block the text stands for it.
    assert result_to_text(_result(structured={"b": 1, "a": [2]}))[0] == '{"a": [2], "b": 1}'
    assert result_to_text(_result())[0] == "(the tool returned no content)"
