"""Memory (issue 26): the notes the ``notes.*`` tools remember, on the Memory page (list,
edit, delete, recall by meaning) and through the ``memory.recall`` tool; nobody reaches
another user's notes, over HTTP or through the tool."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from audit.models import AuditEvent
from knowledge.memory import notes_recall
from tools.builtin.notes import MAX_VALUE_CHARS
from tools.models import Note
from tools.registry import ToolContext, registry
from tools.services import tools_sync

pytestmark = pytest.mark.django_db

FACTS = {
    "meeting": "The team meeting is on Friday at 10 in room B.",
    "dentist": "Dentist appointment next Tuesday afternoon.",
    "wifi": "The office wifi password is printed on the fridge.",
    "birthday": "Ana's birthday is on the 3rd of March; she likes orchids.",
    "car": "The car needs new winter tyres before December.",
}
QUESTIONS = {
    "When do we have the team meeting?": "meeting",
    "what do I need to do for my teeth": "dentist",
    "how do I connect to the internet at work": "wifi",
    "what gift for Ana": "birthday",
    "tyres for the car": "car",
}


@pytest.fixture
def remembered(user):
    return {
        key: Note.objects.create(user=user, key=key, value=value) for key, value in FACTS.items()
    }


def test_recall_by_meaning_ranks_the_right_note_first(user, remembered, other_user):
    Note.objects.create(user=other_user, key="meeting", value="Someone else's meeting on Monday.")
    for question, key in QUESTIONS.items():
        found = notes_recall(user=user, query=question, limit=3)
        assert found[0].note.key == key, (question, [r.note.key for r in found])
        assert all(r.note.user_id == user.pk for r in found)
    assert notes_recall(user=user, query="   ") == []
    assert notes_recall(user=other_user, query="meeting")[0].note.value.startswith("Someone")


def test_the_recall_tool_returns_only_the_callers_notes(user, remembered, other_user):
    tools_sync()
    spec = registry.get("memory.recall")
    assert spec is not None and spec.read_only
    ctx = ToolContext(user_id=other_user.pk)
    assert async_to_sync(spec.handler)({"query": "team meeting"}, ctx) == {"notes": []}
    ctx = ToolContext(user_id=user.pk)
    result = async_to_sync(spec.handler)({"query": "team meeting", "limit": 2}, ctx)
    assert result["notes"][0]["key"] == "meeting"
    assert len(result["notes"]) == 2


def test_the_memory_page_lists_edits_and_deletes_own_notes(user_client, user, remembered):
    page = user_client.get(reverse("knowledge:memory")).content.decode()
    for key in FACTS:
        assert f"<strong>{key}</strong>" in page
    note = remembered["meeting"]
    response = user_client.post(
        reverse("knowledge:memory-edit", args=[note.pk]), {"value": "Moved to Thursday."}
    )
    assert response.status_code == 302
    note.refresh_from_db()
    assert note.value == "Moved to Thursday."
    assert AuditEvent.objects.get(action="memory.edited").data == {"key": "meeting", "chars": 18}
    response = user_client.post(reverse("knowledge:memory-delete", args=[note.pk]))
    assert response.status_code == 302
    assert not Note.objects.filter(pk=note.pk).exists()
    assert AuditEvent.objects.get(action="memory.deleted").data == {"key": "meeting"}
    recalled = user_client.get(reverse("knowledge:memory"), {"q": "teeth"}).content.decode()
    assert 'id="recalled"' in recalled and "<strong>dentist</strong>" in recalled


def test_a_value_too_long_is_refused_and_the_typed_text_kept(user_client, remembered):
    note = remembered["car"]
    typed = "x" * (MAX_VALUE_CHARS + 1)
    response = user_client.post(reverse("knowledge:memory-edit", args=[note.pk]), {"value": typed})
    assert response.status_code == 400
    page = response.content.decode()
    assert "at most 10000 characters" in page.replace(",", "")
    assert typed in page
    note.refresh_from_db()
    assert note.value == FACTS["car"]


def test_another_users_note_is_not_found(client, remembered, other_user):
    client.force_login(other_user)
    note = remembered["wifi"]
    assert "wifi" not in client.get(reverse("knowledge:memory")).content.decode()
    edit = client.post(reverse("knowledge:memory-edit", args=[note.pk]), {"value": "mine"})
    assert edit.status_code == 404
    assert client.post(reverse("knowledge:memory-delete", args=[note.pk])).status_code == 404
    note.refresh_from_db()
    assert note.value == FACTS["wifi"]
