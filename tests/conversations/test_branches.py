"""Branches (issue 22): regenerate any answer, edit and resend a message; the "< 2/3 >"
switches; the branch shown is what the page draws, what the next message continues
and what the model reads."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.urls import reverse

from conversations import branches, selectors, services
from conversations.engine import history_messages, history_with_ids
from conversations.models import Message, Run
from tests.conversations.conftest import drive, send
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

S = Run.Status


def _exchange(conversation, text: str) -> Run:
    run = drive(send(conversation, text))
    assert run.status == S.COMPLETED, run.error
    return run


def _shown(conversation) -> list[tuple[str, int]]:
    """The page's items: ("user", message id) and ("run", run id), in order."""
    conversation.refresh_from_db()
    timeline = selectors.conversation_timeline(conversation=conversation)
    return [
        ("user", item.message.pk) if item.message else ("run", item.run.pk)
        for item in timeline.items
    ]


def _user_texts(conversation) -> list[str]:
    conversation.refresh_from_db()
    return [
        m["content"] for m in history_messages(conversation=conversation) if m["role"] == "user"
    ]


def _answer(run: Run) -> Message:
    return Message.objects.filter(run=run, role=Message.Role.ASSISTANT).latest("id")


def test_regenerating_the_last_answer_adds_an_alternative_and_switches_between_them(
    conversation,
):
    owner = conversation.owner
    first = _exchange(conversation, "one")
    old = _exchange(conversation, "two")
    new = drive(services.run_regenerate(user=owner, run_id=old.pk))
    assert new.status == S.COMPLETED
    assert (new.user_message_id, new.parent_id) == (old.user_message_id, first.pk)
    assert new.metadata["regenerated_from"] == old.pk
    assert _shown(conversation) == [
        ("user", first.user_message_id),
        ("run", first.pk),
        ("user", old.user_message_id),
        ("run", new.pk),
    ]
    timeline = selectors.conversation_timeline(conversation=conversation)
    shown_run = timeline.items[-1].run
    assert shown_run.switch == branches.Switch(index=2, count=2, previous=old.pk, next=None)
    assert timeline.items[0].run is None and timeline.items[1].run.switch.count == 1

    # The next message continues the answer shown, and the model reads that one.
    services.branch_show(user=owner, run_id=old.pk)
    assert _shown(conversation)[-1] == ("run", old.pk)
    assert _shown(conversation)[-2:] == [("user", old.user_message_id), ("run", old.pk)]
    after = _exchange(conversation, "three")
    assert after.parent_id == old.pk
    conversation.refresh_from_db()
    _history, ids = history_with_ids(conversation=conversation)
    assert _answer(old).pk in ids and _answer(new).pk not in ids


def test_regenerating_an_earlier_answer_starts_a_branch_and_the_old_one_stays(conversation):
    owner = conversation.owner
    first = _exchange(conversation, "one")
    second = _exchange(conversation, "two")
    third = _exchange(conversation, "three")
    again = drive(services.run_regenerate(user=owner, run_id=first.pk))
    assert _shown(conversation) == [("user", first.user_message_id), ("run", again.pk)]
    assert _user_texts(conversation) == ["one"]
    # Back to the first answer: its newest branch, to the end.
    services.branch_show(user=owner, run_id=first.pk)
    assert [key[1] for key in _shown(conversation) if key[0] == "run"] == [
        first.pk,
        second.pk,
        third.pk,
    ]
    assert _user_texts(conversation) == ["one", "two", "three"]


def test_editing_a_message_sends_a_new_version_as_a_branch(conversation):
    owner = conversation.owner
    first = _exchange(conversation, "one")
    second = _exchange(conversation, "two")
    _exchange(conversation, "three")
    edited = drive(
        services.message_edit(user=owner, message_id=second.user_message_id, content=" 2 ")
    )
    assert edited.status == S.COMPLETED
    assert edited.parent_id == first.pk
    version = edited.user_message
    assert (version.content, version.metadata) == ("2", {"edit_of": second.user_message_id})
    assert _shown(conversation) == [
        ("user", first.user_message_id),
        ("run", first.pk),
        ("user", version.pk),
        ("run", edited.pk),
    ]
    assert _user_texts(conversation) == ["one", "2"]  # the model reads the new version
    timeline = selectors.conversation_timeline(conversation=conversation)
    message = timeline.items[2].message
    assert message.switch.index == 2 and message.switch.count == 2
    assert message.switch.previous is not None and message.editable
    services.branch_show(user=owner, run_id=message.switch.previous)
    assert _user_texts(conversation) == ["one", "two", "three"]


def test_editing_the_first_message_makes_a_first_exchange(conversation):
    owner = conversation.owner
    first = _exchange(conversation, "one")
    _exchange(conversation, "two")
    edited = drive(services.message_edit(user=owner, message_id=first.user_message_id, content="1"))
    assert edited.parent_id is None and edited.metadata["root"] is True
    assert _user_texts(conversation) == ["1"]
    timeline = selectors.conversation_timeline(conversation=conversation)
    assert timeline.items[0].message.switch == branches.Switch(
        index=2,
        count=2,
        previous=branches.conversation_tree(conversation_id=conversation.pk).newest_below(first.pk),
        next=None,
    )


