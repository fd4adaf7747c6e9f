"""The chat page over HTTP: rendering, isolation between users, bad input, query count."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, Message, Run
from tests.pages import button_url

pytestmark = pytest.mark.django_db


def test_start_page_needs_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def test_start_page_lists_own_conversations_only(user_client, conversation, other_user, demo_model):
    Conversation.objects.create(owner=other_user, model_config=demo_model, title="Secret plans")
    body = user_client.get(reverse("home")).content.decode()
    assert "Test chat" in body
    assert "Secret plans" not in body
    assert "Demo (offline)" in body  # the model picker
    assert 'ws-connect="/ws/"' in body


SIDEBAR_ITEM = re.compile(r'<li id="conversation-(\d+)" class="conversation-item')


def _sidebar_ids(html: str) -> list[int]:
    return [int(pk) for pk in SIDEBAR_ITEM.findall(html)]


def test_sidebar_pages_through_conversations_newest_first(
    user_client, user, other_user, demo_model, settings, django_assert_max_num_queries
):
    settings.TOLLGATE_CONVERSATION_LIST_PAGE = 3
    now = timezone.now()
    mine = [
        Conversation.objects.create(owner=user, model_config=demo_model, title=f"Chat {i}")
        for i in range(8)
    ]
    Conversation.objects.create(owner=other_user, model_config=demo_model, title="Secret plans")
    archived = Conversation.objects.create(
        owner=user, model_config=demo_model, title="Old", archived=True
    )
    # Two share a time: the id orders them, and a page boundary falls between them.
    for index, conversation in enumerate(mine):
        stamp = now - timedelta(minutes=2 if index in (2, 3) else index)
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=stamp)
    expected = list(
        Conversation.objects.filter(owner=user, archived=False)
        .order_by("-updated_at", "-id")
        .values_list("pk", flat=True)
    )
    assert len(expected) == 8

    body = user_client.get(reverse("home")).content.decode()
    seen, url = _sidebar_ids(body), button_url(body, "More conversations")
    assert len(seen) == 3 and url is not None
    while url is not None:
        with django_assert_max_num_queries(3):  # the session, the user, the page
            response = user_client.get(url)
        assert response.status_code == 200
        page = response.content.decode()
        seen += _sidebar_ids(page)
        url = button_url(page, "More conversations")
    assert seen == expected  # each once, in order; nobody else's, no archived one
    assert "Secret plans" not in body

    archived_page = user_client.get(reverse("home") + "?archived=1").content.decode()
    assert _sidebar_ids(archived_page) == [archived.pk]
    assert 'data-archived="1"' in archived_page


def test_sidebar_more_rejects_a_bad_position_and_needs_login(user_client):
    url = reverse("conversations:list-more")
    for bad in ("yesterday~1", "2026-11-21T10:00:00~x", "~"):
        response = user_client.get(url, {"after": bad})
        assert response.status_code == 400
        assert "Not a conversation list position" in response.content.decode()
    assert user_client.post(url).status_code == 405
    user_client.logout()
    assert user_client.get(url).status_code == 302


def test_conversation_page_renders_markdown_safely(user_client, conversation):
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content=(
            "**bold** <script>alert(1)</script>\n\n"
            "```python\nprint('hi')\n```\n[x](javascript:alert(1))"
        ),
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.TOOL,
        tool_call_id="call_1",
        content="<img src=x onerror=alert(1)> **not markdown**",
    )
    response = user_client.get(reverse("conversations:detail", args=[conversation.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert f'ws-connect="/ws/?conversation={conversation.pk}"' in body
    assert "<strong>bold</strong>" in body
    assert "<script>alert(1)</script>" not in body
    assert 'href="javascript:' not in body
    assert 'class="highlight"' in body  # pygments
    assert "&lt;img src=x onerror=alert(1)&gt; **not markdown**" in body
    assert "Tool output — untrusted" in body  # a tool message of no call: drawn on its own


def test_a_reply_still_streaming_is_drawn_split_as_its_frames_continue_it(
    user_client, conversation
):
    """Mid-reply, the page draws the saved text as the stream splits it (finished
    blocks, then the tail with the typing indicator), so frames continue it; a
    finished message is one render of its text, the pieces joined."""
    from conversations.rendering import markdown_blocks, render_markdown

    text = "# Plan\n\n- one\n- two\n\n```python\nprint('hi')\n```\n\nStill writing,\nthe re"
    streaming = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        content=text,
    )
    done = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, content=text
    )
    body = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content
    page = body.decode()
    split = markdown_blocks(text)
    assert len(split.blocks) == 3
    assert (
        f'<div id="message-{streaming.pk}-body" class="msg-body">'
        f'<div id="message-{streaming.pk}-blocks" class="msg-blocks">{"".join(split.blocks)}</div>'
        f'<div id="message-{streaming.pk}-tail" class="msg-tail">{split.tail}<span class="typing"'
    ) in page
    whole = render_markdown(text)
    assert whole == "".join(split.blocks) + split.tail
    assert f'<div id="message-{done.pk}-body" class="msg-body">{whole}</div>' in page
    assert f"message-{done.pk}-tail" not in page


def test_other_users_conversation_is_404(client, other_user, conversation):
    client.force_login(other_user)
    assert client.get(reverse("conversations:detail", args=[conversation.pk])).status_code == 404
    for name in ("message-send", "rename", "archive", "delete", "set-model"):
        response = client.post(
            reverse(f"conversations:{name}", args=[conversation.pk]),
            {"content": "hi", "title": "mine now", "model_config": conversation.model_config_id},
        )
        assert response.status_code == 404, name
    conversation.refresh_from_db()
    assert conversation.title == "Test chat"
    assert not conversation.archived
    assert not Message.objects.exists()


def test_other_users_run_is_404(client, other_user, conversation):
    from conversations import services

    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="a"
    )
    client.force_login(other_user)
    assert client.post(reverse("conversations:run-cancel", args=[run.pk])).status_code == 404
    assert client.post(reverse("conversations:run-retry", args=[run.pk])).status_code == 404
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED


def test_htmx_send_errors_are_shown_inline(user_client, conversation):
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "   "},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400
    assert response["HX-Reswap"] == "none"  # only the error box, out of band
    body = response.content.decode()
    assert '<div id="chat-errors" class="chat-errors" role="alert" aria-live="polite" ' in body
    assert 'hx-swap-oob="outerHTML"' in body
    assert "Type a message first." in body
    assert not Message.objects.exists()


def test_htmx_send_accepts(user_client, conversation):
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "hello"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 204
    assert Run.objects.filter(conversation=conversation, status=Run.Status.QUEUED).exists()


def test_new_chat_with_first_message(user_client, user, demo_model):
    response = user_client.post(
        reverse("conversations:create"), {"model_config": demo_model.pk, "content": "Plan a trip"}
    )
    conversation = Conversation.objects.get(owner=user)
    assert response.status_code == 302
    assert response["Location"] == reverse("conversations:detail", args=[conversation.pk])
    assert conversation.title == "Plan a trip"
    assert conversation.runs.count() == 1


def test_new_chat_with_unknown_model_is_an_error(user_client, user):
    response = user_client.post(
        reverse("conversations:create"), {"model_config": "424242"}, follow=True
    )
    assert "That model is not available" in response.content.decode()
    assert not Conversation.objects.filter(owner=user).exists()


def test_archive_hides_and_delete_removes(user_client, conversation):
    user_client.post(reverse("conversations:archive", args=[conversation.pk]), {"archived": "1"})
    assert "Test chat" not in user_client.get(reverse("home")).content.decode()
    assert "Test chat" in user_client.get(reverse("home") + "?archived=1").content.decode()
    page = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content
    assert b"This conversation is archived" in page
    assert b'id="composer"' not in page
    user_client.post(reverse("conversations:delete", args=[conversation.pk]))
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_failed_run_shows_error_and_retry(user_client, conversation):
    from conversations import services

    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="a"
    )
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.FAILED, error="Mock rejected the API key."
    )
    body = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    assert "Mock rejected the API key." in body
    assert reverse("conversations:run-retry", args=[run.pk]) in body
    assert f'id="run-{run.pk}-status"' in body


def _exchange(conversation, index: int) -> Message:
    """A user message answered by a completed run (its assistant message)."""
    question = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=f"Question {index}?"
    )
    run = Run.objects.create(
        conversation=conversation, user_message=question, status=Run.Status.COMPLETED, step=1
    )
    Message.objects.create(
        conversation=conversation,
        run=run,
        run_step=1,
        role=Message.Role.ASSISTANT,
        content=f"Answer **{index}**",
    )
    return question


QUESTION = re.compile(r"<p>Question (\d+)\?</p>")  # as drawn (the source is in a template too)


def test_page_draws_the_last_exchanges_and_loads_earlier_ones(
    user_client, user, demo_model, settings, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.TOLLGATE_TIMELINE_PAGE = 5
    small = Conversation.objects.create(owner=user, model_config=demo_model, title="small")
    large = Conversation.objects.create(owner=user, model_config=demo_model, title="large")
    for index in range(2):
        _exchange(small, index)
    for index in range(12):
        _exchange(large, index)
    small_url = reverse("conversations:detail", args=[small.pk])
    user_client.get(small_url)  # warm the session
    with CaptureQueriesContext(connection) as queries:
        user_client.get(small_url)
    with django_assert_num_queries(len(queries.captured_queries)):
        body = user_client.get(reverse("conversations:detail", args=[large.pk])).content.decode()
    # The last five exchanges, oldest first, each with its answer.
    assert [int(i) for i in QUESTION.findall(body)] == [7, 8, 9, 10, 11]
    assert body.count("Answer <strong>") == 5
    seen, url = QUESTION.findall(body), button_url(body, "Earlier messages")
    while url is not None:
        with django_assert_num_queries(8):  # session, user, conversation, five for the page
            page = user_client.get(url)
        assert page.status_code == 200
        html = page.content.decode()
        seen = QUESTION.findall(html) + seen
        url = button_url(html, "Earlier messages")
    assert [int(i) for i in seen] == list(range(12))  # each once, in order


def test_earlier_messages_are_the_owners_only_and_need_a_message_id(
    user_client, other_user, demo_model
):
    theirs = Conversation.objects.create(owner=other_user, model_config=demo_model)
    _exchange(theirs, 0)
    url = reverse("conversations:earlier", args=[theirs.pk])
    assert user_client.get(url, {"before": "999999"}).status_code == 404
    user_client.force_login(other_user)  # the owner
    assert user_client.get(url, {"before": "999999"}).status_code == 200
    for bad in ("", "x", "-1", "1.5"):
        response = user_client.get(url, {"before": bad})
        assert response.status_code == 400
        assert "must be a message id" in response.content.decode()
    user_client.logout()
    assert user_client.get(url, {"before": "1"}).status_code == 302


def test_admin_pages(client, admin_user, conversation):
    from conversations import services

    services.message_send(user=conversation.owner, conversation_id=conversation.pk, content="a")
    client.force_login(admin_user)
    for model in ("modelconfig", "conversation", "message", "run"):
        url = reverse(f"admin:conversations_{model}_changelist")
        assert client.get(url).status_code == 200, model
    page = client.get(reverse("admin:conversations_conversation_change", args=[conversation.pk]))
    assert page.status_code == 200
    assert client.get(reverse("admin:conversations_message_add")).status_code == 403


def _cards_waiting(conversation, count: int, group, voter) -> None:
    """``count`` runs of ``conversation``, each waiting for a 2-of-N approval that
    ``voter`` has given once (the card shows "Approved by … (1 of 2)")."""
    from approvals.models import ApprovalVote
    from tests.factories import ApprovalRequestFactory, RunFactory, ToolInvocationFactory

    for _ in range(count):
        run = RunFactory(conversation=conversation, status=Run.Status.AWAITING_APPROVAL, step=1)
        approval = ApprovalRequestFactory(
            invocation=ToolInvocationFactory(run=run),
            approver_group=group,
            approvals_required=2,
        )
        ApprovalVote.objects.create(
            approval=approval,
            voter=voter,
            decision=ApprovalVote.Decision.APPROVE,
            arguments_hash=approval.arguments_hash,
        )


def test_the_chat_page_draws_approval_progress_in_a_fixed_number_of_queries(
    user_client, user, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import ConversationFactory, GroupFactory, UserFactory

    group, voter = GroupFactory(name="Approvers"), UserFactory(name="Ana")
    voter.groups.add(group)
    one, many = ConversationFactory(owner=user), ConversationFactory(owner=user)
    _cards_waiting(one, 1, group, voter)
    _cards_waiting(many, 4, group, voter)
    user_client.get(reverse("conversations:detail", args=[one.pk]))  # warm the session
    with CaptureQueriesContext(connection) as queries:
        user_client.get(reverse("conversations:detail", args=[one.pk]))
    with django_assert_num_queries(len(queries.captured_queries)):
        body = user_client.get(reverse("conversations:detail", args=[many.pk])).content.decode()
    assert body.count("(1 of 2)") == 4


# -- refused input: a message for people, what was typed kept (issue 20) -------------

ERROR_BOX = '<p class="error-box">'


def _typed_back(body: str, text: str) -> bool:
    """Whether ``text`` is in a textarea again (after the newline HTML drops)."""
    return f">\n{text}</textarea>" in body


def test_a_new_chat_whose_message_is_refused_keeps_it_and_creates_nothing(
    user_client, user, demo_model, settings
):
    settings.TOLLGATE_MAX_MESSAGE_CHARS = 20
    url = reverse("conversations:create")
    long = "a thought that goes on and on"
    response = user_client.post(url, {"model_config": demo_model.pk, "content": long})
    assert response.status_code == 400
    body = response.content.decode()
    assert ERROR_BOX + "The message is too long (29 characters; the limit is 20)." in body
    assert _typed_back(body, long)
    assert f'<option value="{demo_model.pk}" selected>' in body
    assert not Conversation.objects.filter(owner=user).exists()  # both or neither

    response = user_client.post(url, {"model_config": demo_model.pk, "content": "hi\x00there"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Content: Null characters are not allowed." in body
    assert _typed_back(body, "hi\ufffdthere")
    assert not Conversation.objects.filter(owner=user).exists()


@pytest.mark.parametrize("value", ["abc", "²", "\u0661", "-1", "0", "9" * 30, "1.5", " 1"])
def test_a_new_chat_with_a_model_that_is_not_an_id_is_400(user_client, user, value):
    response = user_client.post(reverse("conversations:create"), {"model_config": value})
    assert response.status_code == 400
    assert "Model config: Expected an id (a whole number from 1)." in response.content.decode()
    assert not Conversation.objects.filter(owner=user).exists()


def test_new_chat_with_a_disabled_model_is_409(user_client, user):
    from tests.factories import ModelConfigFactory

    disabled = ModelConfigFactory(name="Retired", enabled=False)
    response = user_client.post(reverse("conversations:create"), {"model_config": disabled.pk})
    assert response.status_code == 409
    assert "That model is not available. Pick another one." in response.content.decode()


@pytest.mark.parametrize(
    ("title", "message", "shown"),
    [
        ("Plans\x00", "Title: Null characters are not allowed.", "Plans\ufffd"),
        ("   ", "The title cannot be empty.", "   "),
        ("x" * 201, "The title is too long (200 characters at most).", "x" * 201),
    ],
    ids=["nul", "empty", "long"],
)
def test_a_refused_rename_shows_why_and_keeps_the_typed_title(
    user_client, conversation, title, message, shown
):
    response = user_client.post(
        reverse("conversations:rename", args=[conversation.pk]), {"title": title}
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert ERROR_BOX + message in body
    assert '<details class="rename" open>' in body
    assert f'<input name="title" value="{shown}"' in body
    conversation.refresh_from_db()
    assert conversation.title == "Test chat"


@pytest.mark.parametrize("htmx", [False, True], ids=["plain", "htmx"])
def test_a_message_with_a_nul_character_is_refused_and_kept(user_client, conversation, htmx):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "see <b>this</b>\x00"},
        **headers,
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "Content: Null characters are not allowed." in body
    if not htmx:  # the page drawn again, with the text typed
        assert _typed_back(body, "see &lt;b&gt;this&lt;/b&gt;\ufffd")
    if htmx:
        assert 'data-composer="refused"' in body  # the composer keeps what was typed
    assert not Message.objects.exists()


def test_a_message_while_a_reply_is_written_is_409_and_kept(user_client, conversation):
    from tests.factories import RunFactory

    RunFactory(conversation=conversation, status=Run.Status.CALLING_LLM)
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]), {"content": "and also"}
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert ERROR_BOX + "A reply is still being written. Stop it or wait for it." in body
    assert _typed_back(body, "and also")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("set-model", {"model_config": "²"}, "Model config: Expected an id"),
        ("set-model", {}, "Model config: Pick a model."),
        ("archive", {"archived": "yes"}, "Archived: Select a valid choice."),
        ("archive", {"archived": "\x00"}, "Archived: "),
    ],
)
def test_other_conversation_posts_are_checked_by_a_form(
    user_client, conversation, name, data, message
):
    response = user_client.post(reverse(f"conversations:{name}", args=[conversation.pk]), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    conversation.refresh_from_db()
    assert not conversation.archived


@pytest.mark.parametrize("before", ["²", "\u0661", "9" * 30, "0", " 1", "\x00"])
def test_earlier_messages_before_something_that_is_not_an_id_is_400(
    user_client, conversation, before
):
    response = user_client.get(
        reverse("conversations:earlier", args=[conversation.pk]), {"before": before}
    )
    assert response.status_code == 400
    assert "must be a message id" in response.content.decode()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (Run.Status.COMPLETED, "This reply has already finished."),
        (Run.Status.CANCELLED, "This reply has already been stopped."),
        (Run.Status.FAILED, "This reply has already failed."),
    ],
)
def test_stopping_a_finished_reply_is_409_with_what_happened(
    user_client, conversation, status, message
):
    from tests.factories import RunFactory

    run = RunFactory(conversation=conversation, status=status)
    url = reverse("conversations:run-cancel", args=[run.pk])
    response = user_client.post(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert response["HX-Reswap"] == "none"
    body = response.content.decode()
    assert 'hx-swap-oob="outerHTML"' in body and ERROR_BOX + message in body
    plain = user_client.post(url)
    assert plain.status_code == 409
    assert ERROR_BOX + message in plain.content.decode()
    run.refresh_from_db()
    assert run.status == status


def test_htmx_swaps_a_refusals_answer(user_client):
    """The answers above are 4xx; the page tells htmx to swap them (not drop them)."""
    body = user_client.get(reverse("home")).content.decode()
    assert '{"code": "^(400|403|409|413|422)$", "swap": true, "error": false}' in body
