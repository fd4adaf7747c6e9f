"""Admin: enable/disable tools and restrict them to groups; read-only invocations; notes."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from audit.adminlog import admin_change_record, admin_snapshot
from audit.services import audit_record
from project.admin import ReadOnlyAdminMixin
from tools.mcp.bridge import (
    mcp_registry_ensure,
    mcp_server_refresh,
    mcp_tool_rows_retire,
    mcp_tool_rows_sync,
)
from tools.mcp.errors import MCPClientError
from tools.models import HttpAllowedHost, MCPServer, Note, Tool, ToolInvocation
from tools.registry import registry
from tools.services import (
    http_allowlist_change_record,
    tool_admin_change_record,
    tools_set_enabled,
)


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "enabled",
        "group_list",
        "read_only",
        "destructive",
        "idempotent",
        "open_world",
        "source",
        "available",
    )
    list_filter = ("enabled", "source", "read_only", "destructive", "open_world", "groups")
    search_fields = ("name", "description")
    filter_horizontal = ("groups",)
    actions = ("enable_tools", "disable_tools")
    fields = (
        "name",
        "description",
        "enabled",
        "groups",
        "read_only",
        "destructive",
        "idempotent",
        "open_world",
        "source",
        "unavailable_reason",
        "parameters_schema",
        "created_at",
        "updated_at",
    )
    # Everything but the admin's choices comes from the registry (tools_sync).
    readonly_fields = tuple(field for field in fields if field not in {"enabled", "groups"})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tool]:
        mcp_registry_ensure()  # so "available" and the schema know MCP tools
        return super().get_queryset(request).prefetch_related("groups")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from the registry

    @admin.display(description="groups")
    def group_list(self, obj: Tool) -> str:
        return ", ".join(group.name for group in obj.groups.all()) or "everyone"

    @admin.display(description="available", boolean=True)
    def available(self, obj: Tool) -> bool:
        return not obj.unavailable_reason and obj.name in registry

    @admin.display(description="arguments (JSON Schema)")
    def parameters_schema(self, obj: Tool) -> str:
        spec = registry.get(obj.name)
        return json.dumps(spec.parameters, indent=2) if spec else "(not registered)"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change:  # after the groups are saved, so the audit names the new ones
            tool_admin_change_record(
                tool=form.instance, changed=form.changed_data, actor=request.user
            )

    def delete_model(self, request: HttpRequest, obj: Tool) -> None:
        before, pk = admin_snapshot(obj), obj.pk
        super().delete_model(request, obj)
        admin_change_record(
            name="tool", obj=obj, operation="deleted", request=request, before=before, pk=pk
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        for obj in list(queryset):
            self.delete_model(request, obj)

    @admin.action(description="Enable selected tools", permissions=["change"])
    def enable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        names = tools_set_enabled(
            names=queryset.values_list("name", flat=True), enabled=True, actor=request.user
        )
        self.message_user(request, f"Enabled {len(names)} tool(s).", messages.SUCCESS)

    @admin.action(description="Disable selected tools", permissions=["change"])
    def disable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        names = tools_set_enabled(
            names=queryset.values_list("name", flat=True), enabled=False, actor=request.user
        )
        self.message_user(request, f"Disabled {len(names)} tool(s).", messages.SUCCESS)


@admin.register(ToolInvocation)
class ToolInvocationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "tool_name",
        "status",
        "decision",
        "is_error",
        "user",
        "run_id",
        "attempts",
        "duration_ms",
        "created_at",
    )
    list_filter = ("status", "decision", "is_error", "tool_name", "created_at")
    search_fields = ("tool_name", "tool_call_id", "user__email", "=run_id")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-id",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]


@admin.register(Note)
class NoteAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Users' private notes (the notes tools write them): admins may look and delete,
    never add or change one in a user's name."""

    deletable = True
    list_display = ("key", "user", "updated_at")
    list_filter = ("updated_at",)
    search_fields = ("key", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "updated_at")