def test_a_reply_being_written_refuses_regenerate_edit_and_switch_and_stop_allows_them(
    conversation,
):
    owner = conversation.owner
    first = _exchange(conversation, "one")
    waiting = send(conversation, "two")  # queued: being answered
    with pytest.raises(services.RunInProgress):
        services.run_regenerate(user=owner, run_id=first.pk)
    with pytest.raises(services.RunInProgress):
        services.message_edit(user=owner, message_id=first.user_message_id, content="x")
    with pytest.raises(services.RunInProgress):
        services.branch_show(user=owner, run_id=first.pk)
    services.run_cancel(user=owner, run_id=waiting.pk)
    again = drive(services.run_regenerate(user=owner, run_id=waiting.pk))  # after Stop
    assert again.status == S.COMPLETED
    Run.objects.filter(pk=again.pk).update(status=S.FAILED, error="boom")
    assert drive(services.run_regenerate(user=owner, run_id=again.pk)).status == S.COMPLETED


def test_other_users_and_bad_edits_are_refused(conversation, other_user):
    run = _exchange(conversation, "one")
    with pytest.raises(services.NotFound):
        services.run_regenerate(user=other_user, run_id=run.pk)
    with pytest.raises(services.NotFound):
        services.branch_show(user=other_user, run_id=run.pk)
    with pytest.raises(services.NotFound):
        services.message_edit(user=other_user, message_id=run.user_message_id, content="x")
    with pytest.raises(services.EmptyMessage):
        services.message_edit(user=conversation.owner, message_id=run.user_message_id, content=" ")
    answer = _answer(run)
    with pytest.raises(services.NotFound):  # only a user message
        services.message_edit(user=conversation.owner, message_id=answer.pk, content="x")


def test_runs_made_without_a_parent_read_as_one_line(conversation):
    """Rows made outside the services (older data, imports): each run follows the
    newest run of the messages before it; a retry stays an alternative."""
    owner = conversation.owner
    messages = [
        Message.objects.create(conversation=conversation, role="user", content=f"q{i}")
        for i in range(3)
    ]
    failed = RunFactory(conversation=conversation, user_message=messages[0], status=S.FAILED)
    retried = RunFactory(conversation=conversation, user_message=messages[0], status=S.COMPLETED)
    second = RunFactory(conversation=conversation, user_message=messages[1], status=S.COMPLETED)
    third = RunFactory(conversation=conversation, user_message=messages[2], status=S.COMPLETED)
    tree = branches.conversation_tree(conversation_id=conversation.pk)
    assert tree.path(third.pk) == [retried.pk, second.pk, third.pk]
    assert tree.answer_switch(retried.pk).previous == failed.pk
    assert [key[1] for key in _shown(conversation) if key[0] == "run"] == [
        retried.pk,
        second.pk,
        third.pk,
    ]
    next_run = send(conversation, "q3")
    assert next_run.parent_id == third.pk
    del owner


def test_the_migration_links_existing_runs_as_one_line(conversation):
    from importlib import import_module

    link_runs = import_module("conversations.migrations.0008_message_tree").link_runs
    messages = [
        Message.objects.create(conversation=conversation, role="user", content=f"q{i}")
        for i in range(3)
    ]
    failed = RunFactory(conversation=conversation, user_message=messages[0], status=S.FAILED)
    retried = RunFactory(conversation=conversation, user_message=messages[0], status=S.COMPLETED)
    second = RunFactory(conversation=conversation, user_message=messages[1], status=S.COMPLETED)
    link_runs(apps, None)
    parents = dict(Run.objects.filter(conversation=conversation).values_list("pk", "parent_id"))
    assert parents == {failed.pk: None, retried.pk: None, second.pk: retried.pk}
    conversation.refresh_from_db()
    assert conversation.current_run_id == second.pk


def test_the_page_shows_the_switches_and_the_actions_take_them(conversation, client):
    owner = conversation.owner
    client.force_login(owner)
    first = _exchange(conversation, "one")
    url = reverse("conversations:detail", args=[conversation.pk])
    page = client.get(url).content.decode()
    assert reverse("conversations:run-regenerate", args=[first.pk]) in page
    assert f'id="message-{first.user_message_id}-edit"' in page
    assert "branch-switch" not in page

    htmx = {"HTTP_HX_REQUEST": "true"}
    response = client.post(reverse("conversations:run-regenerate", args=[first.pk]), **htmx)
    assert response.status_code == 204
    new = Run.objects.latest("id")
    drive(new)
    page = client.get(url).content.decode()
    assert '<span class="branch-count">2/2</span>' in page
    assert reverse("conversations:branch-show", args=[first.pk]) in page
    assert (
        client.post(reverse("conversations:branch-show", args=[first.pk]), **htmx).status_code
        == 204
    )
    conversation.refresh_from_db()
    assert conversation.current_run_id == first.pk

    edit = reverse("conversations:message-edit", args=[first.user_message_id])
    refused = client.post(edit, {"content": "   "}, **htmx)
    assert refused.status_code == 400 and "Type a message first." in refused.content.decode()
    assert client.post(edit, {"content": "uno"}, **htmx).status_code == 204
    assert Message.objects.filter(role="user", content="uno").exists()
    busy = client.post(reverse("conversations:run-regenerate", args=[first.pk]), **htmx)
    assert busy.status_code == 409  # the edited version is being answered
