"""Root URLconf."""

from __future__ import annotations

from functools import cache

from django.contrib import admin
from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from api.views import api
from conversations import views as conversation_views
from project.health import healthz


@cache
def _favicon_bytes() -> bytes:
    found = finders.find("favicon.ico")
    if not isinstance(found, str):
        raise FileNotFoundError("static/favicon.ico is missing")
    with open(found, "rb") as handle:
        return handle.read()


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on every page without a ``<link rel=icon>``
    (Django admin's): the site's icon, not a 404."""
    return HttpResponse(_favicon_bytes(), content_type="image/x-icon")


admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate admin"
admin.site.index_title = "Users, models, tools, policies and budgets"

urlpatterns = [
    path("", conversation_views.home, name="home"),
    path("", include("conversations.urls")),
    path("healthz", healthz, name="healthz"),
    path("metrics", conversation_views.metrics, name="metrics"),
    path("favicon.ico", favicon, name="favicon"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("approvals/", include("approvals.urls")),
    path("tools/", include("tools.urls")),
    path("prompts/", include("prompts.urls")),
    path("knowledge/", include("knowledge.urls")),
    path("", include("accounts.urls")),
    path("v1/", api.urls),
]
