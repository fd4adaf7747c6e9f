from __future__ import annotations

from django.apps import AppConfig


class ToolsConfig(AppConfig):
    """The tool registry, built-in tools, MCP servers, the code sandbox and tool invocations."""

    name = "tools"
    default_auto_field = "django.db.models.BigAutoField"
