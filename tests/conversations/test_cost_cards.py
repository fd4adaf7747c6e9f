"""Cost on approval cards through the agent loop: the gate estimates the next model
step, approving holds it, the next call's admission releases it (no double count)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import BudgetCounter, BudgetReservation
from approvals.costs import CostEstimate, usd_estimate
from approvals.models import ApprovalRequest
from approvals.services import ApprovalBudgetExceeded, approval_decide
from audit.models import AuditEvent
from conversations.models import Message, Run
from tests.accounts.test_budget_counters import assert_counters_match_rows
from tests.conversations.conftest import drive, send
from tests.factories import BudgetFactory
from tools.models import Note, ToolInvocation
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

D = Decimal
S = Run.Status
INPUT_PRICE = D("0.000002")
OUTPUT_PRICE = D("0.000008")


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


@pytest.fixture
def priced(demo_model):
    demo_model.input_cost_per_token = INPUT_PRICE
    demo_model.output_cost_per_token = OUTPUT_PRICE
    demo_model.save()
    return demo_model


def ask_to_delete(conversation) -> tuple[Run, ApprovalRequest]:
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday at 10")
    run = drive(send(conversation, "forget the meeting"))
    assert run.status == S.AWAITING_APPROVAL, run.error
    return run, ApprovalRequest.objects.get(run_id=run.pk)


def approve(approval: ApprovalRequest) -> ApprovalRequest:
    return approval_decide(
        approval_id=approval.pk,
        actor=approval.requester,
        approve=True,
        arguments_hash=approval.arguments_hash,
    )


def spent(user) -> Decimal:
    counter = BudgetCounter.objects.get(budget__user=user)
    return counter.spent_usd + counter.held_usd


def test_the_gate_stores_the_next_steps_worst_case_and_the_card_shows_it(
    conversation, priced, user_client
):
    run, approval = ask_to_delete(conversation)
    asked = Message.objects.get(run=run, role=Message.Role.ASSISTANT, tool_calls__isnull=False)
    estimate = CostEstimate.from_json(approval.cost_estimate)
    assert estimate is not None and estimate.tool_cost_usd is None
    step = estimate.next_step
    # What the model read and wrote in the call that asked, then the most it may write.
    assert step.input_tokens == asked.prompt_tokens + asked.completion_tokens > 0
    assert step.output_tokens == priced.max_output_tokens == 1024
    worst = step.input_tokens * INPUT_PRICE + 1024 * OUTPUT_PRICE
    assert step.cost_usd == worst == approval.estimated_cost_usd
    assert (step.input_price_usd, step.output_price_usd) == (INPUT_PRICE, OUTPUT_PRICE)

    page = user_client.get(f"/c/{conversation.pk}/").content.decode()
    assert usd_estimate(worst).startswith("$0.00")  # two significant digits, not six
    assert (
        f"Estimated cost: about {usd_estimate(worst)} (next model step: {step.input_tokens:,} "
        "input + up to 1,024 output tokens; this tool: no estimate)"
    ) in page


def test_approving_holds_the_estimate_and_the_next_call_releases_it(conversation, priced):
    budget = BudgetFactory(user=conversation.owner, cost_limit_usd=D(1))
    run, approval = ask_to_delete(conversation)
    first_call = Message.objects.get(run=run, tool_calls__isnull=False).cost_usd
    spent_before = spent(conversation.owner)
    assert spent_before == first_call > 0
    worst = approval.estimated_cost_usd
    # Room for one hold of the next call, not for two: counting the approval's hold
    # and the call's own together would refuse the call.
    budget.cost_limit_usd = spent_before + worst * D("1.5")
    budget.save()

    approve(approval)
    held = BudgetReservation.objects.get(run_id=run.pk, kind="approval")
    assert (held.status, held.cost_usd, held.tokens) == ("held", worst, approval_tokens(approval))
    assert spent(conversation.owner) == spent_before + worst
    assert_counters_match_rows()

    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    assert not Note.objects.filter(key="meeting").exists()
    held.refresh_from_db()
    assert held.status == "released"
    calls = BudgetReservation.objects.filter(run_id=run.pk, kind="call").order_by("id")
    assert [r.status for r in calls] == ["settled", "settled"]
    assert held.settled_at <= calls[1].created_at  # released before the call was held
    final = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("-id")[0]
    assert spent(conversation.owner) == first_call + final.cost_usd
    assert_counters_match_rows()


def approval_tokens(approval: ApprovalRequest) -> int:
    step = approval.cost_estimate["next_step"]
    return step["input_tokens"] + step["output_tokens"]


def test_a_decision_over_the_budget_is_refused_and_nothing_runs(conversation, priced):
    budget = BudgetFactory(user=conversation.owner, cost_limit_usd=D(1))
    run, approval = ask_to_delete(conversation)
    budget.cost_limit_usd = spent(conversation.owner) + approval.estimated_cost_usd / 2
    budget.save()
    with pytest.raises(ApprovalBudgetExceeded, match="would pass a budget that limits your"):
        approve(approval)
    run.refresh_from_db()
    approval.refresh_from_db()
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert run.status == S.AWAITING_APPROVAL
    assert approval.status == ApprovalRequest.Status.PENDING
    assert (invocation.status, invocation.attempts) == ("awaiting_approval", 0)
    assert Note.objects.filter(key="meeting").exists()
    assert not BudgetReservation.objects.filter(kind="approval").exists()
    assert AuditEvent.objects.filter(action="approval.refused", data__reason="budget").exists()
    assert not AuditEvent.objects.filter(action="tool.executed").exists()


def test_an_unpriced_model_shows_no_estimate_and_approving_follows_the_unpriced_rule(
    conversation, demo_model, user_client
):
    demo_model.input_cost_per_token = None
    demo_model.output_cost_per_token = None
    demo_model.litellm_model = "demo/unpriced-model"
    demo_model.save()
    run, approval = ask_to_delete(conversation)
    assert approval.estimated_cost_usd is None
    tokens = approval.cost_estimate["next_step"]["input_tokens"]
    page = user_client.get(f"/c/{conversation.pk}/").content.decode()
    assert (
        f"Estimated cost: no estimate (next model step: {tokens:,} input + up to 1,024 output "
        f"tokens, no known prices for {demo_model.name}; this tool: no estimate)"
    ) in page

    # Under a dollar limit the next call would be refused: so is the approval.
    budget = BudgetFactory(user=conversation.owner, cost_limit_usd=D(5))
    with pytest.raises(ApprovalBudgetExceeded, match="has no known prices"):
        approve(approval)
    assert ToolInvocation.objects.get(run_id=run.pk).status == "awaiting_approval"

    # A token limit only: the tokens are held, and the run goes on.
    budget.cost_limit_usd = None
    budget.token_limit = 1_000_000
    budget.save()
    approve(approval)
    held = BudgetReservation.objects.get(run_id=run.pk, kind="approval")
    assert (held.cost_usd, held.tokens) == (D(0), approval_tokens(approval))
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    held.refresh_from_db()
    assert held.status == "released"
    assert_counters_match_rows()


def test_stopping_a_run_after_approval_releases_its_hold(conversation, priced):
    from conversations import services

    BudgetFactory(user=conversation.owner, cost_limit_usd=D(1))
    run, approval = ask_to_delete(conversation)
    spent_before = spent(conversation.owner)
    approve(approval)
    held = BudgetReservation.objects.get(run_id=run.pk, kind="approval")
    assert spent(conversation.owner) > spent_before

    services.run_cancel(user=conversation.owner, run_id=run.pk)  # before the tool ran
    run.refresh_from_db()
    assert run.status == S.CANCELLED
    held.refresh_from_db()
    assert held.status == "released"  # not held for the hour until expiry
    assert spent(conversation.owner) == spent_before
    assert_counters_match_rows()
