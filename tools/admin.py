"""Admin: enable/disable tools and restrict them to groups; read-only invocations; notes."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tools.models import HttpAllowedHost, Note, Tool, ToolInvocation
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
    readonly_fields = (
        "name",
        "description",
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tool]:
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
        import json

        spec = registry.get(obj.name)
        return json.dumps(spec.parameters, indent=2) if spec else "(not registered)"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change:  # after the groups are saved, so the audit names the new ones
            tool_admin_change_record(
                tool=form.instance, changed=form.changed_data, actor=request.user
            )

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
class ToolInvocationAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "tool_name",
        "status",
        "decision",
        "is_error",
        "user",
        "run",
        "attempts",
        "duration_ms",
        "created_at",
    )
    list_filter = ("status", "decision", "is_error", "tool_name", "created_at")
    search_fields = ("tool_name", "tool_call_id", "user__email", "=run__id")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-id",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
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
