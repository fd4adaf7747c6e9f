"""Agents and handoffs in the run core (issue 25), on PostgreSQL: a handoff is a gated
tool call; an approved one switches the run's instructions, model and tools; each
transfer mode sends exactly its messages (asserted on what llmock, a real
OpenAI-compatible server, received); the handoff limit stops a loop."""

from __future__ import annotations

import pytest
from django.db import transaction

from approvals.models import ApprovalPolicy, ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from conversations.loopevents import PendingEvent, loop_event_subscribe
from conversations.models import AgentProfile, Message, ModelConfig, Run
from conversations.runs import run_lock
from conversations.services import ModelUnavailable, SettingsInvalid
from conversations.toolphase import tools_offered, turn_gate
from tests.conversations.conftest import drive, send
from tests.factories import (
    AgentProfileFactory,
    ApprovalPolicyFactory,
    ConversationFactory,
    ModelConfigFactory,
)
from tools.models import ToolInvocation
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

S = Run.Status
IS = ToolInvocation.Status


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


@pytest.fixture
def second_model(db) -> ModelConfig:
    return ModelConfigFactory(name="Demo (specialist)")


def _team(user, demo_model, billing_model, tools=("calc.evaluate",), **billing):
    billing_agent = AgentProfileFactory(
        owner=user, name="Billing", tools=list(tools), model_config=billing_model, **billing
    )
    triage = AgentProfileFactory(
        owner=user, name="Triage", tools=["time.now"], handoff_targets=[billing_agent]
    )
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=triage)
    return conversation, triage, billing_agent


def _tool_names(run: Run) -> list[str]:
    return sorted(tool["function"]["name"] for tool in tools_offered(run=run) or [])


def test_a_run_with_an_agent_is_offered_its_tools_and_handoffs_only(user, demo_model):
    conversation, _, _ = _team(user, demo_model, None)
    run = send(conversation, "hello")
    assert run.parameters["agent"]["name"] == "Triage"
    assert run.parameters["system_prompt"]["text"] == "You are Triage."
    assert _tool_names(run) == ["handoff_to_billing", "time__now"]


def test_a_handoff_refused_by_policy_leaves_the_first_agent_speaking(user, demo_model):
    conversation, _, _ = _team(user, demo_model, None)
    ApprovalPolicyFactory(tool_pattern="handoff_to_*", action=ApprovalPolicy.Action.DENY)
    run = drive(send(conversation, "hand off to Billing"))
    assert run.status == S.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.tool_name == "handoff_to_billing"
    assert invocation.status == IS.DENIED
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    assert tool_message.content.startswith("Denied by policy")
    answer = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).latest("id")
    assert answer.metadata["agent"]["name"] == "Triage"
    assert "denied" in answer.content
    assert run.parameters["agent"]["name"] == "Triage"
    assert "handoffs" not in run.metadata
    assert not AuditEvent.objects.filter(action="agent.handoff").exists()


