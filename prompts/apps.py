from __future__ import annotations

from django.apps import AppConfig


class PromptsConfig(AppConfig):
    """The prompt library: prompts, immutable versions, labels (below conversations)."""

    name = "prompts"
    default_auto_field = "django.db.models.BigAutoField"
