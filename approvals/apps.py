from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval policies, approval requests and decisions (the gate)."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"
