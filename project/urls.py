"""Root URLconf."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from project import views
from project.health import healthz

admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate admin"
admin.site.index_title = "Users, models, tools, policies and budgets"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("usage/", include("accounts.urls")),
]
