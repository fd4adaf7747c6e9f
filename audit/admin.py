"""Admin: audit events, read-only (the trail is append-only; see ``audit.models``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "sequence",
        "created_at",
        "action",
        "actor_id",
        "target_type",
        "target_id",
        "ip",
    )
    list_filter = ("action", "target_type")
    search_fields = ("action", "target_id")
    date_hierarchy = "created_at"
    ordering = ("-sequence",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
