"""The Celery app.

Configuration is read from Django settings under the ``CELERY_`` namespace
(see ``project/settings.py``); tasks are discovered in every installed app's
``tasks.py``. Source: Celery's "First steps with Django" guide.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
