"""Deleting conversations, messages and runs takes their tool calls along.

``ToolInvocation`` keeps its run and message as ids (``tools`` sits below
``conversations``), so what a foreign key's ``CASCADE`` did is done by
``conversation_rows_delete`` calling ``tools.services.invocations_delete`` in
the same transaction; approval requests cascade from their invocation.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from approvals.models import ApprovalRequest
from conversations import services
from conversations.models import Conversation, Message, Run
from tests.factories import ApprovalRequestFactory, MessageFactory, RunFactory
from tools.models import ToolInvocation

pytestmark = pytest.mark.django_db


def _waiting_call(run: Run) -> ApprovalRequest:
    """A tool call of ``run``'s assistant turn, waiting for its approval request."""
    turn = MessageFactory(conversation=run.conversation, run=run, role="assistant", content="")
    return ApprovalRequestFactory(invocation__run=run, invocation__message=turn)


def _left(*approvals: ApprovalRequest) -> tuple[int, int]:
    """How many of the approvals' invocations and requests still exist."""
    ids = [approval.invocation_id for approval in approvals]
    return (
        ToolInvocation.objects.filter(pk__in=ids).count(),
        ApprovalRequest.objects.filter(pk__in=[approval.pk for approval in approvals]).count(),
    )


def test_conversation_delete_deletes_its_runs_tool_calls_and_approvals():
    run = RunFactory()
    conversation = run.conversation
    second = RunFactory(conversation=conversation)
    mine = [_waiting_call(run), _waiting_call(run), _waiting_call(second)]
    other = _waiting_call(RunFactory(conversation__owner=conversation.owner))

    services.conversation_delete(user=conversation.owner, conversation_id=conversation.pk)

    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert _left(*mine) == (0, 0)
    assert _left(other) == (1, 1)


def test_conversation_delete_keeps_the_tool_calls_when_it_fails(monkeypatch):
    approval = _waiting_call(RunFactory())
    conversation_id = approval.conversation_id

    def fail(**_kwargs):
        raise RuntimeError("audit down")

    monkeypatch.setattr(services, "audit_record", fail)
    with pytest.raises(RuntimeError):
        services.conversation_delete(user=approval.requester, conversation_id=conversation_id)

    assert Conversation.objects.filter(pk=conversation_id).exists()
    assert _left(approval) == (1, 1)  # one transaction: nothing was deleted


def test_rows_delete_for_messages_and_runs():
    run = RunFactory()
    by_user_message = _waiting_call(run)
    by_assistant_message = _waiting_call(other_run := RunFactory())
    by_run = _waiting_call(third := RunFactory())
    kept = _waiting_call(RunFactory())

    # The user message takes the run answering it; an assistant message its own calls.
    services.conversation_rows_delete(
        rows=Message.objects.filter(
            pk__in=[run.user_message_id, by_assistant_message.invocation.message_id]
        )
    )
    services.conversation_rows_delete(rows=Run.objects.filter(pk=third.pk))

    assert _left(by_user_message, by_assistant_message, by_run) == (0, 0)
    assert Run.objects.filter(pk=other_run.pk).exists()  # its assistant message went, not it
    assert _left(kept) == (1, 1)
    with pytest.raises(TypeError):
        services.conversation_rows_delete(rows=ToolInvocation.objects.all())


def test_admin_deletes_take_the_tool_calls_along(admin_client):
    by_conversation = _waiting_call(RunFactory())
    by_run = _waiting_call(RunFactory())
    by_message = _waiting_call(RunFactory())
    kept = _waiting_call(RunFactory())

    page = admin_client.post(
        reverse("admin:conversations_conversation_delete", args=[by_conversation.conversation_id]),
        {"post": "yes"},
    )
    assert page.status_code == 302
    page = admin_client.post(
        reverse("admin:conversations_run_changelist"),
        {"action": "delete_selected", "_selected_action": [by_run.run_id], "post": "yes"},
    )
    assert page.status_code == 302
    page = admin_client.post(
        reverse("admin:conversations_message_delete", args=[by_message.invocation.message_id]),
        {"post": "yes"},
    )
    assert page.status_code == 302

    assert _left(by_conversation, by_run, by_message) == (0, 0)
    assert _left(kept) == (1, 1)
