"""Sign-in and sign-out go to the audit trail (Django's auth signals; allauth sends them too)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from audit.services import audit_record


def _ip(request: Any) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


@receiver(user_logged_in, dispatch_uid="audit.signed_in")
def audit_signed_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit_record(
        action="auth.signed_in", actor=user, target_type="user", target_id=user.pk, ip=_ip(request)
    )


@receiver(user_logged_out, dispatch_uid="audit.signed_out")
def audit_signed_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    audit_record(
        action="auth.signed_out", actor=user, target_type="user", target_id=user.pk, ip=_ip(request)
    )