def test_an_approved_handoff_switches_instructions_model_and_tools(
    user, demo_model, second_model, django_capture_on_commit_callbacks
):
    conversation, _, billing = _team(user, demo_model, second_model)
    run = drive(send(conversation, "hand off to Billing"))
    assert run.status == S.AWAITING_APPROVAL  # no rule: a handoff asks
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    assert approval.tool_name == "handoff_to_billing"
    approval_decide(
        approval_id=approval.pk,
        actor=user,
        approve=True,
        arguments_hash=approval.arguments_hash,
    )
    heard: list = []
    unsubscribe = loop_event_subscribe(heard.append)
    try:
        with django_capture_on_commit_callbacks() as callbacks:
            run = drive(run)
        for callback in callbacks:  # the loop events' only (steps are driven by hand)
            if isinstance(getattr(callback, "__self__", None), PendingEvent):
                callback()
    finally:
        unsubscribe()
    assert run.status == S.COMPLETED, run.error
    assert run.model_config == second_model
    assert run.parameters["agent"]["name"] == "Billing"
    assert run.parameters["system_prompt"]["text"] == "You are Billing."
    [handoff] = run.metadata["handoffs"]
    assert handoff["from"]["name"] == "Triage" and handoff["to"]["id"] == billing.pk
    assert handoff["reason"] == "The user asked for Billing." and handoff["mode"] == "full"
    event = AuditEvent.objects.get(action="agent.handoff")
    assert event.data["to"]["name"] == "Billing" and event.data["mode"] == "full"
    assert ("agent.handoff", "Triage", "Billing") in [
        (e.name, e.data.get("from_agent"), e.data.get("to_agent")) for e in heard
    ]
    first, last = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("id")
    assert first.metadata["agent"]["name"] == "Triage"
    assert last.metadata["agent"]["name"] == "Billing"
    assert last.model == second_model.litellm_model
    assert "Handed off to Billing" in last.content
    # Billing's tools only: no Triage tool, no handoff (Billing has no targets).
    assert _tool_names(run) == ["calc__evaluate"]

    # A call of a tool Billing lacks is refused with a clear result, never gated.
    message = Message.objects.create(
        conversation=conversation,
        run=run,
        role=Message.Role.ASSISTANT,
        run_step=run.step + 1,
        tool_calls=[
            {
                "id": "call_time",
                "type": "function",
                "function": {"name": "time__now", "arguments": '{"timezone": "UTC"}'},
            }
        ],
    )
    with transaction.atomic():
        turn_gate(run=run_lock(run_id=run.pk), message=message)
    invocation = ToolInvocation.objects.get(run_id=run.pk, tool_call_id="call_time")
    assert invocation.status == IS.FAILED
    assert invocation.result == (
        "The agent Billing may not use the tool 'time.now'; it was not run. "
        "Call only the tools you were given."
    )


def _handed_off(user, demo_model, mock_model, mode: str) -> Run:
    mock_model.input_cost_per_token = mock_model.output_cost_per_token = 0
    mock_model.save()
    # No tools: llmock would call one (the last request would be the one after it).
    conversation, _, _ = _team(user, demo_model, mock_model, tools=(), transfer=mode)
    ApprovalPolicyFactory(tool_pattern="handoff_to_*", action=ApprovalPolicy.Action.ALLOW)
    assert drive(send(conversation, "hello")).status == S.COMPLETED
    run = drive(send(conversation, "hand off to Billing"))
    assert run.status == S.COMPLETED, run.error
    return run


GREETING = "Hello! I am the offline demo model. Ask me anything, or try `calculate 17*23`."
HANDOFF_LINE = (
    "You are Billing.\n\nThe agent Triage handed this conversation to you. "
    "Reason: The user asked for Billing.\nIts note: hand off to Billing"
)


def test_transfer_full_sends_the_whole_history(user, demo_model, mock_model, llmock):
    run = _handed_off(user, demo_model, mock_model, AgentProfile.Transfer.FULL)
    sent = llmock.last_request.body["messages"]
    call = ToolInvocation.objects.get(run_id=run.pk)
    assert [(m["role"], m.get("content")) for m in sent] == [
        ("system", "You are Billing."),
        ("user", "hello"),
        ("assistant", GREETING),
        ("user", "hand off to Billing"),
        ("assistant", None),
        ("tool", "Handed off to Billing, who answers from now on."),
    ]
    assert sent[4]["tool_calls"][0]["function"]["name"] == "handoff_to_billing"
    assert sent[5]["tool_call_id"] == call.tool_call_id


def test_transfer_without_tool_traffic_drops_the_calls_and_results(
    user, demo_model, mock_model, llmock
):
    _handed_off(user, demo_model, mock_model, AgentProfile.Transfer.NO_TOOLS)
    assert llmock.last_request.body["messages"] == [
        {"role": "system", "content": HANDOFF_LINE},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": GREETING},
        {"role": "user", "content": "hand off to Billing"},
    ]


def test_transfer_summary_sends_the_note_and_the_last_user_message(
    user, demo_model, mock_model, llmock
):
    _handed_off(user, demo_model, mock_model, AgentProfile.Transfer.SUMMARY)
    assert llmock.last_request.body["messages"] == [
        {"role": "system", "content": HANDOFF_LINE},
        {"role": "user", "content": "hand off to Billing"},
    ]


