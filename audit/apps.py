from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only, hash-chained audit trail that every app writes through.

    The bottom app layer (docs/architecture.md): it imports no other Tollgate app.
    """

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: audit.signals imports models, which the app registry
        # allows only once it is ready. Importing it connects the sign-in and
        # sign-out receivers.
        from audit import signals  # noqa: F401
