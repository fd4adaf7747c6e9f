"""Celery tasks for accounts."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from accounts.services import budget_reservations_expire


@shared_task(name="accounts.budget_reservations_expire")
def budget_reservations_expire_task() -> int:
    """Release reservations held longer than ``TOLLGATE_BUDGET_HOLD_SECONDS``."""
    return budget_reservations_expire(
        older_than=timedelta(seconds=settings.TOLLGATE_BUDGET_HOLD_SECONDS)
    )
