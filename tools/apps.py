from __future__ import annotations

from importlib import import_module
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save

from tools.offered import tools_offered_changed


class ToolsConfig(AppConfig):
    """The tool registry, built-in tools, MCP servers, the code sandbox and tool invocations.

    ``ready`` imports ``tools.builtin`` so the built-in tools are registered in
    every process (web, worker, beat, management commands). Their ``Tool`` rows
    are written by ``tools_sync`` from a ``post_migrate`` handler — so a deploy's
    ``migrate`` (and a test database's creation and flush) brings the rows up to
    date — and on demand with ``manage.py tools_sync``. ``ready`` itself never
    touches the database.
    """

    name = "tools"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: the built-in tools import models, which the app
        # registry allows only once it is ready. Importing them registers them.
        import tools.builtin  # noqa: F401

        for module in getattr(settings, "TOLLGATE_EXTRA_TOOL_MODULES", []):
            import_module(module)

        post_migrate.connect(_sync_after_migrate, sender=self, dispatch_uid="tools_sync")
        _clear_offered_on_changes()


def _clear_offered_on_changes() -> None:
    """Changes to what a user may be offered clear the cached lists (tools.offered)."""
    from tools.models import MCPServer, Tool  # models: only once the registry is ready

    for model in (Tool, MCPServer):
        for signal in (post_save, post_delete):
            signal.connect(tools_offered_changed, sender=model, weak=False)
    for through in (Tool.groups.through, get_user_model().groups.through):
        m2m_changed.connect(tools_offered_changed, sender=through, weak=False)


def _sync_after_migrate(*, using: str = "default", plan: Any = None, **kwargs: Any) -> None:
    # Not at the top: this module is imported before the app registry is ready.
    from tools.models import Tool
    from tools.services import tools_sync

    # Migrating the app backwards (to zero) still sends post_migrate.
    if Tool._meta.db_table not in connections[using].introspection.table_names():
        return
    tools_sync(using=using)
