"""Celery tasks of the tools app: thin interfaces over services."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task

from tools.mcp.bridge import mcp_servers_check as check


@shared_task(name="tools.mcp_servers_check", ignore_result=True)
def mcp_servers_check() -> int:
    """Retry MCP servers that are down (beat); returns how many were tried."""
    return len(async_to_sync(check)())
