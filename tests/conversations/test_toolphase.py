"""The tool phase of the agent loop: gate, approval, execution, answer.

Driven with the offline demo model on PostgreSQL; each ``advance`` is one
dispatched step, as a worker would run it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalRequest
from approvals.services import ApprovalNotPending, approval_decide, approvals_expire_due
from audit.models import AuditEvent
from conversations import runs, services
from conversations.engine import run_advance
from conversations.models import Message, Run
from tests.conversations.conftest import drive, send
from tools.models import Note, ToolInvocation
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

S = Run.Status
IS = ToolInvocation.Status


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


def final_answer(run: Run) -> str:
    return Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("-id")[0].content


def test_read_only_tool_is_allowed_by_default_and_answered(conversation):
    run = drive(send(conversation, "calculate 17*23"))
    assert run.status == S.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.tool_name == "calc.evaluate"
    assert invocation.decision == "allow"
    assert invocation.status == IS.SUCCEEDED
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    assert tool_message.tool_call_id == invocation.tool_call_id
    assert "391" in tool_message.content
    assert "391" in final_answer(run)
    assert run.step == 2  # the call that asked for the tool, then the answer
    assert AuditEvent.objects.filter(action="gate.decided", data__action="allow").exists()
    assert not ApprovalRequest.objects.exists()


def _pending_delete(conversation) -> tuple[Run, ApprovalRequest]:
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday at 10")
    run = drive(send(conversation, "forget the meeting"))
    assert run.status == S.AWAITING_APPROVAL
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    assert approval.status == ApprovalRequest.Status.PENDING
    assert approval.tool_name == "notes.delete"
    assert approval.arguments == {"key": "meeting"}
    assert "destructive" in approval.explanation or "asked" in approval.explanation
    return run, approval


def decide(conversation, approval: ApprovalRequest, *, approve: bool = True, **extra):
    """Decide ``approval`` as the conversation's owner, bound to the arguments shown."""
    return approval_decide(
        approval_id=approval.pk,
        actor=conversation.owner,
        approve=approve,
        arguments_hash=approval.arguments_hash,
        **extra,
    )


def test_destructive_tool_waits_for_approval_then_runs_once(conversation):
    run, approval = _pending_delete(conversation)
    assert run.lease_owner == ""  # nobody holds the run while it waits
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.AWAITING_APPROVAL

    decide(conversation, approval)
    run.refresh_from_db()
    assert run.status == S.EXECUTING_TOOLS
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    invocation.refresh_from_db()
    assert invocation.status == IS.SUCCEEDED
    assert invocation.attempts == 1
    assert not Note.objects.filter(key="meeting").exists()
    assert "deleted" in final_answer(run)

    with pytest.raises(ApprovalNotPending):
        decide(conversation, approval)
    async_to_sync(run_advance)(run_id=run.pk, worker="late-worker")
    invocation.refresh_from_db()
    assert invocation.attempts == 1


def test_deny_with_reason_reaches_the_model(conversation):
    run, approval = _pending_delete(conversation)
    decide(conversation, approval, approve=False, reason="keep it for the audit")
    run = drive(run)
    assert run.status == S.COMPLETED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.DENIED
    assert invocation.attempts == 0
    assert "keep it for the audit" in Message.objects.get(run=run, role="tool").content
    answer = final_answer(run)
    assert "denied" in answer and "keep it for the audit" in answer
    assert Note.objects.filter(key="meeting").exists()


def test_edited_arguments_are_the_ones_executed_and_audited(conversation):
    Note.objects.create(user=conversation.owner, key="other", value="x")
    run, approval = _pending_delete(conversation)
    decide(conversation, approval, edited_arguments={"key": "other"})
    run = drive(run)
    assert run.status == S.COMPLETED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.arguments_requested == {"key": "meeting"}
    assert invocation.arguments_executed == {"key": "other"}
    assert Note.objects.filter(key="meeting").exists()
    assert not Note.objects.filter(key="other").exists()
    decided = AuditEvent.objects.get(action="approval.decided")
    assert "other" in str(decided.data)


def test_expired_request_tells_the_model_and_the_run_continues(conversation):
    run, approval = _pending_delete(conversation)
    with time_machine.travel(approval.expires_at + timedelta(seconds=1)):
        assert approvals_expire_due() == [approval.pk]
    run.refresh_from_db()
    run = drive(run)
    assert run.status == S.COMPLETED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.EXPIRED
    assert "not approved in time" in invocation.result.lower()
    assert Note.objects.filter(key="meeting").exists()


