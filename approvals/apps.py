from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ApprovalsConfig(AppConfig):
    """Approval policies, guardrails, approval requests and decisions (the gate)."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: models load only once the app registry is ready.
        from approvals.models import Guardrail
        from approvals.selectors import guardrails_cache_clear

        post_save.connect(guardrails_cache_clear, sender=Guardrail, dispatch_uid="guardrail_saved")
        post_delete.connect(
            guardrails_cache_clear, sender=Guardrail, dispatch_uid="guardrail_deleted"
        )
