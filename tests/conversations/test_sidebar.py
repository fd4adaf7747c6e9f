"""The sidebar (issue 22): pin, rename, archive and delete from the list, and search
over titles and messages that opens at the matching message."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from conversations import selectors, services
from conversations.models import Conversation, Message, Run
from tests.conversations.conftest import drive, send
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(client, conversation):
    client.force_login(conversation.owner)
    return client


def test_pinned_conversations_come_first_on_the_first_page_only(user, demo_model, settings):
    settings.TOLLGATE_CONVERSATION_LIST_PAGE = 2
    made = [Conversation.objects.create(owner=user, model_config=demo_model) for _ in range(5)]
    services.conversation_pin(user=user, conversation_id=made[0].pk)
    first = selectors.conversation_page(user=user)
    assert first.items[0] == Conversation.objects.get(pk=made[0].pk)
    assert len(first.items) == 3  # the pinned one and a page of the others
    seen = [c.pk for c in first.items]
    cursor = first.more
    while cursor:
        page = selectors.conversation_page(user=user, after=cursor)
        seen += [c.pk for c in page.items]
        cursor = page.more
    assert sorted(seen) == sorted(c.pk for c in made) and len(seen) == len(set(seen))
    services.conversation_pin(user=user, conversation_id=made[0].pk, pinned=False)
    assert not Conversation.objects.get(pk=made[0].pk).pinned


def test_actions_from_the_list_come_back_to_the_page_they_were_taken_on(
    owner_client, conversation, demo_model
):
    other = Conversation.objects.create(owner=conversation.owner, model_config=demo_model)
    here = reverse("conversations:detail", args=[conversation.pk])
    pin = owner_client.post(reverse("conversations:pin", args=[other.pk]), {"next": here})
    assert pin.status_code == 302 and pin["Location"] == here
    assert Conversation.objects.get(pk=other.pk).pinned
    renamed = owner_client.post(
        reverse("conversations:rename", args=[other.pk]), {"title": "Trip", "next": here}
    )
    assert renamed["Location"] == here
    assert Conversation.objects.get(pk=other.pk).title == "Trip"
    elsewhere = owner_client.post(
        reverse("conversations:rename", args=[other.pk]),
        {"title": "Trip 2", "next": "https://evil.example/"},
    )
    assert elsewhere["Location"] == reverse("conversations:detail", args=[other.pk])
    archived = owner_client.post(
        reverse("conversations:archive", args=[other.pk]), {"archived": "1", "next": here}
    )
    assert archived["Location"] == here
    # Archived or deleted from its own page: back to the start page.
    gone = reverse("conversations:detail", args=[conversation.pk])
    deleted = owner_client.post(
        reverse("conversations:delete", args=[conversation.pk]), {"next": gone}
    )
    assert deleted["Location"] == reverse("home")
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_the_list_item_carries_its_actions_and_group(owner_client, conversation):
    services.conversation_pin(user=conversation.owner, conversation_id=conversation.pk)
    page = owner_client.get(reverse("home")).content.decode()
    item = page[page.index(f'id="conversation-{conversation.pk}"') :]
    item = item[: item.index("</li>")]
    assert 'data-pinned="1"' in item and 'data-day="' in item
    for action in ("rename", "pin", "archive", "delete"):
        assert reverse(f"conversations:{action}", args=[conversation.pk]) in item
    assert ">Unpin<" in item


def _said(conversation, text: str) -> Message:
    run = drive(send(conversation, text))
    assert run.status == Run.Status.COMPLETED
    return run.user_message


@pytest.mark.parametrize("engine", ["postgresql", "fallback"])
def test_search_finds_titles_and_messages_of_ones_own_conversations(
    conversation, demo_model, monkeypatch, engine
):
    owner = conversation.owner
    match = _said(conversation, "We visit the <b>lighthouse</b> museum on Friday")
    _said(conversation, "Something else entirely")
    titled = Conversation.objects.create(
        owner=owner, model_config=demo_model, title="Lighthouse keeping notes"
    )
    stranger = ConversationFactory(owner=UserFactory(), model_config=demo_model)
    Message.objects.create(conversation=stranger, role="user", content="lighthouse secrets")

    if engine == "fallback":  # the embedded SQLite's way: every word, icontains
        monkeypatch.setattr(connection, "vendor", "sqlite")
    hits = selectors.conversation_search(user=owner, query="lighthouse")
    by_conversation = {hit.conversation.pk: hit for hit in hits}
    assert set(by_conversation) == {conversation.pk, titled.pk}
    found = by_conversation[conversation.pk]
    assert found.message is not None
    assert found.message.conversation_id == conversation.pk
    assert "<mark>" in found.snippet and "<b>" not in found.snippet  # marked, escaped
    assert by_conversation[titled.pk].message is None
    assert "<mark>Lighthouse</mark>" in by_conversation[titled.pk].snippet
    assert selectors.conversation_search(user=owner, query="   ") == []
    assert selectors.conversation_search(user=owner, query="zeppelin") == []
    # The user's own message or the reply (which quotes it), whichever ranks first.
    assert found.message.pk == match.pk or found.message.role == "assistant"
    monkeypatch.undo()


def test_search_uses_postgres_full_text_stemming(conversation):
    _said(conversation, "The runners were running")
    hits = selectors.conversation_search(user=conversation.owner, query="run")
    assert [hit.conversation.pk for hit in hits] == [conversation.pk]


def test_the_search_view_lists_results_that_open_at_the_message(owner_client, conversation):
    message = _said(conversation, "Keep the lighthouse in mind")
    url = reverse("conversations:search")
    html = owner_client.get(url, {"q": "lighthouse"}, HTTP_HX_REQUEST="true").content.decode()
    assert html.startswith('<div id="search-results"')
    assert "1 conversation matches" in html
    hit_url = reverse("conversations:detail", args=[conversation.pk])
    assert f'href="{hit_url}?at=' in html and "#message-" in html
    page = owner_client.get(url, {"q": "lighthouse"}).content.decode()
    assert 'id="search-results"' in page and "<mark>" in page
    assert owner_client.get(url, {"q": "a\x00b"}).status_code == 400
    del message


def test_a_page_opened_at_a_message_ends_with_its_exchange(owner_client, conversation, settings):
    settings.TOLLGATE_TIMELINE_PAGE = 2
    early = _said(conversation, "Early question about lighthouses")
    for index in range(3):
        _said(conversation, f"Later question {index}")
    url = reverse("conversations:detail", args=[conversation.pk])
    page = owner_client.get(url, {"at": early.pk}).content.decode()
    assert f'id="message-{early.pk}"' in page
    assert "Later question 0" not in page.split('id="messages"')[1]
    assert "Later messages — go to the latest" in page
    latest = owner_client.get(url).content.decode()
    assert f'id="message-{early.pk}"' not in latest
    assert "go to the latest" not in latest
    # A message of another conversation is ignored.
    stranger = ConversationFactory(owner=conversation.owner, model_config=conversation.model_config)
    theirs = Message.objects.create(conversation=stranger, role="user", content="x")
    assert "go to the latest" not in owner_client.get(url, {"at": theirs.pk}).content.decode()
