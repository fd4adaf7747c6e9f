"""Celery tasks: thin interfaces over the engine and services (ids only)."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task

from conversations.dispatch import worker_id


@shared_task(name="conversations.tasks.run_step", acks_late=True, ignore_result=True)
def run_step(run_id: int) -> None:
    """Advance run ``run_id`` one step. Idempotent: the engine re-checks state and lease."""
    from conversations.engine import run_advance

    async_to_sync(run_advance)(run_id=run_id, worker=worker_id("celery"))


@shared_task(name="conversations.tasks.runs_recover_stale", ignore_result=True)
def runs_recover_stale() -> int:
    """Re-dispatch runs whose worker stopped holding them (beat, every minute)."""
    from conversations import services

    return len(services.runs_recover_stale())
