"""Agents as tools (issue 25), on PostgreSQL: a call of ``ask_agent_<agent>`` is answered
by a sub-run of that agent (its instructions, model, tools and step limit), which may
wait for a person inside it; its answer is the call's result; Stop on the caller stops
it; the run's timeline draws each agent in a lane of its own."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from approvals.models import ApprovalPolicy, ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from conversations import selectors, services
from conversations.models import Message, Run
from conversations.runs import run_part_ended
from conversations.toolphase import tools_offered
from tests.conversations.conftest import advance_and_push, drive, send
from tests.factories import AgentProfileFactory, ApprovalPolicyFactory, ConversationFactory
from tools.models import Note, ToolInvocation
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

S = Run.Status
IS = ToolInvocation.Status


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


def _team(user, demo_model, *, researcher_tools=("calc.evaluate",), **researcher):
    researcher_agent = AgentProfileFactory(
        owner=user, name="Researcher", tools=list(researcher_tools), **researcher
    )
    manager = AgentProfileFactory(owner=user, name="Manager", agent_tools=[researcher_agent])
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=manager)
    ApprovalPolicyFactory(tool_pattern="ask_agent_*", action=ApprovalPolicy.Action.ALLOW)
    return conversation, manager, researcher_agent


def _until_parts(run: Run, *, limit: int = 8) -> Run:
    """Advance ``run`` until it waits on its sub-runs (or ends, or waits for a person)."""
    for _ in range(limit):
        async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
        run.refresh_from_db()
        if run.is_terminal or run.status in (S.AWAITING_APPROVAL, S.AWAITING_PARTS):
            return run
    raise AssertionError(f"run {run.pk} still {run.status}")


def _part_ended(part: Run) -> None:
    """What the state machine sends on commit when a part ends (tests do not commit)."""
    run_part_ended.send(
        sender=Run, orchestrator_id=part.orchestrator_id, kind=Run.Kind.ANSWER, part_id=part.pk
    )


def test_the_caller_is_offered_the_agent_as_a_tool_and_the_sub_run_neither_hands_off_nor_asks(
    user, demo_model
):
    conversation, _, researcher = _team(user, demo_model)
    run = send(conversation, "hello")
    assert sorted(t["function"]["name"] for t in tools_offered(run=run) or []) == [
        "ask_agent_researcher"
    ]
    [tool] = run.parameters["agent"]["agent_tools"]
    assert tool == {"id": researcher.pk, "name": "Researcher", "tool": "ask_agent_researcher",
                    "description": ""}  # fmt: skip


def test_an_agent_tool_is_answered_by_a_sub_run_whose_answer_is_the_result(user, demo_model):
    conversation, _, _ = _team(user, demo_model, max_steps=3)
    run = _until_parts(send(conversation, "ask Researcher to calculate 17*23"))
    assert run.status == S.AWAITING_PARTS, run.error
    call = ToolInvocation.objects.get(run_id=run.pk)
    assert call.tool_name == "ask_agent_researcher" and call.status == IS.RUNNING
    [part] = run.parts.all()
    assert call.metadata["sub_run_id"] == part.pk
    assert part.parameters["agent"]["name"] == "Researcher"
    assert part.parameters["agent"]["handoffs"] == part.parameters["agent"]["agent_tools"] == []
    assert part.parameters["agent_part"]["prompt"] == "calculate 17*23"
    assert part.max_steps == 3  # the called agent's own limit
    assert sorted(t["function"]["name"] for t in tools_offered(run=part) or []) == [
        "calc__evaluate"
    ]

    part = drive(part)
    assert part.status == S.COMPLETED, part.error
    # The sub-run read the task alone, under the called agent's instructions.
    first = Message.objects.filter(run=part, role=Message.Role.ASSISTANT).earliest("id")
    assert first.metadata["agent"]["name"] == "Researcher"
    answer = Message.objects.filter(run=part, role=Message.Role.ASSISTANT).latest("id").content
    assert "391" in answer

    _part_ended(part)
    call.refresh_from_db()
    assert call.status == IS.SUCCEEDED and call.result == answer
    run.refresh_from_db()
    assert run.status == S.CALLING_LLM
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    assert tool_message.content == answer
    started = AuditEvent.objects.get(action="agent.subrun_started")
    assert started.data["agent"]["name"] == "Researcher" and started.data["caller"] == "Manager"
    assert AuditEvent.objects.get(action="agent.subrun_ended").data["status"] == S.COMPLETED
    # Sent again (the recovery job may): nothing changes.
    _part_ended(part)
    assert AuditEvent.objects.filter(action="agent.subrun_ended").count() == 1

    # The sub-run is a step of its exchange: the conversation goes on from the caller.
    later = drive(send(conversation, "hello again"))
    assert later.parent_id == run.pk


def test_a_sub_run_waits_for_an_approval_inside_it(user, demo_model):
    conversation, _, _ = _team(user, demo_model, researcher_tools=("notes.delete",))
    Note.objects.create(user=user, key="meeting", value="Friday")
    run = _until_parts(send(conversation, "ask Researcher to forget the meeting"))
    [part] = run.parts.all()
    part = drive(part)
    assert part.status == S.AWAITING_APPROVAL
    approval = ApprovalRequest.objects.get(run_id=part.pk)
    assert approval.tool_name == "notes.delete"
    run.refresh_from_db()
    assert run.status == S.AWAITING_PARTS  # the caller waits on its sub-run, no worker
    approval_decide(
        approval_id=approval.pk, actor=user, approve=True, arguments_hash=approval.arguments_hash
    )
    part = drive(part)
    assert part.status == S.COMPLETED, part.error
    assert not Note.objects.filter(user=user, key="meeting").exists()
    _part_ended(part)
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    assert ToolInvocation.objects.get(run_id=run.pk).status == IS.SUCCEEDED


def test_stop_on_the_caller_stops_its_sub_run_and_the_call_says_so(user, demo_model):
    conversation, _, _ = _team(user, demo_model, researcher_tools=("notes.delete",))
    Note.objects.create(user=user, key="meeting", value="Friday")
    run = _until_parts(send(conversation, "ask Researcher to forget the meeting"))
    [part] = run.parts.all()
    assert drive(part).status == S.AWAITING_APPROVAL
    services.run_cancel(user=user, run_id=run.pk)
    part.refresh_from_db()
    run.refresh_from_db()
    assert part.status == run.status == S.CANCELLED
    assert ApprovalRequest.objects.get(run_id=part.pk).status == ApprovalRequest.Status.CANCELLED
    _part_ended(part)
    call = ToolInvocation.objects.get(run_id=run.pk)
    assert call.status == IS.FAILED
    assert call.result == "The agent Researcher was stopped before it answered."


def test_an_agent_without_agent_tools_may_not_call_one(user, demo_model):
    loner = AgentProfileFactory(owner=user, name="Loner")
    AgentProfileFactory(owner=user, name="Researcher")
    conversation = ConversationFactory(owner=user, model_config=demo_model, agent=loner)
    run = send(conversation, "hello")
    assert tools_offered(run=run) is None
    # And a run with no agent is offered no agent tool either.
    plain = send(ConversationFactory(owner=user, model_config=demo_model), "hello")
    names = [t["function"]["name"] for t in tools_offered(run=plain) or []]
    assert names and not [n for n in names if n.startswith("ask_agent_")]


def test_the_page_draws_the_sub_run_in_a_section_of_its_caller(client, user, demo_model):
    conversation, _, _ = _team(user, demo_model)
    run = _until_parts(send(conversation, "ask Researcher to calculate 17*23"))
    [part] = run.parts.all()
    drive(part)
    client.force_login(user)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f'id="run-{run.pk}-parts"' in page
    assert f'<details id="run-{part.pk}" class="run agent-part"' in page
    assert "asked by Manager" in page and "calculate 17*23" in page
    # Another user gets no page, and no part of it.
    client.force_login(AgentProfileFactory().owner)
    assert client.get(f"/c/{conversation.pk}/").status_code == 404


def test_the_timeline_draws_each_agent_in_a_lane(user, demo_model):
    conversation, _, _ = _team(user, demo_model)
    run = _until_parts(send(conversation, "ask Researcher to calculate 17*23"))
    [part] = run.parts.all()
    _part_ended(drive(part))
    run = drive(run)
    timeline = selectors.run_timeline(user=user, run_id=run.pk)
    names = [lane.name for lane in timeline.lanes]
    assert names[0] == "Agent Manager"
    assert "Agent Researcher (sub-run)" in names
    assert "Model" not in names
