from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The OpenAI-compatible chat completions, the model list and the approvals API
    (``/v1/``), on django-ninja; the top of the apps' layers (docs/architecture.md)."""

    name = "api"
    default_auto_field = "django.db.models.BigAutoField"
