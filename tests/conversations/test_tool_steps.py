"""A run's tool calls as the chat draws them (issue 22, defects 3, 5 and 6): each call
once, where it was made in the answer, by the tool's name, with the arguments it ran
with and its output, the approval card inline while it waits."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from conversations import events, selectors
from conversations.models import Message, Run
from tests.conversations.conftest import drive, send
from tools.models import Note, ToolInvocation
from tools.services import tools_sync

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


def _page(client, conversation) -> str:
    client.force_login(conversation.owner)
    return client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()


def test_a_call_waiting_for_approval_is_one_step_with_its_card_under_the_message(
    conversation, client
):
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday")
    run = drive(send(conversation, "forget the meeting"))
    assert run.status == Run.Status.AWAITING_APPROVAL
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    page = _page(client, conversation)
    calling = Message.objects.get(pk=invocation.message_id)
    assert calling.tool_calls[0]["function"]["name"] == "notes__delete"
    # Drawn once: no "Tool call notes__delete" line, and by the tool's own name.
    assert "notes__delete" not in page
    assert page.count(f'id="invocation-{invocation.pk}"') == 1
    step = page[page.index(f'id="invocation-{invocation.pk}"') :]
    assert '<code class="tool-name">notes.delete</code>' in step
    # Under the message that made it; the card open in its slot, not in the folded part.
    assert page.index(f'id="message-{calling.pk}"') < page.index(f'id="tool-steps-{calling.pk}"')
    details = step[: step.index("</details>")]
    slot = step[step.index("</details>") :]
    assert f'id="approval-slot-{invocation.pk}"' in slot and "approval-card status-pending" in slot
    assert "approval-card" not in details
    assert "&quot;key&quot;: &quot;meeting&quot;" in details  # the arguments, folded


def test_after_an_edited_approval_the_step_shows_what_ran_its_output_and_comes_before_the_answer(
    conversation, client
):
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday")
    Note.objects.create(user=conversation.owner, key="lunch", value="noon")
    run = drive(send(conversation, "forget the meeting"))
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=approval.pk,
        actor=conversation.owner,
        approve=True,
        arguments_hash=approval.arguments_hash,
        edited_arguments={"key": "lunch"},
    )
    run = drive(run)
    assert run.status == Run.Status.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.arguments_executed == {"key": "lunch"}
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    calling = Message.objects.get(pk=invocation.message_id)
    answer = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).latest("id")
    page = _page(client, conversation)

    # Once, between the message that made the call and the answer that followed it.
    assert page.count(f'id="invocation-{invocation.pk}"') == 1
    assert f'id="message-{tool_message.pk}"' not in page  # no separate output box
    assert "Tool call" not in page
    at = {
        name: page.index(marker)
        for name, marker in (
            ("calling", f'id="message-{calling.pk}"'),
            ("step", f'id="invocation-{invocation.pk}"'),
            ("answer", f'id="message-{answer.pk}"'),
        )
    }
    assert at["calling"] < at["step"] < at["answer"]
    step = page[at["step"] : at["answer"]]
    # What ran, said to be edited; the output labelled with the call id as sent.
    arguments = re.search(r'<pre class="json step-arguments">(.*?)</pre>', step, re.S)
    assert arguments and "lunch" in arguments.group(1) and "meeting" not in arguments.group(1)
    assert "Arguments it ran with (edited by an approver)" in step
    assert f"Output — untrusted · <code>{invocation.tool_call_id}</code>" in step
    # The decided card stays in its slot (chat.css shows its outcome only).
    assert "approval-card status-approved" in step[step.index("</details>") :]
    assert 'class="step-details"' in step and "<details" in step and " open" not in step

    # The push that redraws the steps draws the same.
    pushed = selectors.run_for_push(run_id=run.pk)
    [with_steps] = [m for m in pushed.timeline_messages if m.steps]
    html = events.render(
        "tool-steps", {"run": pushed, "m": with_steps, "user": conversation.owner, "oob": True}
    )
    assert html.startswith(f'<div id="tool-steps-{calling.pk}" class="tool-steps" hx-swap-oob')
    assert "Arguments it ran with (edited by an approver)" in html


def test_the_output_label_is_not_upper_cased():
    from pathlib import Path

    css = Path(__file__).resolve().parents[2] / "conversations/static/conversations/chat.css"
    assert "uppercase" not in css.read_text()
