"""The lock order (``conversations.runs``): Stop, Approve and the expiry sweep racing
on one run, on PostgreSQL, never deadlock and end with exactly one outcome."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import ApprovalNotPending, approval_decide, approvals_expire_due
from conversations import services
from conversations.models import Run
from tests.factories import (
    ApprovalRequestFactory,
    MessageFactory,
    RunFactory,
    ToolInvocationFactory,
)
from tests.race import race
from tools.models import ToolInvocation

ROUNDS = 200

S = Run.Status
IS = ToolInvocation.Status


@pytest.fixture(autouse=True)
def _no_dispatch(monkeypatch):
    """Steps the races schedule are not run (no worker here): only the race is under test."""
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", lambda run_id: None)


def _waiting_run() -> ApprovalRequest:
    """A run waiting at the gate for one approval: its turn's assistant message, the
    tool call awaiting approval, the pending request."""
    run = RunFactory(status=S.AWAITING_APPROVAL, step=1)
    arguments = {"key": "todo", "value": "buy milk"}
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "notes__write", "arguments": '{"key": "todo", "value": "buy milk"}'},
    }
    turn = MessageFactory(
        conversation=run.conversation,
        run=run,
        run_step=1,
        role="assistant",
        content="",
        tool_calls=[call],
    )
    invocation = ToolInvocationFactory(
        run=run, message=turn, tool_call_id="call_1", arguments_requested=arguments
    )
    return ApprovalRequestFactory(invocation=invocation)


@pytest.mark.django_db(transaction=True)
def test_stop_racing_approve_never_deadlocks_and_ends_one_way():
    outcomes: Counter[str] = Counter()
    for _ in range(ROUNDS):
        approval = _waiting_run()
        owner = approval.requester

        def act(i: int, approval=approval, owner=owner):
            if i == 0:
                return services.run_cancel(user=owner, run_id=approval.run_id)
            return approval_decide(
                approval_id=approval.pk,
                actor=owner,
                approve=True,
                arguments_hash=approval.arguments_hash,
            )

        stopped, decided = race(2, act)
        assert isinstance(stopped, Run), stopped  # Stop always succeeds: the run was going
        assert isinstance(decided, ApprovalRequest | ApprovalNotPending), decided
        approval.refresh_from_db()
        run = Run.objects.get(pk=approval.run_id)
        invocation = ToolInvocation.objects.get(pk=approval.invocation_id)
        assert run.status == S.CANCELLED
        assert invocation.status == IS.CANCELLED  # approved or not, it never ran
        assert invocation.attempts == 0
        if isinstance(decided, ApprovalNotPending):
            assert approval.status == ApprovalRequest.Status.CANCELLED
            assert str(decided) == "This approval is already cancelled."
            outcomes["stop first"] += 1
        else:
            assert approval.status == ApprovalRequest.Status.APPROVED
            outcomes["approve first"] += 1
    assert sum(outcomes.values()) == ROUNDS


@pytest.mark.django_db(transaction=True)
def test_approve_racing_the_expiry_sweep_never_deadlocks_and_ends_one_way():
    outcomes: Counter[str] = Counter()
    for _ in range(ROUNDS):
        approval = _waiting_run()
        ApprovalRequest.objects.filter(pk=approval.pk).update(
            expires_at=timezone.now() + timedelta(seconds=30)
        )
        later = timezone.now() + timedelta(minutes=1)

        def act(i: int, approval=approval, later=later):
            if i == 0:
                return approvals_expire_due(now=later)
            return approval_decide(
                approval_id=approval.pk,
                actor=approval.requester,
                approve=True,
                arguments_hash=approval.arguments_hash,
            )

        expired, decided = race(2, act)
        assert isinstance(expired, list), expired
        assert isinstance(decided, ApprovalRequest | ApprovalNotPending), decided
        approval.refresh_from_db()
        run = Run.objects.get(pk=approval.run_id)
        invocation = ToolInvocation.objects.get(pk=approval.invocation_id)
        if expired == [approval.pk]:
            assert isinstance(decided, ApprovalNotPending)
            assert approval.status == ApprovalRequest.Status.EXPIRED
            assert invocation.status == IS.EXPIRED
            assert run.status == S.CALLING_LLM  # the model reads "not approved in time"
            outcomes["expired"] += 1
        else:
            assert expired == []
            assert isinstance(decided, ApprovalRequest)
            assert approval.status == ApprovalRequest.Status.APPROVED
            assert invocation.status == IS.APPROVED
            assert run.status == S.EXECUTING_TOOLS
            outcomes["approved"] += 1
    assert sum(outcomes.values()) == ROUNDS
