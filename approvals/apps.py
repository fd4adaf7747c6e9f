from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval policies, approval requests and decisions (the gate)."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from approvals.models import Guardrail
        from approvals.selectors import guardrails_cache_clear

        for signal in (post_save, post_delete):
            signal.connect(guardrails_cache_clear, sender=Guardrail, dispatch_uid=f"gr-{signal}")
