"""Celery tasks: thin interfaces over the engine and services (ids only)."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task
from celery.signals import worker_init

from conversations import runs
from conversations.evaluations import evaluation_process
from conversations.gateway import gateway_preload
from conversations.host import engine_host


@worker_init.connect
def _preload_model_gateway(**_kwargs: object) -> None:
    """Import litellm and what its first call imports, in the worker's main process.

    That takes seconds; done here (``gateway_preload``), before any pool forks,
    the first reply after a worker starts does not wait for it.
    """
    gateway_preload()


@shared_task(name="conversations.tasks.run_step", acks_late=True, ignore_result=True)
def run_step(run_id: int) -> None:
    """Advance run ``run_id`` one step. Idempotent: the engine re-checks state and lease.

    The step runs on this process's engine host (``conversations/host.py``),
    among the other steps in progress; this task's thread waits for it, so
    the message is acknowledged only when the step is over.
    """
    engine_host().submit(run_id=run_id, worker=runs.worker_id("celery")).result()


@shared_task(name="conversations.tasks.runs_recover_stale", ignore_result=True)
def runs_recover_stale() -> int:
    """Re-dispatch runs whose worker stopped holding them (beat, every minute)."""
    return len(runs.runs_recover_stale())


@shared_task(name="conversations.tasks.evaluation_run", acks_late=True, ignore_result=True)
def evaluation_run(evaluation_id: int) -> None:
    """Make the calls of evaluation ``evaluation_id`` (``evaluations.evaluation_process``).
    Idempotent: each output is stored once, so a redelivered task does nothing twice."""
    async_to_sync(evaluation_process)(evaluation_id=evaluation_id)