def test_the_handoff_limit_stops_a_loop(user, demo_model):
    # Two agents named Billing, each handing off to the other: "hand off to Billing"
    # would go back and forth; the second is past the limit (one per run).
    first = AgentProfileFactory(owner=user, name="Billing", max_handoffs=1)
    second = AgentProfileFactory(
        owner=user, name="Billing", max_handoffs=1, transfer=AgentProfile.Transfer.SUMMARY
    )
    first.handoff_targets.set([second])
    second.handoff_targets.set([first])
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=first)
    ApprovalPolicyFactory(tool_pattern="handoff_to_*", action=ApprovalPolicy.Action.ALLOW)
    assert drive(send(conversation, "hello")).status == S.COMPLETED
    run = drive(send(conversation, "hand off to Billing"))
    assert run.status == S.COMPLETED, run.error
    assert [h["to"]["id"] for h in run.metadata["handoffs"]] == [second.pk]
    assert run.parameters["agent"]["id"] == second.pk  # the second answers
    made, refused = ToolInvocation.objects.filter(run_id=run.pk).order_by("id")
    assert made.status == IS.SUCCEEDED
    assert refused.status == IS.FAILED
    assert refused.result.startswith("Handoff limit reached: this run has handed off 1 times")
    assert AuditEvent.objects.filter(action="agent.handoff").count() == 1


def test_a_shared_agents_private_target_is_not_offered_to_another_user(
    user, other_user, demo_model
):
    private = AgentProfileFactory(owner=other_user, name="Secret desk")
    public = AgentProfileFactory(owner=other_user, name="Billing", visibility="everyone")
    front = AgentProfileFactory(
        owner=other_user, name="Front", visibility="everyone", handoff_targets=[private, public]
    )
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=front)
    run = send(conversation, "hello")
    assert [h["name"] for h in run.parameters["agent"]["handoffs"]] == ["Billing"]
    assert "handoff_to_secret_desk" not in _tool_names(run)
    assert "handoff_to_billing" in _tool_names(run)


def test_an_agent_no_longer_shared_or_with_a_disabled_model_refuses_the_message(
    user, other_user, demo_model, second_model
):
    shared = AgentProfileFactory(owner=other_user, visibility="everyone")
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=shared)
    shared.visibility = "private"
    shared.save()
    with pytest.raises(SettingsInvalid, match="no longer shared with you"):
        send(conversation, "hello")
    own = AgentProfileFactory(owner=user, model_config=second_model)
    conversation.agent = own
    conversation.save()
    second_model.enabled = False
    second_model.save()
    with pytest.raises(ModelUnavailable, match=r"The agent's model Demo \(specialist\)"):
        send(conversation, "hello")
    assert not Message.objects.filter(conversation=conversation).exists()


def test_a_handoff_called_without_an_agent_is_refused(user, demo_model):
    conversation = ConversationFactory(owner=user, model_config=demo_model)
    run = drive(send(conversation, "hello"))
    assert "agent" not in run.parameters
    assert not [name for name in _tool_names(run) if name.startswith("handoff_to_")]
    message = Message.objects.create(
        conversation=conversation,
        run=run,
        role=Message.Role.ASSISTANT,
        run_step=run.step + 1,
        tool_calls=[
            {
                "id": "call_handoff",
                "type": "function",
                "function": {"name": "handoff_to_billing", "arguments": '{"reason": "x"}'},
            }
        ],
    )
    with transaction.atomic():
        turn_gate(run=run_lock(run_id=run.pk), message=message)
    invocation = ToolInvocation.objects.get(run_id=run.pk, tool_call_id="call_handoff")
    assert invocation.status == IS.FAILED
    assert invocation.result.startswith(
        "This conversation may not use the tool 'handoff_to_billing'; it was not run."
    )


def test_always_allow_on_a_handoff_card_holds_for_this_conversation_only(user, demo_model):
    conversation, triage, _ = _team(user, demo_model, None)
    run = drive(send(conversation, "hand off to Billing"))
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=approval.pk,
        actor=user,
        approve=True,
        arguments_hash=approval.arguments_hash,
        always_allow=True,
    )
    assert drive(run).status == S.COMPLETED
    # The next message starts with Triage again; its handoff is not asked about.
    again = drive(send(conversation, "hand off to Billing"))
    assert again.status == S.COMPLETED, again.error
    assert again.parameters["agent"]["name"] == "Billing"
    assert ApprovalRequest.objects.count() == 1
    # Another conversation with the same agents asks again.
    elsewhere = ConversationFactory(owner=user, model_config=demo_model, agent=triage)
    assert drive(send(elsewhere, "hand off to Billing")).status == S.AWAITING_APPROVAL
