from __future__ import annotations

from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    """Conversations, messages, runs (the agent loop), model configs and the LLM gateway."""

    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"
