"""Chat URLs, included at the site root (the chat list is the start page)."""

from __future__ import annotations

from django.urls import path

from conversations import agent_views, evaluation_views, views

app_name = "conversations"

urlpatterns = [
    path("c/new", views.conversation_create, name="create"),
    path("settings/", views.preferences, name="preferences"),
    path("c/more", views.conversation_list_more, name="list-more"),
    path("c/<int:conversation_id>/", views.conversation_detail, name="detail"),
    path("c/<int:conversation_id>/earlier", views.conversation_earlier, name="earlier"),
    path("c/<int:conversation_id>/rename", views.conversation_rename, name="rename"),
    path("c/<int:conversation_id>/model", views.conversation_set_model, name="set-model"),
    path("c/<int:conversation_id>/settings", views.conversation_settings, name="settings"),
    path("c/<int:conversation_id>/agent", agent_views.conversation_set_agent, name="set-agent"),
    path("agents/", agent_views.agent_list, name="agents"),
    path("agents/new", agent_views.agent_edit, name="agent-create"),
    path("agents/<int:agent_id>/", agent_views.agent_edit, name="agent-edit"),
    path(
        "c/<int:conversation_id>/compare-settings",
        views.compare_settings,
        name="compare-settings",
    ),
    path("c/<int:conversation_id>/archive", views.conversation_archive, name="archive"),
    path("c/<int:conversation_id>/delete", views.conversation_delete, name="delete"),
    path("c/<int:conversation_id>/pin", views.conversation_pin, name="pin"),
    path("c/search", views.conversation_search, name="search"),
    path("c/import", views.conversation_import, name="import"),
    path(
        "c/<int:conversation_id>/export.md",
        views.conversation_export,
        {"kind": "md"},
        name="export-md",
    ),
    path(
        "c/<int:conversation_id>/export.json",
        views.conversation_export,
        {"kind": "json"},
        name="export-json",
    ),
    path("c/<int:conversation_id>/send", views.message_send, name="message-send"),
    path("attachments/upload", views.attachment_upload, name="attachment-upload"),
    path("attachments/<int:document_id>/", views.attachment_status, name="attachment"),
    path("attachments/<int:document_id>/remove", views.attachment_remove, name="attachment-remove"),
    path("c/<int:conversation_id>/reformulate", views.reformulate, name="reformulate"),
    path("runs/<int:run_id>/cancel", views.run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/retry", views.run_retry, name="run-retry"),
    path("runs/<int:run_id>/regenerate", views.run_regenerate, name="run-regenerate"),
    path("runs/<int:run_id>/show", views.branch_show, name="branch-show"),
    path("runs/<int:run_id>/timeline", views.run_timeline, name="run-timeline"),
    path("runs/<int:run_id>/continue", views.compare_choose, name="compare-choose"),
    path("m/<int:message_id>/edit", views.message_edit, name="message-edit"),
    path(
        "evaluations/new/<int:prompt_id>",
        evaluation_views.evaluation_new,
        name="evaluation-new",
    ),
    path("evaluations/<int:evaluation_id>/", evaluation_views.evaluation_detail, name="evaluation"),
    path(
        "evaluations/<int:evaluation_id>/start",
        evaluation_views.evaluation_run,
        name="evaluation-start",
    ),
    path(
        "evaluations/<int:evaluation_id>/rows/<int:position>/prefer",
        evaluation_views.evaluation_prefer,
        name="evaluation-prefer",
    ),
]
