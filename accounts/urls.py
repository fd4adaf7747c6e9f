"""URLs of the accounts app that are not allauth's: the usage page, the API keys page."""

from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("usage/", views.usage, name="usage"),
    path("settings/api-keys/", views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke", views.api_key_revoke_view, name="api_key_revoke"),
]