def test_policy_deny_returns_a_denial_without_asking(conversation):
    ApprovalPolicy.objects.create(tool_pattern="calc.*", action=ApprovalPolicy.Action.DENY)
    run = drive(send(conversation, "calculate 2+2"))
    assert run.status == S.COMPLETED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.DENIED
    assert invocation.decision == "deny"
    assert "rule #" in invocation.decision_explanation
    assert not ApprovalRequest.objects.exists()
    assert "denied" in final_answer(run)


def test_a_policy_denial_gives_the_rules_description_to_the_user_and_the_model(conversation):
    ApprovalPolicy.objects.create(
        tool_pattern="calc.*",
        action=ApprovalPolicy.Action.DENY,
        description="Calculations are off for maintenance.",
    )
    run = drive(send(conversation, "calculate 2+2"))
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.decision_explanation == (
        "denied because: Calculations are off for maintenance."
    )
    tool_message = run.messages.get(role="tool")
    assert "Calculations are off for maintenance." in tool_message.content
    assert "rule #" not in tool_message.content


def test_cancelling_a_waiting_run_cancels_its_approval(conversation):
    run, approval = _pending_delete(conversation)
    services.run_cancel(user=conversation.owner, run_id=run.pk)
    run.refresh_from_db()
    approval.refresh_from_db()
    assert run.status == S.CANCELLED
    assert approval.status == ApprovalRequest.Status.CANCELLED
    assert ToolInvocation.objects.get(run_id=run.pk).status == IS.CANCELLED
    with pytest.raises(ApprovalNotPending):
        decide(conversation, approval)
    assert Note.objects.filter(key="meeting").exists()


def test_worker_lost_after_approval_executes_exactly_once_on_recovery(conversation):
    run, approval = _pending_delete(conversation)
    decide(conversation, approval)
    # A worker took the step and died before executing: its lease runs out.
    Run.objects.filter(pk=run.pk).update(
        lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert run.pk in runs.runs_recover_stale()
    run = drive(run)
    assert run.status == S.COMPLETED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.SUCCEEDED
    assert invocation.attempts == 1


def test_a_call_left_running_by_a_dead_worker_is_recovered_in_its_turn_only(conversation):
    from conversations.models import Conversation
    from tests.factories import UserFactory

    other = Conversation.objects.create(
        owner=UserFactory(), model_config=conversation.model_config, title="other"
    )
    runs = []
    for each in (conversation, other):
        run, approval = _pending_delete(each)
        decide(each, approval)
        # A worker started the call and died: the call is still running, long past
        # its timeout, and the run's lease has run out.
        ToolInvocation.objects.filter(run_id=run.pk).update(
            status=IS.RUNNING, attempts=1, started_at=timezone.now() - timedelta(minutes=10)
        )
        Run.objects.filter(pk=run.pk).update(
            lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        runs.append(run)

    run = drive(runs[0])

    assert run.status == S.COMPLETED, run.error
    recovered = ToolInvocation.objects.get(run_id=run.pk)
    # notes.delete is idempotent: run again, once, by this step.
    assert (recovered.status, recovered.attempts) == (IS.SUCCEEDED, 2)
    assert recovered.metadata["recovered"] == 1
    assert not Note.objects.filter(user=conversation.owner, key="meeting").exists()
    untouched = ToolInvocation.objects.get(run_id=runs[1].pk)
    assert untouched.status == IS.RUNNING  # another run's turn: its own step recovers it


def test_a_live_lease_keeps_a_second_worker_off_the_tools(conversation):
    run, approval = _pending_delete(conversation)
    decide(conversation, approval)
    Run.objects.filter(pk=run.pk).update(
        lease_owner="live-worker", lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    async_to_sync(run_advance)(run_id=run.pk, worker="second-worker")
    assert ToolInvocation.objects.get(run_id=run.pk).status == IS.APPROVED  # untouched


def test_tools_are_offered_only_when_enabled_for_the_user(conversation):
    from tools.models import Tool

    Tool.objects.filter(name="calc.evaluate").update(enabled=False)
    run = drive(send(conversation, "calculate 17*23"))
    assert run.status == S.COMPLETED
    assert not ToolInvocation.objects.filter(run_id=run.pk).exists()
    assert "offline demo model" in final_answer(run)


def test_conversation_page_shows_the_pending_card(client, conversation):
    run, approval = _pending_delete(conversation)
    client.force_login(conversation.owner)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f'id="approval-slot-{ToolInvocation.objects.get(run_id=run.pk).pk}"' in page
    assert f'id="approval-{approval.pk}"' in page
    assert "notes.delete" in page
    assert approval.arguments_hash in page
