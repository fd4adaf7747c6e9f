from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval policies, approval requests and decisions, and the audit trail."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from approvals import receivers  # noqa: F401  (connects the sign-in audit receivers)
