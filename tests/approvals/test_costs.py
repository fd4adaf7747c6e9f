"""Cost on approval cards: the stored estimate, its text, and the hold the approving
vote takes against the requester's budget (refused with a message when it would
pass one)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import BudgetReservation
from approvals.costs import CostEstimate, NextStepEstimate, cost_summary, usd_estimate
from approvals.models import ApprovalRequest, ApprovalVote
from approvals.services import ApprovalBudgetExceeded, approval_decide
from audit.models import AuditEvent
from tests.accounts.test_budget_counters import assert_counters_match_rows
from tests.factories import BudgetFactory, GroupFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal
HTMX = {"HTTP_HX_REQUEST": "true"}


def estimate(*, step_cost="0.0021", tool_cost=None, input_tokens=1_234, output_tokens=1_024):
    return CostEstimate(
        tool_cost_usd=None if tool_cost is None else D(tool_cost),
        next_step=NextStepEstimate(
            model="Mock GPT",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=None if step_cost is None else D(step_cost),
            input_price_usd=None if step_cost is None else D("0.000001"),
            output_price_usd=None if step_cost is None else D("0.000001"),
        ),
    )


def decide(approval, actor, **kwargs):
    kwargs.setdefault("approve", True)
    kwargs.setdefault("arguments_hash", approval.arguments_hash)
    return approval_decide(approval_id=approval.pk, actor=actor, **kwargs)


def holds(approval) -> list[tuple[str, str, Decimal, int]]:
    return [
        (r.kind, r.status, r.cost_usd, r.tokens)
        for r in BudgetReservation.objects.filter(run_id=approval.run_id).order_by("id")
    ]


# --- The estimate and its text ------------------------------------------------------


def test_the_card_line_says_what_is_known_and_never_zero_for_unknown():
    assert cost_summary(estimate()) == (
        "Estimated cost: about $0.0021 (next model step: 1,234 input + up to 1,024 output "
        "tokens; this tool: no estimate)"
    )
    assert cost_summary(estimate(tool_cost="0.01")) == (
        "Estimated cost: about $0.012 (next model step: 1,234 input + up to 1,024 output "
        "tokens; this tool: $0.01)"
    )
    assert cost_summary(estimate(step_cost=None)) == (
        "Estimated cost: no estimate (next model step: 1,234 input + up to 1,024 output "
        "tokens, no known prices for Mock GPT; this tool: no estimate)"
    )
    no_run = CostEstimate(tool_cost_usd=None, next_step=None)
    assert cost_summary(no_run) == "Estimated cost: no estimate (this tool: no estimate)"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0", "$0.00"),
        ("0.00212345", "$0.0021"),
        ("0.0996", "$0.10"),
        ("0.35", "$0.35"),
        ("1.234", "$1.23"),
        ("1234.5", "$1,234.50"),
        ("0.0000004", "less than $0.000001"),
    ],
)
def test_estimates_are_shown_without_false_precision(amount, shown):
    assert usd_estimate(D(amount)) == shown


def test_the_estimate_survives_its_stored_form():
    for value in (estimate(), estimate(step_cost=None, tool_cost="0.5")):
        assert CostEstimate.from_json(value.as_json()) == value
    assert CostEstimate.from_json({}) is None  # stored before estimates existed


def test_the_gate_stores_the_estimate_and_the_card_shows_it(user, user_client, make_approval):
    approval = make_approval(user, cost=estimate(tool_cost="0.01"))
    approval.refresh_from_db()
    assert approval.estimated_cost_usd == D("0.0121")
    assert CostEstimate.from_json(approval.cost_estimate) == estimate(tool_cost="0.01")
    requested = AuditEvent.objects.get(action="approval.requested")
    assert requested.data["cost_estimate"]["next_step"]["input_tokens"] == 1_234
    body = user_client.get(f"/approvals/{approval.pk}/", **HTMX).content.decode()
    assert '<p class="approval-cost"' in body
    assert "Estimated cost: about $0.012 (next model step: 1,234 input" in body
    unestimated = make_approval(user)
    body = user_client.get(f"/approvals/{unestimated.pk}/", **HTMX).content.decode()
    assert "approval-cost" not in body


# --- The hold ------------------------------------------------------------------------


def test_approving_holds_the_estimate_for_the_run(user, make_approval, decided_handler):
    BudgetFactory(user=user, cost_limit_usd=D("1.00"))
    approval = make_approval(user, cost=estimate(tool_cost="0.01"))
    decided = decide(approval, user)
    assert decided.status == ApprovalRequest.Status.APPROVED
    assert holds(approval) == [("approval", "held", D("0.0121"), 1_234 + 1_024)]
    event = AuditEvent.objects.get(action="approval.decided")
    assert event.data["cost_held"]["cost_usd"] == "0.012100000000"
    assert event.data["cost_held"]["reservation_ids"] == [
        BudgetReservation.objects.get(run_id=approval.run_id).pk
    ]
    assert_counters_match_rows()


def test_a_second_approval_of_the_turn_holds_only_its_tool(
    user, make_approval, make_invocation, decided_handler
):
    from conversations.models import Run

    BudgetFactory(user=user, cost_limit_usd=D("1.00"))
    first = make_approval(user, cost=estimate(step_cost="0.30"))
    run = Run.objects.get(pk=first.run_id)
    second = make_approval(
        user,
        cost=estimate(step_cost="0.30", tool_cost="0.05"),
        invocation=make_invocation(user, run=run, conversation=run.conversation),
    )
    decide(first, user)
    decide(second, user)
    assert holds(first) == [
        ("approval", "held", D("0.30"), 2_258),
        ("approval", "held", D("0.05"), 0),
    ]


def test_a_decision_over_the_requesters_budget_is_refused_and_nothing_runs(
    make_approval, decided_handler
):
    requester, approver = UserFactory(name="Rita"), UserFactory()
    group = GroupFactory(name="Approvers")
    approver.groups.add(group)
    BudgetFactory(user=requester, cost_limit_usd=D("0.001"))
    BudgetFactory(user=approver, cost_limit_usd=D("100"))  # the approver's is not the one
    approval = make_approval(requester, approver_group=group, cost=estimate())
    with pytest.raises(ApprovalBudgetExceeded) as info:
        decide(approval, approver)
    message = str(info.value)
    assert message.startswith(
        "Not approved: the estimated cost would pass a budget that limits Rita's spending: "
        "monthly budget of $0.001 reached ($0.00 used, this call needs up to $0.0021)"
    )
    assert message.endswith("Nothing ran; the request is still pending.")
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.PENDING
    assert not ApprovalVote.objects.filter(approval=approval).exists()
    assert decided_handler == []  # the invocation was never approved
    assert not BudgetReservation.objects.exists()
    refused = AuditEvent.objects.get(action="approval.refused")
    assert (refused.actor_id, refused.data["reason"]) == (approver.pk, "budget")
    assert refused.data["why"] == message
    assert not AuditEvent.objects.filter(action__in=["approval.voted", "approval.decided"])


def test_the_requesters_budget_counts_not_the_approvers(make_approval, decided_handler):
    requester, approver = UserFactory(), UserFactory()
    group = GroupFactory(name="Approvers")
    approver.groups.add(group)
    BudgetFactory(user=approver, cost_limit_usd=D("0"))
    approval = make_approval(requester, approver_group=group, cost=estimate())
    assert decide(approval, approver).status == ApprovalRequest.Status.APPROVED
    assert not BudgetReservation.objects.exists()  # the requester has no budget


def test_only_the_vote_that_completes_n_of_m_holds_and_may_be_refused(
    make_approval, decided_handler
):
    requester, ana, bob = UserFactory(), UserFactory(), UserFactory()
    group = GroupFactory(name="Approvers")
    ana.groups.add(group)
    bob.groups.add(group)
    budget = BudgetFactory(user=requester, cost_limit_usd=D("1.00"))
    approval = make_approval(
        requester, approver_group=group, approvals_required=2, cost=estimate(step_cost="0.60")
    )
    decide(approval, ana)
    assert not BudgetReservation.objects.exists()
    budget.cost_limit_usd = D("0.50")
    budget.save()
    with pytest.raises(ApprovalBudgetExceeded, match=r"budget of \$0\.50"):
        decide(approval, bob)
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.PENDING
    assert list(approval.votes.values_list("voter_id", flat=True)) == [ana.pk]  # Bob may retry
    budget.cost_limit_usd = D("1.00")
    budget.save()
    assert decide(approval, bob).status == ApprovalRequest.Status.APPROVED
    assert holds(approval) == [("approval", "held", D("0.60"), 2_258)]


def test_an_unpriced_model_follows_the_rule_for_unpriced_models(
    user, make_approval, decided_handler
):
    budget = BudgetFactory(user=user, cost_limit_usd=D("5"))
    approval = make_approval(user, cost=estimate(step_cost=None))
    with pytest.raises(ApprovalBudgetExceeded) as info:
        decide(approval, user)
    assert str(info.value).startswith(
        "Not approved: the model Mock GPT has no known prices, and a budget limits your spending"
    )
    assert AuditEvent.objects.get(action="approval.refused").data["reason"] == "no_prices"
    # Without a dollar limit the tokens are held, the dollars counted as none.
    budget.cost_limit_usd = None
    budget.token_limit = 100_000
    budget.save()
    assert decide(approval, user).status == ApprovalRequest.Status.APPROVED
    assert holds(approval) == [("approval", "held", D(0), 2_258)]


def test_a_request_without_an_estimate_is_approved_as_before(user, make_approval, decided_handler):
    BudgetFactory(user=user, cost_limit_usd=D("0"))
    approval = make_approval(user)
    assert decide(approval, user).status == ApprovalRequest.Status.APPROVED
    assert not BudgetReservation.objects.exists()


def test_the_card_says_why_a_decision_was_refused(user, user_client, make_approval):
    BudgetFactory(user=user, cost_limit_usd=D("0.001"))
    approval = make_approval(user, cost=estimate())
    response = user_client.post(
        f"/approvals/{approval.pk}/decide",
        {"decision": "approve", "arguments_hash": approval.arguments_hash},
        **HTMX,
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert 'role="alert"' in body
    assert "would pass a budget that limits your spending" in body
    assert "Estimated cost: about $0.0021" in body
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.PENDING
