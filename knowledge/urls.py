"""Knowledge pages (``/knowledge/``)."""

from __future__ import annotations

from django.urls import path

from knowledge import views

app_name = "knowledge"

urlpatterns = [
    path("", views.knowledge_index, name="index"),
    path("upload", views.document_upload, name="upload"),
    path("collections/new", views.collection_create, name="collection-create"),
    path("collections/<int:collection_id>/share", views.collection_share, name="collection-share"),
    path(
        "collections/<int:collection_id>/delete", views.collection_delete, name="collection-delete"
    ),
    path("documents/<int:document_id>/", views.document_detail, name="document"),
    path("documents/<int:document_id>/file", views.document_file, name="document-file"),
    path("documents/<int:document_id>/status", views.document_status, name="document-status"),
    path("documents/<int:document_id>/retry", views.document_retry, name="document-retry"),
    path("documents/<int:document_id>/delete", views.document_delete, name="document-delete"),
    path("memory/", views.memory_index, name="memory"),
    path("memory/<int:note_id>/edit", views.memory_edit, name="memory-edit"),
    path("memory/<int:note_id>/delete", views.memory_delete, name="memory-delete"),
]
