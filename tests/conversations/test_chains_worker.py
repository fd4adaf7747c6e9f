"""Chains with a real Celery worker on PostgreSQL and Redis: a three-step chain passes
``previous_response`` from step to step, its tool step pauses at an approval, the
worker is killed and another started, and the chain resumes and completes; a
reflection loop stops at its maximum rounds.

The worker (``tests/topology.py``) runs against this test session's database and
broker; every part's step and every ``run_part_ended`` is taken there, so nothing
here advances a run in process.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from accounts.models import UsageRecord
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from conversations import services
from conversations.models import Message, Run
from tests.conversations.test_worker import _database_url
from tests.factories import ApprovalPolicyFactory, ChainFactory
from tests.topology import ROOT, Stack
from tools.models import ToolInvocation
from tools.services import tools_sync

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _poll(check, *, timeout: float, what: str, stack: Stack):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s\n{stack.log_tails()}")


@pytest.fixture
def stack(transactional_db, tmp_path):
    topology = Stack(
        database_url=_database_url(),
        redis_url=django_settings.REDIS_URL,
        logs=tmp_path,
        extra_env={
            "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "TOLLGATE_DEPLOYMENT": django_settings.TOLLGATE_DEPLOYMENT,
            "TOLLGATE_DEMO_DELAY_MS": "0",
            "CONN_MAX_AGE": "0",
        },
    )
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "project", "purge", "-f"],
        cwd=ROOT, env=topology.env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        topology.start_worker()
        topology.wait_for_log("worker", " ready.", timeout=90)
        yield topology
    finally:
        topology.stop_all()


def _parts(run: Run) -> list[Run]:
    return list(run.parts.order_by("position"))


def _answer(part: Run) -> str:
    return (
        Message.objects.filter(run=part, role="assistant")
        .exclude(content="")
        .order_by("-id")
        .values_list("content", flat=True)
        .first()
        or ""
    )


def test_a_chain_pauses_at_an_approval_and_resumes_after_a_worker_restart(stack, conversation):
    tools_sync()
    owner = conversation.owner
    ApprovalPolicyFactory(user=owner, tool_pattern="calc.*", action="ask")
    chain = ChainFactory(
        owner=owner,
        steps=[
            {"name": "Start", "template": "say: {{ input }}"},
            {"name": "Extend", "template": "say: {{ previous_response }}+1"},
            {"name": "Compute", "template": "calculate {{ previous_response }}",
             "tools_allowed": True},
        ],
    )  # fmt: skip
    run = services.message_send(
        user=owner, conversation_id=conversation.pk, content="6*7", chain_id=chain.pk
    )
    approval = _poll(
        lambda: ApprovalRequest.objects.filter(status="pending").first(),
        timeout=90, what="the third step did not ask for approval", stack=stack,
    )  # fmt: skip
    first, second, third = _parts(run)
    assert (_answer(first), _answer(second)) == ("6*7", "6*7+1")
    assert approval.run_id == third.pk
    invocation = ToolInvocation.objects.get(run_id=third.pk)
    # The step's template got the answer before it: the tool is asked for 6*7+1.
    assert invocation.arguments_requested == {"expression": "6*7+1"}
    run.refresh_from_db()
    third.refresh_from_db()
    assert (run.status, third.status) == (Run.Status.AWAITING_PARTS, Run.Status.AWAITING_APPROVAL)

    # The worker goes away while the chain waits; the approval comes meanwhile.
    stack.kill("worker")
    approval_decide(
        approval_id=approval.pk, actor=owner, approve=True, arguments_hash=approval.arguments_hash
    )
    time.sleep(1)
    third.refresh_from_db()
    assert third.status == Run.Status.EXECUTING_TOOLS  # nothing ran it: no worker
    stack.start_worker()

    _poll(
        lambda: Run.objects.get(pk=run.pk).is_terminal,
        timeout=90, what="the chain did not finish after the restart", stack=stack,
    )  # fmt: skip
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    [final] = Message.objects.filter(run=run)
    assert "43" in final.content and final.content == _answer(third)
    invocation.refresh_from_db()
    assert (invocation.status, invocation.attempts) == ("succeeded", 1)
    # Each part charged once per model call; the chain's moves audited with their parts.
    for part in _parts(run):
        assert UsageRecord.objects.filter(run_id=part.pk).count() == part.step
    moves = AuditEvent.objects.filter(action="run.awaiting_parts", target_id=str(run.pk))
    assert sorted(e.data["part"] for e in moves) == [p.pk for p in _parts(run)]


def test_a_reflection_loop_stops_at_its_maximum(stack, conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"name": "Draft", "template": "say: STUBBORN {{ input }}", "max_rounds": 3,
                "judge_template": "Is this right? {{ response }}"}],
    )  # fmt: skip
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="q", chain_id=chain.pk
    )
    _poll(
        lambda: Run.objects.get(pk=run.pk).is_terminal,
        timeout=120, what="the reflection loop did not end", stack=stack,
    )  # fmt: skip
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, run.error
    info = [p.parameters["chain_part"] for p in _parts(run)]
    assert [(i["role"], i["round"]) for i in info] == [
        ("step", 1), ("judge", 1), ("step", 2), ("judge", 2), ("step", 3),
    ]  # fmt: skip
    rounds = run.metadata["chain"]["rounds"]
    assert [r.get("verdict") for r in rounds] == ["revise", "revise", None]
    assert rounds[-1]["stopped_at_max_rounds"] is True
    assert all(p.status == Run.Status.COMPLETED for p in _parts(run))
    assert UsageRecord.objects.filter(run_id__in=[p.pk for p in _parts(run)]).count() == 5
