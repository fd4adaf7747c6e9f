"""Admin: collections (name and sharing, audited) and documents (read-only, deletable,
audited); chunks are seen through their document."""

from __future__ import annotations

from django.contrib import admin

from audit.adminlog import AuditedAdmin
from knowledge.models import Collection, Document
from project.admin import ReadOnlyAdminMixin


@admin.register(Collection)
class CollectionAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "knowledge_collection"
    list_display = ("name", "owner", "created_at")
    search_fields = ("name", "owner__email")
    filter_horizontal = ("groups",)
    raw_id_fields = ("owner",)


@admin.register(Document)
class DocumentAdmin(ReadOnlyAdminMixin, AuditedAdmin, admin.ModelAdmin):
    audit_name = "knowledge_document"
    deletable = True
    list_display = ("name", "owner", "content_type", "size_bytes", "status", "progress", "pages")
    list_filter = ("status", "content_type")
    search_fields = ("name", "owner__email")
    readonly_fields = (
        "owner", "collection", "name", "file", "content_type", "size_bytes", "status",
        "error", "progress", "pages", "created_at", "ingested_at",
    )  # fmt: skip
