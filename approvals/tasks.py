"""Celery tasks of approvals (beat runs ``expire_approvals`` every 30 s)."""

from __future__ import annotations

from celery import shared_task

from approvals.services import approvals_expire_due


@shared_task(name="approvals.tasks.expire_approvals", ignore_result=True)
def expire_approvals() -> list[int]:
    """Expire pending approvals past ``expires_at``; returns their ids."""
    return approvals_expire_due()
