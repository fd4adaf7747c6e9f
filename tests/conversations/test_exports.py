"""Export a conversation as Markdown and JSON, and import the JSON (issue 22)."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from audit.models import AuditEvent
from conversations import exports, services
from conversations.models import Conversation, Message, Run
from tests.conversations.conftest import drive, send
from tools.models import Note
from tools.services import tools_sync

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def synced_tools(db):
    tools_sync()


def _conversation_with_everything(conversation) -> Conversation:
    """A reply, a tool call approved with edited arguments, and a regenerated answer."""
    owner = conversation.owner
    drive(send(conversation, "Hello there"))
    Note.objects.create(user=owner, key="meeting", value="Friday")
    Note.objects.create(user=owner, key="lunch", value="noon")
    run = drive(send(conversation, "forget the meeting"))
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=approval.pk,
        actor=owner,
        approve=True,
        arguments_hash=approval.arguments_hash,
        edited_arguments={"key": "lunch"},
        reason="lunch instead",
    )
    drive(run)
    first = Run.objects.filter(conversation=conversation).earliest("id")
    drive(services.run_regenerate(user=owner, run_id=first.pk))
    services.branch_show(user=owner, run_id=run.pk)
    conversation.refresh_from_db()
    return conversation


def _shape(data: dict) -> dict:
    """An export without the ids, times and the site's model, for comparing two."""
    ids = {m["id"]: index for index, m in enumerate(data["messages"])}
    runs = {r["id"]: index for index, r in enumerate(data["runs"])}
    return {
        "title": data["title"],
        "messages": [
            (m["role"], m["status"], m["content"], runs.get(m["run"]), m["tool_calls"], m["usage"])
            for m in data["messages"]
        ],
        "runs": [
            (ids[r["user_message"]], runs.get(r["parent"]), r["status"]) for r in data["runs"]
        ],
        "current": runs.get(data["current_run"]),
    }


def test_the_json_export_holds_messages_tool_calls_decisions_usage_and_branches(conversation):
    conversation = _conversation_with_everything(conversation)
    data = exports.conversation_export(conversation=conversation)
    assert (data["format"], data["version"]) == ("tollgate.conversation", 1)
    assert len(data["runs"]) == 3
    [call] = [c for r in data["runs"] for c in r["tool_calls"]]
    assert call["tool"] == "notes.delete" and call["status"] == "succeeded"
    assert call["arguments_requested"] == {"key": "meeting"}
    assert call["arguments_executed"] == {"key": "lunch"}
    assert call["approval"]["status"] == "approved"
    assert call["approval"]["reason"] == "lunch instead"
    assert call["approval"]["decided_by"] == conversation.owner.email
    replies = [m for m in data["messages"] if m["role"] == "assistant"]
    assert all(m["usage"]["prompt_tokens"] > 0 for m in replies)
    assert data["usage"]["prompt_tokens"] == sum(m["usage"]["prompt_tokens"] for m in replies)
    regenerated = [r for r in data["runs"] if r["parent"] is None]
    assert len(regenerated) == 2  # two answers to the first message
    json.dumps(data)  # plain JSON


def test_the_markdown_export_reads_the_branch_shown(conversation):
    conversation = _conversation_with_everything(conversation)
    text = exports.conversation_markdown(conversation=conversation)
    assert text.startswith(f"# {conversation}\n")
    assert text.count("## You") == 2  # the branch shown: two questions
    assert "### Tool `notes.delete`: succeeded" in text
    assert "Approval: approved by" in text and "(lunch instead)" in text
    assert '"key": "lunch"' in text
    assert " tokens" in text


def test_an_export_imported_is_the_same_conversation(conversation, user):
    conversation = _conversation_with_everything(conversation)
    data = exports.conversation_export(conversation=conversation)
    copy = exports.conversation_import(user=user, text=json.dumps(data))
    assert copy.pk != conversation.pk and copy.owner == user
    again = exports.conversation_export(conversation=copy)
    assert _shape(again) == _shape(data)
    # Tool calls and decisions stay history on the run; nothing ran again.
    calls = [
        c for r in Run.objects.filter(conversation=copy) for c in r.metadata["imported_tool_calls"]
    ]
    assert [c["tool"] for c in calls] == ["notes.delete"]
    assert all(r.is_terminal for r in Run.objects.filter(conversation=copy))
    assert AuditEvent.objects.filter(
        action="conversation.imported", target_id=str(copy.pk)
    ).exists()
    # It can go on: the branch shown continues.
    run = drive(send(copy, "and now?"))
    assert run.status == Run.Status.COMPLETED
    assert run.parent_id == copy.current_run_id or run.parent_id is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "it is not JSON"),
        ('{"format": "other"}', "not a Tollgate conversation export"),
        ('{"format": "tollgate.conversation", "version": 9}', "version 9"),
        ('{"format": "tollgate.conversation", "version": 1}', "it has no messages"),
        (
            '{"format": "tollgate.conversation", "version": 1, "messages": [{"id": 1, "role":'
            ' "boss", "content": ""}], "runs": []}',
            "no role",
        ),
        (
            '{"format": "tollgate.conversation", "version": 1, "messages": [{"id": 1, "role":'
            ' "user", "content": "hi"}], "runs": [{"id": 2, "user_message": 7}]}',
            "answers no message",
        ),
        (
            '{"format": "tollgate.conversation", "version": 1, "messages": [{"id": 1, "role":'
            ' "user", "content": "hi"}], "runs": [{"id": 2, "user_message": 1, "parent": 3},'
            ' {"id": 3, "user_message": 1, "parent": 2}]}',
            "circle",
        ),
    ],
)
def test_a_file_that_is_not_an_export_is_refused_and_nothing_is_made(user, text, why):
    before = Conversation.objects.count()
    with pytest.raises(exports.ImportRefused, match=why):
        exports.conversation_import(user=user, text=text)
    assert Conversation.objects.count() == before


def test_the_views_download_and_import(client, conversation, other_user):
    conversation = _conversation_with_everything(conversation)
    client.force_login(conversation.owner)
    md = client.get(reverse("conversations:export-md", args=[conversation.pk]))
    assert md["Content-Type"].startswith("text/markdown")
    assert "attachment;" in md["Content-Disposition"] and ".md" in md["Content-Disposition"]
    raw = client.get(reverse("conversations:export-json", args=[conversation.pk]))
    assert raw["Content-Type"].startswith("application/json")
    upload = SimpleUploadedFile("chat.json", raw.content, content_type="application/json")
    response = client.post(reverse("conversations:import"), {"file": upload})
    copy = Conversation.objects.exclude(pk=conversation.pk).get(owner=conversation.owner)
    assert response["Location"] == reverse("conversations:detail", args=[copy.pk])
    assert Message.objects.filter(conversation=copy).count() == conversation.messages.count()
    bad = SimpleUploadedFile("x.json", b'{"format": 1}', content_type="application/json")
    refused = client.post(reverse("conversations:import"), {"file": bad})
    assert refused.status_code == 400 and "cannot be imported" in refused.content.decode()
    client.force_login(other_user)
    assert (
        client.get(reverse("conversations:export-json", args=[conversation.pk])).status_code == 404
    )
