from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval policies, approval requests and decisions, and the audit trail."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"
