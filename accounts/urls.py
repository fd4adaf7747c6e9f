"""URLs of the accounts app that are not allauth's (mounted at ``/usage/``)."""

from __future__ import annotations

from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.usage, name="usage"),
]
