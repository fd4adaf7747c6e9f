"""``manage.py mcp_refresh [NAME ...]``: connect to MCP servers and cache their tool lists."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from tools.mcp.bridge import mcp_server_refresh
from tools.mcp.errors import MCPClientError
from tools.models import MCPServer


class Command(BaseCommand):
    help = "Connect to MCP servers (all enabled ones, or those named) and refresh their tools."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("names", nargs="*", help="server names (default: every enabled one)")

    def handle(self, *args: Any, names: list[str], **options: Any) -> None:
        servers = (
            MCPServer.objects.filter(name__in=names)
            if names
            else MCPServer.objects.filter(enabled=True)
        )
        missing = set(names) - {s.name for s in servers}
        if missing:
            raise CommandError(f"No MCP server named {', '.join(sorted(missing))}.")
        failed = 0
        for server in servers:
            try:
                fresh = async_to_sync(mcp_server_refresh)(server_id=server.pk)
            except MCPClientError as exc:
                failed += 1
                self.stderr.write(f"{server.name}: {exc}")
            else:
                self.stdout.write(f"{server.name}: {len(fresh.tools_cached)} tool(s)")
        if failed:
            raise CommandError(f"{failed} server(s) could not be refreshed.")