@admin.register(HttpAllowedHost)
class HttpAllowedHostAdmin(admin.ModelAdmin):
    list_display = ("host", "note", "created_at")
    search_fields = ("host", "note")

    def save_model(
        self, request: HttpRequest, obj: HttpAllowedHost, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        http_allowlist_change_record(host=obj.host, deleted=False, actor=request.user)

    def delete_model(self, request: HttpRequest, obj: HttpAllowedHost) -> None:
        super().delete_model(request, obj)
        http_allowlist_change_record(host=obj.host, deleted=True, actor=request.user)


# --- MCP servers ----------------------------------------------------------------------


class MCPServerForm(forms.ModelForm):
    """Edits the connection settings; env and headers hold variable NAMES, never values."""

    class Meta:
        model = MCPServer
        fields = (
            "name",
            "enabled",
            "trusted",
            "tool_prefix",
            "transport",
            "command",
            "args",
            "env",
            "url",
            "headers",
            "connect_timeout_seconds",
            "call_timeout_seconds",
        )
        widgets = {
            "args": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "env": forms.Textarea(attrs={"rows": 3, "cols": 60}),
            "headers": forms.Textarea(attrs={"rows": 3, "cols": 60}),
        }


def _snapshot(server: MCPServer) -> dict[str, Any]:
    # Only names: env/headers values are environment variable names, not secrets.
    return {field: getattr(server, field) for field in MCPServerForm.Meta.fields}


@admin.register(MCPServer)
class MCPServerAdmin(admin.ModelAdmin):
    """MCP servers: connection settings, health, and the cached tool list.

    Secrets never appear: ``env`` and ``headers`` map names to environment
    variable *names*; the values are read by the connecting process only.
    """

    form = MCPServerForm
    list_display = (
        "name",
        "enabled",
        "trusted",
        "tool_prefix",
        "transport",
        "healthy",
        "tool_count",
        "last_error_short",
        "last_checked_at",
    )
    list_filter = ("enabled", "trusted", "healthy", "transport")
    search_fields = ("name", "tool_prefix", "command", "url")
    actions = ("refresh_tools", "reconnect")
    readonly_fields = (
        "healthy",
        "last_error",
        "last_checked_at",
        "failures",
        "tools_refreshed_at",
        "tool_list",
        "secrets_note",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "enabled", "trusted", "tool_prefix")}),
        ("stdio", {"fields": ("transport", "command", "args", "env")}),
        ("Streamable HTTP", {"fields": ("url", "headers")}),
        ("Secrets", {"fields": ("secrets_note",)}),
        ("Timeouts (seconds)", {"fields": ("connect_timeout_seconds", "call_timeout_seconds")}),
        (
            "Status",
            {
                "fields": (
                    "healthy",
                    "last_error",
                    "last_checked_at",
                    "failures",
                    "tools_refreshed_at",
                    "tool_list",
                    "created_at",
                    "updated_at",
                )
            },
        ),
    )

    @admin.display(description="tools")
    def tool_count(self, obj: MCPServer) -> int:
        return len(obj.tools_cached or [])

    @admin.display(description="last error")
    def last_error_short(self, obj: MCPServer) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 120 else text[:120] + "…"

    @admin.display(description="secret values")
    def secrets_note(self, obj: MCPServer) -> str:
        names = sorted({*(obj.env or {}).values(), *(obj.headers or {}).values()})
        listed = ", ".join(names) if names else "none"
        return (
            "Environment and header values are never stored or shown: each entry names an "
            "environment variable of the process that connects (web and worker). "
            f"Variables referenced: {listed}."
        )

    @admin.display(description="cached tools")
    def tool_list(self, obj: MCPServer) -> str:
        if not obj.tools_cached:
            return "(none yet: use the “Refresh tool list” action)"
        rows = []
        for item in obj.tools_cached:
            hints = item.get("hints") or {}
            flags = [
                label
                for key, label in (
                    ("read_only_hint", "read-only"),
                    ("destructive_hint", "destructive"),
                    ("idempotent_hint", "idempotent"),
                    ("open_world_hint", "open world"),
                )
                if hints.get(key)
            ]
            rows.append(
                (
                    f"{obj.tool_prefix}.{item.get('remote_name', '?')}",
                    ", ".join(flags) or "no hints",
                    json.dumps(item.get("input_schema") or {}, indent=1)[:2000],
                )
            )
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code> ({})<details><summary>schema</summary><pre>{}</pre>"
                "</details></li>",
                rows,
            ),
        )

    def save_model(self, request: HttpRequest, obj: MCPServer, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        mcp_tool_rows_sync(server=obj)  # availability follows "enabled" at once
        audit_record(
            action="mcp.server_changed",
            actor=request.user,
            target_type="mcp_server",
            target_id=obj.pk,
            data={
                "server": obj.name,
                "created": not change,
                "changed": list(form.changed_data),
                "settings": _snapshot(obj),
            },
            ip=request.META.get("REMOTE_ADDR"),
        )

    def delete_model(self, request: HttpRequest, obj: MCPServer) -> None:
        self._deleted(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[MCPServer]) -> None:
        self._deleted(request, list(queryset))
        super().delete_queryset(request, queryset)

    def _deleted(self, request: HttpRequest, servers: list[MCPServer]) -> None:
        for server in servers:
            mcp_tool_rows_retire(
                server_name=server.name, reason=f"MCP server {server.name!r} was deleted."
            )
            audit_record(
                action="mcp.server_changed",
                actor=request.user,
                target_type="mcp_server",
                target_id=server.pk,
                data={"server": server.name, "deleted": True},
                ip=request.META.get("REMOTE_ADDR"),
            )

    def _refresh(self, request: HttpRequest, queryset: QuerySet[MCPServer], reconnect: bool):
        for server in queryset:
            try:
                fresh = async_to_sync(mcp_server_refresh)(
                    server_id=server.pk, actor=request.user, reconnect=reconnect
                )
            except MCPClientError as exc:
                self.message_user(request, f"{server.name}: {exc}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{server.name}: connected, {len(fresh.tools_cached)} tool(s).",
                    messages.SUCCESS,
                )

    @admin.action(description="Refresh tool list", permissions=["change"])
    def refresh_tools(self, request: HttpRequest, queryset: QuerySet[MCPServer]) -> None:
        self._refresh(request, queryset, reconnect=False)

    @admin.action(description="Reconnect", permissions=["change"])
    def reconnect(self, request: HttpRequest, queryset: QuerySet[MCPServer]) -> None:
        self._refresh(request, queryset, reconnect=True)
