"""Expiry runs in a real Celery worker (beat's task) and in the embedded asyncio loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.utils import timezone

from approvals.dispatch import expiry_loop
from approvals.models import ApprovalRequest
from project.celery import app as celery_app
from tests.factories import UserFactory
from tools.models import ToolInvocation

ROOT = Path(__file__).resolve().parents[2]


def _overdue(approval):
    ApprovalRequest.objects.filter(pk=approval.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_celery_worker_expires_overdue_approvals(make_approval):
    approval = make_approval(UserFactory(), expires=3600)
    keep = make_approval(UserFactory(), expires=3600)
    _overdue(approval)
    db_name = connection.settings_dict["NAME"]
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    env = {
        **os.environ,
        "DATABASE_URL": f"{base}/{db_name}",
        "SECRET_KEY": "x" * 50,
        # Another database name and secret would name another deployment, whose
        # worker would never see this process's task.
        "TOLLGATE_DEPLOYMENT": settings.TOLLGATE_DEPLOYMENT,
    }
    queue = f"approvals-test-{os.getpid()}"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        celery_app.send_task("approvals.tasks.expire_approvals", queue=queue)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and worker.poll() is None:
            approval.refresh_from_db()
            if approval.status != "pending":
                break
            time.sleep(0.5)
        assert approval.status == "expired"
        keep.refresh_from_db()
        assert keep.status == "pending"
        # The worker's approval_decided receiver settled the invocation in the same
        # transaction.
        assert ToolInvocation.objects.get(pk=approval.invocation_id).status == "expired"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.mark.django_db(transaction=True)
async def test_embedded_expiry_loop(make_approval):
    approval = await sync_to_async(make_approval)(await sync_to_async(UserFactory)())
    await sync_to_async(_overdue)(approval)
    task = asyncio.create_task(expiry_loop(interval_seconds=0.2))
    try:
        for _ in range(300):
            status = await sync_to_async(
                lambda: ApprovalRequest.objects.get(pk=approval.pk).status
            )()
            if status != "pending":
                break
            await asyncio.sleep(0.1)
        assert status == "expired"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_settings_schedule_expiry():
    entry = settings.CELERY_BEAT_SCHEDULE["approvals-expire"]
    assert entry["task"] == "approvals.tasks.expire_approvals"
