"""An agent called as a tool, on a real Celery worker (issue 25): its sub-run waits for
an approval inside it while the worker is killed and another started; approved, the new
worker finishes the sub-run and then the caller, each exactly once."""

from __future__ import annotations

import time

import pytest

from approvals.models import ApprovalPolicy, ApprovalRequest
from approvals.services import approval_decide
from conversations import services
from conversations.models import Message, Run
from tests.conversations.test_worker import wait_for, worker_running
from tests.factories import AgentProfileFactory, ApprovalPolicyFactory, ConversationFactory
from tools.models import Note, ToolInvocation
from tools.services import tools_sync

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _until(check, *, worker, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert worker.poll() is None, "worker died"
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_sub_run_waiting_for_approval_survives_a_worker_restart(tmp_path, user, demo_model):
    tools_sync()
    researcher = AgentProfileFactory(owner=user, name="Researcher", tools=["notes.delete"])
    manager = AgentProfileFactory(owner=user, name="Manager", agent_tools=[researcher])
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=manager)
    ApprovalPolicyFactory(tool_pattern="ask_agent_*", action=ApprovalPolicy.Action.ALLOW)
    Note.objects.create(user=user, key="meeting", value="Friday")

    with worker_running(tmp_path) as first:
        run = services.message_send(
            user=user,
            conversation_id=conversation.pk,
            content="ask Researcher to forget the meeting",
        )
        approval = _until(
            lambda: ApprovalRequest.objects.filter(
                run_id__in=Run.objects.filter(orchestrator_id=run.pk).values("pk")
            ).first(),
            worker=first,
        )
        part = Run.objects.get(orchestrator_id=run.pk)
        _until(
            lambda: Run.objects.get(pk=part.pk).status == Run.Status.AWAITING_APPROVAL,
            worker=first,
        )
        run.refresh_from_db()
        assert run.status == Run.Status.AWAITING_PARTS
        first.kill()  # no goodbye: nothing of the wait lived in the worker
        first.wait()

    with worker_running(tmp_path) as second:
        approval_decide(
            approval_id=approval.pk,
            actor=user,
            approve=True,
            arguments_hash=approval.arguments_hash,
        )
        run = wait_for(run, second)
        assert run.status == Run.Status.COMPLETED, run.error
    part.refresh_from_db()
    assert part.status == Run.Status.COMPLETED, part.error
    assert not Note.objects.filter(user=user, key="meeting").exists()
    # Each exactly once: one execution inside, one result for the caller.
    inner = ToolInvocation.objects.get(run_id=part.pk)
    assert inner.tool_name == "notes.delete" and inner.status == ToolInvocation.Status.SUCCEEDED
    call = ToolInvocation.objects.get(run_id=run.pk)
    assert call.status == ToolInvocation.Status.SUCCEEDED
    assert Message.objects.filter(run=run, role=Message.Role.TOOL).count() == 1
    assert call.result == (
        Message.objects.filter(run=part, role=Message.Role.ASSISTANT).latest("id").content
    )
