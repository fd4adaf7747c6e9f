"""Root URLconf."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from conversations import views as conversation_views
from project.health import healthz

admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate admin"
admin.site.index_title = "Users, models, tools, policies and budgets"

urlpatterns = [
    path("", conversation_views.home, name="home"),
    path("", include("conversations.urls")),
    path("healthz", healthz, name="healthz"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("approvals/", include("approvals.urls")),
    path("tools/", include("tools.urls")),
    path("prompts/", include("prompts.urls")),
    path("usage/", include("accounts.urls")),
]
