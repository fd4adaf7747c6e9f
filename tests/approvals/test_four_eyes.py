"""Four eyes (the requester never decides) and N-of-M (several approvals, one denial)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.canonical import arguments_hash
from approvals.models import ApprovalRequest, ApprovalVote
from approvals.selectors import (
    FOUR_EYES_MESSAGE,
    approval_can_decide,
    approval_can_view,
    approval_can_vote,
    approvals_pending_count,
    gate_evaluate,
)
from approvals.services import (
    AlwaysAllowRefused,
    ApprovalAlreadyVoted,
    ApprovalArgumentsMismatch,
    ApprovalEditRefused,
    ApprovalForbidden,
    ApprovalNotPending,
    approval_decide,
    approval_request_create,
    approvals_cancel_for_run,
    approvals_expire_due,
)
from audit.models import AuditEvent
from tests.factories import ApprovalPolicyFactory, GroupFactory, UserFactory
from tests.race import race
from tools.models import ToolInvocation

WRITE = {"read_only": False, "destructive": False}


def decide(approval, actor, **kwargs):
    kwargs.setdefault("approve", True)
    kwargs.setdefault("arguments_hash", approval.arguments_hash)
    return approval_decide(approval_id=approval.pk, actor=actor, **kwargs)


def approvers_with(*people, name="Approvers"):
    group = GroupFactory(name=name)
    for person in people:
        person.groups.add(group)
    return group


# --- The rule is copied onto the request -------------------------------------------


def test_gate_copies_the_options_and_a_later_rule_change_leaves_the_request(
    make_invocation, decided_handler
):
    requester, ana, bob = UserFactory(), UserFactory(), UserFactory()
    group = approvers_with(requester, ana, bob)
    policy = ApprovalPolicyFactory(
        tool_pattern="notes.write", approvers_group=group, four_eyes=True, approvals_required=2
    )
    decision = gate_evaluate(
        user=requester, tool_name="notes.write", hints=WRITE, arguments={}, conversation_id=None
    )
    assert (decision.action, decision.four_eyes, decision.approvals_required) == ("ask", True, 2)
    invocation = make_invocation(requester, tool_name="notes.write", arguments={"key": "k"})
    approval = approval_request_create(
        invocation_id=invocation.pk,
        requester=requester,
        conversation_id=invocation.conversation_id,
        run_id=invocation.run_id,
        tool_name="notes.write",
        tool_description="",
        hints=WRITE,
        arguments={"key": "k"},
        arguments_schema={},
        decision=decision,
    )
    requested = AuditEvent.objects.get(action="approval.requested")
    assert (requested.data["four_eyes"], requested.data["approvals_required"]) == (True, 2)

    policy.four_eyes = False
    policy.approvals_required = 1
    policy.save()
    approval.refresh_from_db()
    assert (approval.four_eyes, approval.approvals_required) == (True, 2)
    with pytest.raises(ApprovalForbidden):
        decide(approval, requester)
    assert decide(approval, ana).status == "pending"
    assert decide(approval, bob).status == "approved"


def test_request_constraints_need_an_approver_group(user, make_approval):
    approval = make_approval(user)
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=approval.pk).update(four_eyes=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalRequest.objects.filter(pk=approval.pk).update(approvals_required=2)


# --- Four eyes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "requester_kwargs", [{}, {"is_staff": True}, {"is_staff": True, "is_superuser": True}]
)
def test_four_eyes_requester_never_decides(make_approval, decided_handler, requester_kwargs):
    requester, colleague = UserFactory(**requester_kwargs), UserFactory()
    group = approvers_with(requester, colleague)
    approval = make_approval(requester, approver_group=group, four_eyes=True)
    assert not approval_can_decide(user=requester, approval=approval)
    assert approval_can_view(user=requester, approval=approval)  # still sees the card
    assert approval_can_decide(user=colleague, approval=approval)
    for approve in (True, False):
        with pytest.raises(ApprovalForbidden) as info:
            decide(approval, requester, approve=approve, ip="198.51.100.7")
        assert str(info.value) == FOUR_EYES_MESSAGE
    approval.refresh_from_db()
    assert approval.status == "pending"
    assert not ApprovalVote.objects.exists()
    assert decided_handler == []
    refusals = AuditEvent.objects.filter(action="approval.forbidden").order_by("sequence")
    assert [(e.actor_id, e.data["why"], e.data["four_eyes"]) for e in refusals] == [
        (requester.pk, FOUR_EYES_MESSAGE, True)
    ] * 2
    assert approvals_pending_count(user=requester) == 0
    assert approvals_pending_count(user=colleague) == 1

    assert decide(approval, colleague).decided_by == colleague
    assert decided_handler == [(approval.pk, "approved")]


def test_without_four_eyes_a_requester_in_the_group_may_approve(make_approval, decided_handler):
    requester = UserFactory(is_staff=True)
    group = approvers_with(requester)
    approval = make_approval(requester, approver_group=group)
    assert approvals_pending_count(user=requester) == 1
    assert decide(approval, requester).status == "approved"
    assert decided_handler == [(approval.pk, "approved")]


def test_staff_outside_the_group_may_not_decide(make_approval):
    approval = make_approval(UserFactory(), approver_group=approvers_with(UserFactory()))
    with pytest.raises(ApprovalForbidden):
        decide(approval, UserFactory(is_staff=True, is_superuser=True))


# --- N of M ------------------------------------------------------------------------


def test_two_of_n_needs_two_different_approvers(make_approval, decided_handler):
    requester, ana, bob = UserFactory(), UserFactory(), UserFactory()
    group = approvers_with(ana, bob, UserFactory())
    approval = make_approval(requester, approver_group=group, approvals_required=2)

    first = decide(approval, ana, reason="looks fine", ip="192.0.2.1")
    assert first.status == "pending"
    assert first.decided_at is None
    assert decided_handler == []
    assert ToolInvocation.objects.get(pk=approval.invocation_id).status == "awaiting_approval"
    vote = ApprovalVote.objects.get()
    assert (vote.voter, vote.decision, vote.reason, vote.arguments_hash, vote.edited) == (
        ana,
        "approve",
        "looks fine",
        approval.arguments_hash,
        False,
    )
    voted = AuditEvent.objects.get(action="approval.voted")
    assert (voted.actor_id, voted.ip, voted.data["approvals"], voted.data["decision"]) == (
        ana.pk,
        "192.0.2.1",
        1,
        "approve",
    )
    assert not AuditEvent.objects.filter(action="approval.decided").exists()
    assert not approval_can_vote(user=ana, approval=first)
    assert approval_can_vote(user=bob, approval=first)
    assert approvals_pending_count(user=ana) == 0
    assert approvals_pending_count(user=bob) == 1

    second = decide(approval, bob)
    assert (second.status, second.decided_by) == ("approved", bob)
    assert decided_handler == [(approval.pk, "approved")]
    assert ToolInvocation.objects.get(pk=approval.invocation_id).status == "approved"
    assert AuditEvent.objects.filter(action="approval.voted").count() == 2
    decided = AuditEvent.objects.get(action="approval.decided")
    assert decided.actor_id == bob.pk
    assert decided.data["approvals_required"] == 2
    assert decided.data["votes"] == [
        {"voter_id": ana.pk, "decision": "approve"},
        {"voter_id": bob.pk, "decision": "approve"},
    ]


def test_the_same_person_approving_twice_is_refused(make_approval, decided_handler):
    ana = UserFactory()
    group = approvers_with(ana, UserFactory())
    approval = make_approval(UserFactory(), approver_group=group, approvals_required=2)
    decide(approval, ana)
    for approve in (True, False):
        with pytest.raises(ApprovalAlreadyVoted) as info:
            decide(approval, ana, approve=approve)
        assert str(info.value) == "You have already approved this request."
    approval.refresh_from_db()
    assert approval.status == "pending"
    assert ApprovalVote.objects.count() == 1
    assert decided_handler == []
    # The table says so too, whatever the caller.
    with pytest.raises(IntegrityError), transaction.atomic():
        ApprovalVote.objects.create(
            approval=approval, voter=ana, decision="approve", arguments_hash="0" * 64
        )


def test_one_denial_denies_a_partly_approved_request(make_approval, decided_handler):
    ana, bob = UserFactory(), UserFactory()
    group = approvers_with(ana, bob, UserFactory())
    approval = make_approval(UserFactory(), approver_group=group, approvals_required=3)
    decide(approval, ana)
    denied = decide(approval, bob, approve=False, reason="not this week")
    assert (denied.status, denied.decided_by, denied.reason) == ("denied", bob, "not this week")
    assert decided_handler == [(approval.pk, "denied")]
    assert list(approval.votes.values_list("voter", "decision")) == [
        (ana.pk, "approve"),
        (bob.pk, "deny"),
    ]
    with pytest.raises(ApprovalNotPending):
        decide(approval, group.user_set.exclude(pk__in=[ana.pk, bob.pk]).get())
    assert len(decided_handler) == 1


def test_expiry_and_cancellation_end_a_partly_approved_request(make_approval, decided_handler):
    ana = UserFactory()
    group = approvers_with(ana, UserFactory())
    expiring = make_approval(UserFactory(), approver_group=group, approvals_required=2, expires=60)
    cancelled = make_approval(UserFactory(), approver_group=group, approvals_required=2)
    decide(expiring, ana)
    decide(cancelled, ana)
    with time_machine.travel(timezone.now() + timedelta(seconds=120)):
        assert approvals_expire_due() == [expiring.pk]
    expiring.refresh_from_db()
    assert (expiring.status, expiring.reason) == ("expired", "not approved in time")
    assert decided_handler == [(expiring.pk, "expired")]
    assert ToolInvocation.objects.get(pk=expiring.invocation_id).status == "expired"
    assert expiring.votes.count() == 1  # the approval given stays on record

    assert approvals_cancel_for_run(run_id=cancelled.run_id) == 1
    cancelled.refresh_from_db()
    assert cancelled.status == "cancelled"
    assert cancelled.votes.count() == 1
    assert decided_handler == [(expiring.pk, "expired")]


def test_first_approver_edits_and_later_approvers_approve_exactly_that(
    make_approval, decided_handler
):
    ana, bob = UserFactory(), UserFactory()
    group = approvers_with(ana, bob, UserFactory())
    approval = make_approval(
        UserFactory(),
        approver_group=group,
        approvals_required=2,
        arguments={"key": "todo", "text": "buy milk"},
    )
    edited = {"key": "todo", "text": "buy oat milk"}
    first = decide(approval, ana, edited_arguments=edited)
    assert first.status == "pending"
    assert first.edited_arguments == edited
    assert first.effective_arguments_hash == arguments_hash(edited)
    assert ApprovalVote.objects.get().edited is True
    assert ApprovalVote.objects.get().arguments_hash == arguments_hash(edited)

    # A card still showing the arguments as asked is refused: they no longer run.
    with pytest.raises(ApprovalArgumentsMismatch):
        decide(approval, bob)
    # Arguments with an approval are not edited again.
    with pytest.raises(ApprovalEditRefused):
        decide(
            approval,
            bob,
            arguments_hash=arguments_hash(edited),
            edited_arguments={"key": "todo", "text": "buy rice milk"},
        )
    # Quoting them unchanged is no edit.
    second = decide(
        approval, bob, arguments_hash=arguments_hash(edited), edited_arguments=dict(edited)
    )
    assert second.status == "approved"
    assert second.effective_arguments == edited
    assert decided_handler == [(approval.pk, "approved")]
    assert ToolInvocation.objects.get(pk=approval.invocation_id).arguments_executed == edited
    decided = AuditEvent.objects.get(action="approval.decided")
    assert decided.data["edited"] is True
    assert [v.edited for v in approval.votes.all()] == [True, False]


def test_always_allow_is_refused_where_several_people_decide(make_approval, decided_handler):
    ana = UserFactory()
    group = approvers_with(ana, UserFactory())
    quorum = make_approval(UserFactory(), approver_group=group, approvals_required=2)
    four_eyes = make_approval(UserFactory(), approver_group=group, four_eyes=True)
    for approval in (quorum, four_eyes):
        assert not approval.always_allow_permitted
        with pytest.raises(AlwaysAllowRefused):
            decide(approval, ana, always_allow=True)
    assert not ApprovalVote.objects.exists()
    assert decided_handler == []


# --- Concurrency: real connections, real row locks -------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_votes_count_exactly(make_approval, decided_handler):
    requester = UserFactory()
    deciders = [UserFactory() for _ in range(4)]
    group = approvers_with(requester, *deciders)
    approval = make_approval(requester, approver_group=group, four_eyes=True, approvals_required=3)

    def attempt(i):
        # Four people at once, each clicking twice; the requester tries too.
        actor = requester if i == 8 else deciders[i % 4]
        return decide(approval, actor)

    results = race(9, attempt)
    approval.refresh_from_db()
    assert approval.status == "approved", results
    votes = list(approval.votes.values_list("voter_id", flat=True))
    assert len(votes) == len(set(votes)) == 3
    assert requester.pk not in votes
    assert approval.decided_by_id == votes[-1]
    assert len(decided_handler) == 1
    assert ToolInvocation.objects.get(pk=approval.invocation_id).attempts == 1
    assert AuditEvent.objects.filter(action="approval.voted").count() == 3
    assert AuditEvent.objects.filter(action="approval.decided").count() == 1
    assert isinstance(results[8], ApprovalForbidden)
    outcomes = [type(r) for r in results[:8]]
    assert outcomes.count(ApprovalRequest) == 3, results
    assert set(outcomes) <= {ApprovalRequest, ApprovalAlreadyVoted, ApprovalNotPending}
