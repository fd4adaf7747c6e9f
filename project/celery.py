"""The Celery app.

Configuration is read from Django settings under the ``CELERY_`` namespace
(see ``project/settings.py``); tasks are discovered in every installed app's
``tasks.py``. Source: Celery's "First steps with Django" guide.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect(weak=False)
@worker_process_init.connect(weak=False)
def _telemetry(**_signal: Any) -> None:
    """Tracing in the worker (and in each child of a forking pool), if the ``OTEL_*``
    environment asks for it."""
    from project.telemetry import telemetry_setup  # with the worker: the SDK is not light

    telemetry_setup(service="tollgate-worker")
