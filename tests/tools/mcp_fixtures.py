"""Fixtures for the MCP client tests, and a small MCP server of ours for failure cases.

The servers under test are written by others: ``@modelcontextprotocol/server-everything``
(npm, installed into ``var/mcp-node`` by ``scripts/install-mcp-test-servers``) and
``mcp-server-time`` (PyPI, a dev dependency). Our own server below, built with the
SDK's ``MCPServer`` (FastMCP), only plays the peer that crashes on purpose, records
that it was cancelled, fails to start on demand, paginates and changes its tool list.

Run it as ``python tests/tools/mcp_fixtures.py`` (stdio).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ListToolsResult, ToolAnnotations

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = Path(os.environ.get("TOLLGATE_MCP_NODE_DIR", REPO / "var" / "mcp-node"))
EVERYTHING_BIN = NODE_DIR / "node_modules" / ".bin" / "mcp-server-everything"
THIS_FILE = Path(__file__).resolve()


def install_node_servers() -> Path:
    """Install server-everything from npm (pinned lock file) when missing; return its binary."""
    if not EVERYTHING_BIN.exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is required to install @modelcontextprotocol/server-everything")
        subprocess.run(
            [str(REPO / "scripts" / "install-mcp-test-servers"), str(NODE_DIR)],
            check=True,
            timeout=600,
        )
    return EVERYTHING_BIN


# --- our own test server ----------------------------------------------------------


def _serve() -> None:
    fail_marker = os.environ.get("TG_MCP_FAIL_IF_EXISTS")
    if fail_marker and Path(fail_marker).exists():
        sys.stderr.write(f"refusing to start: {fail_marker} exists\n")
        sys.exit(2)

    page_size = int(os.environ.get("TG_MCP_PAGE_SIZE", "2"))

    class PagingServer(MCPServer):
        """Lists its tools ``page_size`` at a time, so clients must follow cursors."""

        async def _handle_list_tools(self, ctx, params):  # type: ignore[override]
            tools = await self.list_tools()
            start = int(params.cursor) if params is not None and params.cursor else 0
            end = start + page_size
            return ListToolsResult(
                tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None
            )

    server = PagingServer("tollgate-test-server")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool(annotations=ToolAnnotations(destructive_hint=False))
    def crash() -> str:
        """Exit the server process in the middle of the call."""
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)

    @server.tool()
    async def wait_for_cancel(marker: str) -> str:
        """Sleep until cancelled; write 'cancelled' to ``marker`` when the cancel arrives.

        ``<marker>.started`` appears once the call is running on the server.
        """
        Path(marker + ".started").write_text("started")  # noqa: ASYNC240 - a test peer
        try:
            await anyio.sleep(120)
        except anyio.get_cancelled_exc_class():
            # Synchronous on purpose: any await here would be cancelled at once.
            Path(marker).write_text("cancelled")  # noqa: ASYNC240
            raise
        return "not cancelled"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def count(steps: int, ctx: Context) -> str:
        """Report progress ``steps`` times."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}")
            await anyio.sleep(0.05)
        return f"counted {steps}"

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new tool ``name`` and announce the list change."""

        def added() -> str:
            return f"I am {name}"

        server.add_tool(added, name=name, description=f"added at runtime: {name}")
        await ctx.notify_tools_changed()
        return f"added {name}"

    server.run("stdio")


if __name__ == "__main__":
    _serve()
