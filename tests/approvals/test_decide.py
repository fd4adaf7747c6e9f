"""Deciding approvals: exactly once, bound to the arguments, by the right people, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.canonical import arguments_hash
from approvals.models import ApprovalPolicy, ApprovalRequest
from approvals.selectors import (
    approval_can_decide,
    approvals_for_user,
    approvals_pending_count,
    gate_evaluate,
)
from approvals.services import (
    AlwaysAllowRefused,
    ApprovalArgumentsInvalid,
    ApprovalArgumentsMismatch,
    ApprovalForbidden,
    ApprovalNotPending,
    approval_decide,
    approvals_cancel_for_run,
    approvals_expire_due,
)
from audit.models import AuditEvent
from tests.factories import UserFactory
from tests.race import race
from tools.models import ToolInvocation


def decide(approval, actor, **kwargs):
    kwargs.setdefault("approve", True)
    kwargs.setdefault("arguments_hash", approval.arguments_hash)
    return approval_decide(approval_id=approval.pk, actor=actor, **kwargs)


def test_create_stores_hash_expiry_and_audits(user, make_approval):
    before = timezone.now()
    approval = make_approval(user, arguments={"text": "x", "key": "k"}, expires=600)
    assert approval.status == "pending"
    assert approval.arguments_hash == arguments_hash({"key": "k", "text": "x"})
    assert before + timedelta(seconds=600) <= approval.expires_at
    event = AuditEvent.objects.get(action="approval.requested")
    assert event.target_id == str(approval.pk)
    assert event.data["invocation_id"] == approval.invocation_id


def test_one_request_per_invocation(user, make_approval):
    approval = make_approval(user)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_approval(user, invocation=approval.invocation)


def test_approve_calls_handler_once_and_records_who(user, make_approval, decided_handler):
    approval = make_approval(user)
    result = decide(approval, user, reason="fine")
    assert (result.status, result.decided_by, result.reason) == ("approved", user, "fine")
    assert result.decided_at is not None
    assert decided_handler == [(approval.pk, "approved")]
    invocation = ToolInvocation.objects.get(pk=approval.invocation_id)
    assert (invocation.status, invocation.attempts) == ("approved", 1)
    event = AuditEvent.objects.get(action="approval.decided")
    assert (event.actor_id, event.data["decision"], event.data["reason"]) == (
        user.pk,
        "approved",
        "fine",
    )


def test_deny_with_reason(user, make_approval, decided_handler):
    approval = make_approval(user)
    result = decide(approval, user, approve=False, reason="not today")
    assert (result.status, result.reason) == ("denied", "not today")
    assert decided_handler == [(approval.pk, "denied")]


def test_second_decision_is_refused(user, make_approval, decided_handler):
    approval = make_approval(user)
    decide(approval, user)
    with pytest.raises(ApprovalNotPending):
        decide(approval, user, approve=False)
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "approved"
    assert len(decided_handler) == 1


def test_decision_for_other_arguments_is_refused(user, make_approval, decided_handler):
    approval = make_approval(user, arguments={"key": "a"})
    other = make_approval(user, arguments={"key": "b"})
    # Replaying a decision made on another card (other arguments' hash) fails.
    with pytest.raises(ApprovalArgumentsMismatch):
        decide(approval, user, arguments_hash=other.arguments_hash)
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    assert decided_handler == []


def test_edited_arguments_validated_and_diff_recorded(user, make_approval, decided_handler):
    approval = make_approval(user, arguments={"key": "todo", "text": "buy milk"})
    edited = {"key": "todo", "text": "buy oat milk", "priority": 2}
    result = decide(approval, user, edited_arguments=edited)
    assert result.edited_arguments == edited
    assert result.effective_arguments == edited
    assert result.arguments_diff == [
        {"key": "priority", "op": "added", "old": None, "new": 2},
        {"key": "text", "op": "changed", "old": "buy milk", "new": "buy oat milk"},
    ]
    event = AuditEvent.objects.get(action="approval.decided")
    assert event.data["edited"] is True
    assert event.data["diff"] == result.arguments_diff
    invocation = ToolInvocation.objects.get(pk=approval.invocation_id)
    assert invocation.arguments_executed == edited


def test_identical_edit_is_no_edit(user, make_approval):
    approval = make_approval(user, arguments={"key": "todo"})
    result = decide(approval, user, edited_arguments={"key": "todo"})
    assert result.edited_arguments is None
    assert result.arguments_diff is None


@pytest.mark.parametrize(
    "edited",
    [
        {"text": "no key"},
        {"key": "k", "priority": -1},
        {"key": "k", "priority": "high"},
        {"key": "k", "unknown": 1},
        {"key": "k", "color": "blue"},
    ],
)
def test_invalid_edits_change_nothing(user, make_approval, decided_handler, edited):
    approval = make_approval(user)
    with pytest.raises(ApprovalArgumentsInvalid) as info:
        decide(approval, user, edited_arguments=edited)
    assert info.value.errors
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    assert decided_handler == []


def test_forbidden_decider_is_refused_and_audited(user, other_user, make_approval, decided_handler):
    approval = make_approval(user)
    with pytest.raises(ApprovalForbidden):
        decide(approval, other_user, ip="203.0.113.9")
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    event = AuditEvent.objects.get(action="approval.forbidden")
    assert (event.actor_id, event.target_id, event.ip) == (
        other_user.pk,
        str(approval.pk),
        "203.0.113.9",
    )
    assert decided_handler == []


def test_approver_group_decides_not_the_requester(user, other_user, make_approval):
    approvers = Group.objects.create(name="Approvers")
    other_user.groups.add(approvers)
    approval = make_approval(user, approver_group=approvers)
    assert not approval_can_decide(user=user, approval=approval)
    assert approval_can_decide(user=other_user, approval=approval)
    assert approvals_pending_count(user=user) == 0
    assert approvals_pending_count(user=other_user) == 1
    assert list(approvals_for_user(user=other_user)) == [approval]
    assert list(approvals_for_user(user=user)) == [approval]
    with pytest.raises(ApprovalForbidden):
        decide(approval, user)
    assert decide(approval, other_user).decided_by == other_user


def test_approvals_for_user_hides_others(user, other_user, make_approval):
    mine = make_approval(user, tool_name="notes.write")
    make_approval(other_user)
    theirs_calc = make_approval(user, tool_name="calc")
    assert set(approvals_for_user(user=user)) == {mine, theirs_calc}
    assert list(approvals_for_user(user=user, tool="calc")) == [theirs_calc]
    assert list(approvals_for_user(user=user, status="approved")) == []


def test_always_allow_creates_conversation_rule(user, make_approval):
    approval = make_approval(user, tool_name="notes.write")
    decide(approval, user, always_allow=True)
    rule = ApprovalPolicy.objects.get()
    assert (rule.user, rule.conversation_id, rule.tool_pattern, rule.action) == (
        user,
        approval.conversation_id,
        "notes.write",
        "allow",
    )
    assert AuditEvent.objects.filter(action="policy.changed").count() == 1
    hints = {"read_only": False, "destructive": False}
    here = gate_evaluate(
        user=user,
        tool_name="notes.write",
        hints=hints,
        arguments={},
        conversation_id=approval.conversation_id,
    )
    elsewhere = gate_evaluate(
        user=user, tool_name="notes.write", hints=hints, arguments={}, conversation_id=999999
    )
    assert (here.action, here.policy_id) == ("allow", rule.pk)
    assert elsewhere.action == "ask"


def test_always_allow_refused_for_destructive(user, make_approval, decided_handler):
    approval = make_approval(
        user, tool_name="notes.delete", hints={"read_only": False, "destructive": True}
    )
    with pytest.raises(AlwaysAllowRefused):
        decide(approval, user, always_allow=True)
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    assert not ApprovalPolicy.objects.exists()
    assert decided_handler == []


def test_expired_by_time_on_decide(user, make_approval, decided_handler):
    approval = make_approval(user, expires=60)
    with (
        time_machine.travel(timezone.now() + timedelta(seconds=61)),
        pytest.raises(ApprovalNotPending) as info,
    ):
        decide(approval, user)
    assert info.value.status == "expired"
    approval.refresh_from_db()
    assert (approval.status, approval.reason) == ("expired", "not approved in time")
    assert decided_handler == [(approval.pk, "expired")]


def test_expire_due_sweeps_only_overdue(user, make_approval, decided_handler):
    soon = make_approval(user, expires=60)
    later = make_approval(user, expires=3600)
    with time_machine.travel(timezone.now() + timedelta(seconds=120)):
        assert approvals_expire_due() == [soon.pk]
        assert approvals_expire_due() == []
    soon.refresh_from_db()
    later.refresh_from_db()
    assert (soon.status, later.status) == ("expired", "pending")
    assert decided_handler == [(soon.pk, "expired")]
    assert ToolInvocation.objects.get(pk=soon.invocation_id).status == "expired"
    assert AuditEvent.objects.filter(action="approval.expired", target_id=str(soon.pk)).exists()


def test_expire_due_keeps_request_pending_when_a_receiver_fails(
    user, make_approval, exploding_receiver
):
    approval = make_approval(user, expires=1)
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        assert approvals_expire_due() == []
    approval.refresh_from_db()
    assert approval.status == "pending"


def test_cancel_for_run(user, make_approval, decided_handler):
    first = make_approval(user)
    second = make_approval(user, invocation=None)
    decided = make_approval(user)
    decide(decided, user)
    decided_handler.clear()
    assert approvals_cancel_for_run(run_id=first.run_id) == 1
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("cancelled", "pending")
    assert first.decided_at is not None
    assert decided_handler == []


def test_constraint_backs_single_decision(user, make_approval):
    approval = make_approval(user)
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=approval.pk).update(status="approved")
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=approval.pk).update(decided_at=timezone.now())


# --- Concurrency: real connections, real row locks -------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_decisions_execute_exactly_once(make_approval, decided_handler):
    requester = UserFactory()
    approvers = Group.objects.create(name="Approvers")
    deciders = [UserFactory() for _ in range(3)]
    for person in deciders:
        person.groups.add(approvers)
    approval = make_approval(requester, approver_group=approvers)

    def attempt(i):
        # Double clicks (same person twice) and two people at once.
        return decide(approval, deciders[i % 3], approve=i % 2 == 0, reason=f"attempt {i}")

    results = race(6, attempt)
    wins = [r for r in results if isinstance(r, ApprovalRequest)]
    losses = [r for r in results if isinstance(r, ApprovalNotPending)]
    assert len(wins) == 1, results
    assert len(losses) == 5, results
    approval.refresh_from_db()
    assert approval.status == wins[0].status
    assert len(decided_handler) == 1
    assert ToolInvocation.objects.get(pk=approval.invocation_id).attempts == 1
    assert AuditEvent.objects.filter(action="approval.decided").count() == 1


@pytest.mark.django_db(transaction=True)
def test_decision_racing_the_expiry_sweep_settles_once(make_approval, decided_handler):
    requester = UserFactory()
    approval = make_approval(requester, expires=3600)
    ApprovalRequest.objects.filter(pk=approval.pk).update(
        expires_at=timezone.now() + timedelta(seconds=2)
    )
    approval.refresh_from_db()
    later = timezone.now() + timedelta(seconds=3)

    def attempt(i):
        if i == 0:
            return approvals_expire_due(now=later)
        return decide(approval, requester)

    race(4, attempt)
    approval.refresh_from_db()
    assert approval.status in {"approved", "expired"}
    assert ToolInvocation.objects.get(pk=approval.invocation_id).attempts == 1
    assert len(decided_handler) == 1
