"""A worker killed mid-step (SIGKILL): its runs resume on another worker within 30 s
and complete exactly once.

The production topology's worker and beat (``tests/topology.py``) run against this
test session's PostgreSQL database and Redis; a step's lease (20 s) is renewed by a
heartbeat while the step runs, so once the worker is gone the lease runs out and
beat's recovery job (every 10 s) hands the run to the new worker.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from accounts.models import UsageRecord
from approvals.models import ApprovalPolicy
from audit.models import AuditEvent
from conversations import services
from conversations.models import Message, Run
from tests.conversations.test_worker import _database_url
from tests.topology import ROOT, Stack
from tools.models import Tool, ToolInvocation
from tools.services import tools_sync

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: The issue's bound: a run held by a dead worker is picked up within this (seconds).
RESUME_SECONDS = 30


def _poll(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s")


@pytest.fixture
def stack(transactional_db, tmp_path):
    topology = Stack(
        database_url=_database_url(),
        redis_url=django_settings.REDIS_URL,
        logs=tmp_path,
        extra_env={
            "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
            # This test process's deployment: the worker takes the steps it sends.
            "TOLLGATE_DEPLOYMENT": django_settings.TOLLGATE_DEPLOYMENT,
            "TOLLGATE_EXTRA_TOOL_MODULES": "bench.benchtools",
            "TOLLGATE_DEMO_DELAY_MS": "250",  # a reply that streams for many seconds
            "CONN_MAX_AGE": "0",
        },
    )
    try:
        yield topology
    finally:
        topology.stop_all()


def test_a_killed_workers_runs_resume_within_30_seconds_and_finish_once(stack, conversation):
    tools_sync()
    # The worker registers bench.sleep (TOLLGATE_EXTRA_TOOL_MODULES); this process does not.
    Tool.objects.create(name="bench.sleep", destructive=False, idempotent=True, open_world=False)
    owner = conversation.owner
    ApprovalPolicy.objects.create(user=owner, tool_pattern="bench.sleep", action="allow")
    second = type(conversation).objects.create(owner=owner, model_config=conversation.model_config)
    # Stale messages from an earlier, interrupted session would run against this database.
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "project", "purge", "-f"],
        cwd=ROOT, env=stack.env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    stack.start_worker()
    stack.start_beat()
    stack.wait_for_log("worker", " ready.", timeout=90)

    streaming = services.message_send(user=owner, conversation_id=conversation.pk, content="Hi")
    tooling = services.message_send(
        user=owner, conversation_id=second.pk, content='use tool bench.sleep {"ms": 8000}'
    )
    # Mid-stream (part of the reply saved) and mid-tool (the call running), then kill.
    _poll(
        lambda: (
            Message.objects.filter(run=streaming, status="streaming").exclude(content="").exists()
        ),
        timeout=60,
        what="the reply did not start streaming",
    )
    invocation = _poll(
        lambda: ToolInvocation.objects.filter(run_id=tooling.pk, status="running").first(),
        timeout=60,
        what="the tool call did not start",
    )
    before = {run.pk: Run.objects.get(pk=run.pk).lease_owner for run in (streaming, tooling)}
    stack.kill("worker")
    killed = time.monotonic()
    stack.env["TOLLGATE_DEMO_DELAY_MS"] = "0"
    stack.start_worker()

    for run in (streaming, tooling):
        resumed = _poll(
            lambda run=run: (
                Run.objects.filter(pk=run.pk).exclude(lease_owner__in=["", before[run.pk]]).exists()
                or Run.objects.get(pk=run.pk).is_terminal
            ),
            timeout=RESUME_SECONDS + 30,
            what=f"run {run.pk} was not resumed",
        )
        assert resumed
        took = time.monotonic() - killed
        assert took <= RESUME_SECONDS, f"run {run.pk} resumed {took:.1f}s after the kill"

    for run in (streaming, tooling):
        _poll(
            lambda run=run: Run.objects.get(pk=run.pk).is_terminal,
            timeout=90,
            what=f"run {run.pk} did not finish",
        )
        run.refresh_from_db()
        assert run.status == Run.Status.COMPLETED, (run.error, stack.log_tails())
        answers = Message.objects.filter(run=run, role="assistant")
        assert list(answers.values_list("run_step", flat=True)) == list(range(1, run.step + 1))
        assert all(status == "complete" for status in answers.values_list("status", flat=True))
        # One usage record and one llm.call event per model call that answered.
        assert UsageRecord.objects.filter(run_id=run.pk).count() == run.step
        calls = AuditEvent.objects.filter(action="llm.call", target_id=str(run.pk))
        assert sorted(e.data["step"] for e in calls) == list(range(1, run.step + 1))

    streamed = Message.objects.get(run=streaming, role="assistant")
    assert "offline demo model" in streamed.content
    invocation.refresh_from_db()
    # bench.sleep is idempotent: run again after its worker died, its result stored once.
    assert (invocation.status, invocation.attempts) == ("succeeded", 2)
    assert invocation.metadata.get("recovered") == 1
    assert Message.objects.filter(run=tooling, role="tool").count() == 1
