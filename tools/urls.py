from __future__ import annotations

from django.urls import path

from tools import views

app_name = "tools"

urlpatterns = [
    path(
        "workspace/<int:conversation_id>/<path:relpath>",
        views.workspace_file_download,
        name="workspace-file",
    ),
]
