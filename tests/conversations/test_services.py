"""Conversation services: validation (named errors, nothing written), titles,
dispatch on commit, cancel and retry."""

from __future__ import annotations

import pytest

from conversations import runs, services
from conversations.models import Conversation, Message, ModelConfig, Run

pytestmark = pytest.mark.django_db


def counts() -> tuple[int, int]:
    return Message.objects.count(), Run.objects.count()


def test_send_creates_message_run_title_and_dispatches_on_commit(
    conversation, django_capture_on_commit_callbacks, settings, monkeypatch
):
    dispatched: list[int] = []
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", dispatched.append)
    conversation.title = ""
    conversation.save()
    with django_capture_on_commit_callbacks(execute=True):
        run = services.message_send(
            user=conversation.owner,
            conversation_id=conversation.pk,
            content="  What is the tallest mountain on Earth and how tall is it exactly?\nmore",
        )
    assert dispatched == [run.pk]
    assert run.status == Run.Status.QUEUED
    assert run.user_message.content.startswith("What is the tallest")
    conversation.refresh_from_db()
    assert conversation.title == "What is the tallest mountain on Earth and how tall is it ex…"
    assert len(conversation.title) == services.TITLE_CHARS


@pytest.mark.parametrize(
    ("content", "error", "text"),
    [
        ("   ", services.EmptyMessage, "Type a message"),
        ("x" * 101, services.MessageTooLong, "limit is 100"),
    ],
)
def test_bad_messages_are_rejected(conversation, settings, content, error, text):
    settings.TOLLGATE_MAX_MESSAGE_CHARS = 100
    before = counts()
    with pytest.raises(error, match=text):
        services.message_send(
            user=conversation.owner, conversation_id=conversation.pk, content=content
        )
    assert counts() == before


def test_archived_conversation_rejects_messages(conversation):
    services.conversation_archive(user=conversation.owner, conversation_id=conversation.pk)
    before = counts()
    with pytest.raises(services.ConversationArchived):
        services.message_send(
            user=conversation.owner, conversation_id=conversation.pk, content="hi"
        )
    assert counts() == before


def test_other_users_conversation_is_not_found(conversation, other_user):
    before = counts()
    with pytest.raises(services.NotFound):
        services.message_send(user=other_user, conversation_id=conversation.pk, content="hi")
    with pytest.raises(services.NotFound):
        services.conversation_rename(user=other_user, conversation_id=conversation.pk, title="x")
    with pytest.raises(services.NotFound):
        services.conversation_delete(user=other_user, conversation_id=conversation.pk)
    assert counts() == before
    assert Conversation.objects.filter(pk=conversation.pk, title="Test chat").exists()


def test_disabled_model_is_rejected(conversation, demo_model, user):
    ModelConfig.objects.filter(pk=demo_model.pk).update(enabled=False)
    with pytest.raises(services.ModelUnavailable):
        services.message_send(user=user, conversation_id=conversation.pk, content="hi")
    with pytest.raises(services.ModelUnavailable):
        services.conversation_create(user=user, model_config_id=demo_model.pk)
    with pytest.raises(services.ModelUnavailable):
        services.conversation_create(user=user, model_config_id=987654)


def test_one_active_run_per_conversation(conversation):
    services.message_send(user=conversation.owner, conversation_id=conversation.pk, content="a")
    with pytest.raises(services.RunInProgress):
        services.message_send(user=conversation.owner, conversation_id=conversation.pk, content="b")


def test_retry_failed_run_answers_the_same_message(conversation, other_user):
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="a"
    )
    with pytest.raises(services.RunNotRetryable):
        services.run_retry(user=conversation.owner, run_id=run.pk)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED, error="boom")
    with pytest.raises(services.NotFound):
        services.run_retry(user=other_user, run_id=run.pk)
    new = services.run_retry(user=conversation.owner, run_id=run.pk)
    assert new.pk != run.pk
    assert new.user_message_id == run.user_message_id
    assert new.status == Run.Status.QUEUED
    assert new.metadata["retry_of"] == run.pk
    assert new.parent_id == run.parent_id  # an alternative answer at the same place


def test_cancel_finished_run_is_an_error(conversation, other_user):
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="a"
    )
    with pytest.raises(services.NotFound):
        services.run_cancel(user=other_user, run_id=run.pk)
    services.run_cancel(user=conversation.owner, run_id=run.pk)
    with pytest.raises(services.RunNotCancellable):
        services.run_cancel(user=conversation.owner, run_id=run.pk)


def test_rename_archive_delete(conversation):
    owner = conversation.owner
    services.conversation_rename(user=owner, conversation_id=conversation.pk, title="  New  name ")
    conversation.refresh_from_db()
    assert conversation.title == "New name"
    with pytest.raises(services.ConversationError):
        services.conversation_rename(user=owner, conversation_id=conversation.pk, title="  ")
    services.conversation_archive(user=owner, conversation_id=conversation.pk)
    conversation.refresh_from_db()
    assert conversation.archived
    services.conversation_delete(user=owner, conversation_id=conversation.pk)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_recover_stale_finds_expired_leases_only(conversation, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    dispatched: list[int] = []
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", dispatched.append)
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="a"
    )
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.CALLING_LLM,
        lease_owner="w",
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    assert runs.runs_recover_stale() == []
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert runs.runs_recover_stale() == [run.pk]
    assert dispatched == [run.pk]
    Run.objects.filter(pk=run.pk).update(status=Run.Status.AWAITING_APPROVAL)
    assert runs.runs_recover_stale() == []  # waiting on a human is not stuck


def test_an_in_process_step_waits_for_the_preload_thread(monkeypatch):
    """In the embedded mode litellm is imported by a background thread at the first
    page; a step importing it at the same time met that import mid-way and failed
    ("partially initialized module"). The step starts once the thread is done."""
    import asyncio
    import threading

    from conversations import dispatch

    events: list[str] = []
    release = threading.Event()

    def preload() -> None:
        release.wait(5)
        events.append("preloaded")

    async def run_advance(*, run_id: int, worker: str) -> None:
        events.append(f"step {run_id}")
        stepped.set()

    monkeypatch.setattr(dispatch, "run_advance", run_advance)
    thread = threading.Thread(target=preload, daemon=True)
    monkeypatch.setattr(dispatch, "_preloading", thread)
    thread.start()

    stepped: asyncio.Event

    async def main() -> None:
        nonlocal stepped
        stepped = asyncio.Event()
        dispatch._spawn(7, with_recovery=False)
        await asyncio.sleep(0.2)
        assert events == []  # still waiting for the preload
        release.set()
        await asyncio.wait_for(stepped.wait(), 5)

    asyncio.run(main())
    assert events == ["preloaded", "step 7"]
