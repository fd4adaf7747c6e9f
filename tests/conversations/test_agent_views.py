"""The agents page over HTTP (issue 25): a user lists the agents they may see, creates
and edits their own; another user's private agent is a 404 everywhere; bad input is
refused with a clear message and keeps what was typed; the chat shows who wrote an
answer and the handoff line."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.models import ApprovalPolicy
from audit.models import AuditEvent
from conversations.models import AgentProfile
from tests.conversations.conftest import drive, send
from tests.factories import (
    AgentProfileFactory,
    ApprovalPolicyFactory,
    ConversationFactory,
    GroupFactory,
    ModelConfigFactory,
)
from tools.services import tools_sync

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


def _post(client, url, **fields):
    data = {"visibility": "private", "transfer": "full", "max_handoffs": "3", **fields}
    return client.post(url, data)


def test_a_user_never_sees_another_users_private_agent(client, user, other_user):
    private = AgentProfileFactory(owner=other_user, name="Secret desk")
    shared = AgentProfileFactory(owner=other_user, name="Public desk", visibility="everyone")
    group = GroupFactory()
    user.groups.add(group)
    team = AgentProfileFactory(owner=other_user, name="Team desk", visibility="groups")
    team.groups.add(group)
    client.force_login(user)
    page = client.get(reverse("conversations:agents")).content.decode()
    assert "Secret desk" not in page
    assert "Public desk" in page and "Team desk" in page
    # Not theirs to edit, shared or not; a private one is not theirs to use either.
    for agent in (private, shared):
        assert client.get(reverse("conversations:agent-edit", args=[agent.pk])).status_code == 404
        response = _post(client, reverse("conversations:agent-edit", args=[agent.pk]), name="Mine")
        assert response.status_code == 404
    conversation = ConversationFactory(owner=user)
    response = client.post(
        reverse("conversations:set-agent", args=[conversation.pk]), {"agent": private.pk}
    )
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.agent_id is None
    # Nor a private agent as a handoff target.
    response = _post(
        client, reverse("conversations:agent-create"), name="Mine", handoff_targets=[private.pk]
    )
    assert response.status_code == 400
    assert not AgentProfile.objects.filter(name="Mine").exists()


def test_create_and_edit_an_agent(client, user):
    billing = AgentProfileFactory(owner=user, name="Billing")
    client.force_login(user)
    response = _post(
        client,
        reverse("conversations:agent-create"),
        name="Triage",
        instructions="Route the user.",
        tools=["time.now"],
        handoff_targets=[billing.pk],
        transfer="summary",
    )
    assert response.status_code == 302, response.content.decode()
    triage = AgentProfile.objects.get(name="Triage")
    assert triage.owner == user and triage.tools == ["time.now"]
    assert list(triage.handoff_targets.all()) == [billing]
    assert triage.transfer == "summary"
    assert AuditEvent.objects.filter(action="agent.saved", target_id=str(triage.pk)).exists()
    edit = reverse("conversations:agent-edit", args=[triage.pk])
    assert "Route the user." in client.get(edit).content.decode()
    response = _post(client, edit, name="Triage desk", instructions="Route politely.")
    assert response.status_code == 302
    triage.refresh_from_db()
    assert triage.name == "Triage desk" and triage.tools == []


def test_bad_input_is_refused_and_keeps_what_was_typed(client, user):
    client.force_login(user)
    response = _post(
        client,
        reverse("conversations:agent-create"),
        name="Helper",
        instructions="Be kind.",
        tools=["no.such_tool"],
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Tools:" in page and "no.such_tool" in page
    assert "Be kind." in page and 'value="Helper"' in page
    assert not AgentProfile.objects.filter(name="Helper").exists()


def test_the_chat_shows_the_agent_of_each_answer_and_the_handoff_line(client, user, demo_model):
    billing = AgentProfileFactory(owner=user, name="Billing")
    triage = AgentProfileFactory(owner=user, name="Triage", handoff_targets=[billing])
    conversation = ConversationFactory(owner=user, model_config=demo_model)
    client.force_login(user)
    response = client.post(
        reverse("conversations:set-agent", args=[conversation.pk]), {"agent": triage.pk}
    )
    assert response.status_code == 302
    ApprovalPolicyFactory(tool_pattern="handoff_to_*", action=ApprovalPolicy.Action.ALLOW)
    run = drive(send(conversation, "hand off to Billing"))
    assert run.status == "completed", run.error
    page = client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    assert '<span class="msg-agent">Triage</span>' in page
    assert '<span class="msg-agent">Billing</span>' in page
    assert "<strong>Triage → Billing</strong>: The user asked for Billing." in page


def test_the_agents_page_makes_the_same_queries_whatever_the_count(
    client, user, django_assert_max_num_queries
):
    client.force_login(user)
    AgentProfileFactory(owner=user)
    client.get(reverse("conversations:agents"))  # session and the like, warmed
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("conversations:agents"))
    for i in range(5):
        AgentProfileFactory(owner=user, model_config=ModelConfigFactory(name=f"Model {i}"))
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = client.get(reverse("conversations:agents"))
    assert page.content.decode().count('id="agent-') == 6


def test_the_admin_lists_and_edits_agents(admin_client):
    agent = AgentProfileFactory(name="Admin desk")
    assert "Admin desk" in admin_client.get("/admin/conversations/agentprofile/").content.decode()
    page = admin_client.get(f"/admin/conversations/agentprofile/{agent.pk}/change/")
    assert page.status_code == 200 and "handoff_targets" in page.content.decode()


def test_sharing_an_agent_follows_the_sharing_rule(client, user, other_user, admin_user):
    mine, theirs = GroupFactory(name="Support"), GroupFactory(name="Finance")
    user.groups.add(mine)
    other_user.groups.add(mine)
    client.force_login(user)
    new = reverse("conversations:agent-create")
    form = client.get(new).content.decode()
    assert "Support" in form and "Finance" not in form  # only groups one is in
    refused = [
        ({"visibility": "everyone"}, "Only administrators can share this agent with everyone."),
        ({"visibility": "groups"}, "Pick at least one group to share the agent with."),
    ]
    for fields, message in refused:
        response = _post(client, new, name="Desk", **fields)
        assert response.status_code == 400
        page = response.content.decode()
        assert message in page.replace("&#x27;", "'") and 'value="Desk"' in page
    # a group one is not in is not offered, and is refused when posted anyway
    response = _post(client, new, name="Desk", visibility="groups", groups=[str(theirs.pk)])
    assert response.status_code == 400
    assert not AgentProfile.objects.filter(name="Desk").exists()
    response = _post(client, new, name="Desk", visibility="groups", groups=[str(mine.pk)])
    assert response.status_code == 302
    desk = AgentProfile.objects.get(name="Desk")
    assert (desk.visibility, list(desk.groups.all())) == ("groups", [mine])
    client.force_login(other_user)  # in the group: sees it
    assert "Desk" in client.get(reverse("conversations:agents")).content.decode()
    # staff may share with everyone
    client.force_login(admin_user)
    response = _post(client, new, name="Front desk", visibility="everyone")
    assert response.status_code == 302
    assert AgentProfile.objects.get(name="Front desk").visibility == "everyone"
