"""Admin: audit events, read-only (the trail is append-only; see ``audit.models``)."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEvent
from project.admin import ReadOnlyAdminMixin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
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
