"""The run engine's transitions on PostgreSQL, with the demo model and llmock.

``async_to_sync(run_advance)`` from a sync test keeps the engine's database
work on the test's connection (inside the test transaction), so on-commit
dispatches never fire here; dispatching is covered by test_services and the
worker test.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from conversations import services
from conversations.models import Message, Run
from tests.conversations.conftest import add_turns, advance_and_push

pytestmark = pytest.mark.django_db


def advance(run: Run, worker: str = "test-worker") -> Run:
    async_to_sync(advance_and_push)(run_id=run.pk, worker=worker)
    run.refresh_from_db()
    return run


def send(conversation, content: str = "hello") -> Run:
    return services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content=content
    )


def test_queued_run_completes_with_one_stored_answer(conversation):
    run = send(conversation, "Tell me something")
    assert run.status == Run.Status.QUEUED
    run = advance(run)
    assert run.status == Run.Status.COMPLETED
    assert run.step == 1
    assert run.started_at and run.finished_at
    assert run.lease_owner == "" and run.lease_expires_at is None
    [answer] = Message.objects.filter(run=run)
    assert answer.role == Message.Role.ASSISTANT
    assert answer.status == Message.Status.COMPLETE
    assert "Tell me something" in answer.content
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
    assert answer.cost_usd == 0  # the demo is explicitly free
    assert answer.latency_ms is not None
    assert answer.run_step == 1
    assert run.metadata["context"]["1"]["dropped_messages"] == 0


def test_replayed_step_does_nothing_twice(conversation):
    run = advance(send(conversation))
    before = list(Message.objects.values_list("pk", "content"))
    run = advance(run, worker="second-delivery")
    assert run.status == Run.Status.COMPLETED
    assert run.step == 1
    assert list(Message.objects.values_list("pk", "content")) == before


def test_step_of_a_dead_worker_is_redone_on_the_same_message(conversation):
    run = send(conversation)
    # A worker took the run, wrote half an answer, and died; its lease expired.
    run.status = Run.Status.CALLING_LLM
    run.step = 1
    run.lease_owner = "dead-worker"
    run.lease_expires_at = timezone.now() - timedelta(seconds=1)
    run.save()
    partial = Message.objects.create(
        conversation=conversation,
        run=run,
        run_step=1,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        content="half an ans",
    )
    run = advance(run)
    assert run.status == Run.Status.COMPLETED
    assert run.step == 1
    [answer] = Message.objects.filter(run=run)
    assert answer.pk == partial.pk
    assert answer.status == Message.Status.COMPLETE
    assert not answer.content.startswith("half an ans")


def test_live_lease_means_hands_off(conversation):
    run = send(conversation)
    run.status = Run.Status.CALLING_LLM
    run.step = 1
    run.lease_owner = "busy-worker"
    run.lease_expires_at = timezone.now() + timedelta(minutes=1)
    run.save()
    run = advance(run)
    assert run.status == Run.Status.CALLING_LLM
    assert run.lease_owner == "busy-worker"
    assert not Message.objects.filter(run=run).exists()


def test_steps_over_max_steps_fail_clearly(conversation):
    run = send(conversation)
    Run.objects.filter(pk=run.pk).update(max_steps=0)
    run = advance(run)
    assert run.status == Run.Status.FAILED
    assert "limit 0 steps" in run.error
    assert not Message.objects.filter(run=run).exists()


def test_next_llm_call_past_max_steps_fails(conversation):
    from django.db import transaction

    from conversations.runs import run_lock, run_transition

    run = send(conversation)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.GATING, step=2, max_steps=2)
    with transaction.atomic():
        locked = run_lock(run_id=run.pk)
        assert run_transition(run=locked, to=Run.Status.CALLING_LLM) == Run.Status.FAILED
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "Stopped after 2 model calls" in run.error


def test_cancel_before_start(conversation):
    run = send(conversation)
    services.run_cancel(user=conversation.owner, run_id=run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    run = advance(run)
    assert run.status == Run.Status.CANCELLED
    assert not Message.objects.filter(run=run).exists()


def test_cancel_requested_mid_stream_keeps_partial(conversation, monkeypatch, settings):
    """The engine checks cancellation when it persists the text and keeps what it had."""
    from conversations import engine

    settings.TOLLGATE_STREAM_PERSIST_SECONDS = 0  # persist (and check) at every frame
    monkeypatch.setattr(engine, "FIRST_PERSIST_SECONDS", 0)

    original = engine._persist_partial

    calls = {"n": 0}

    def persist_then_cancel(run_id, worker, message_id, text):
        calls["n"] += 1
        if calls["n"] == 1:
            Run.objects.filter(pk=run_id).update(cancel_requested=True)
        return original.func(run_id, worker, message_id, text)

    from asgiref.sync import sync_to_async

    full = advance(send(conversation, "A long answer please"))
    full_text = Message.objects.get(run=full).content

    # A paced stream (frames go out from a background task, so with no pacing
    # the whole reply can be read before the first frame's check runs).
    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "5")
    monkeypatch.setattr(engine, "_persist_partial", sync_to_async(persist_then_cancel))
    run = advance(send(conversation, "A long answer please"))
    assert run.status == Run.Status.CANCELLED
    [answer] = Message.objects.filter(run=run)
    assert answer.status == Message.Status.STOPPED
    assert answer.content  # the partial text is kept
    assert len(answer.content) < len(full_text)  # and the stream stopped early


def test_streamed_text_is_persisted_at_most_once_per_interval(conversation, monkeypatch, settings):
    """Frames go out every ~50 ms, but the database write (and the cancel and
    lease check) happens FIRST_PERSIST_SECONDS into the stream, then every
    TOLLGATE_STREAM_PERSIST_SECONDS; a reply that ends sooner writes no partial."""
    from asgiref.sync import sync_to_async

    from conversations import engine

    original = engine._persist_partial
    calls: list[str] = []

    def counting(run_id, worker, message_id, text):
        calls.append(text)
        return original.func(run_id, worker, message_id, text)

    monkeypatch.setattr(engine, "_persist_partial", sync_to_async(counting))
    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "0")
    run = advance(send(conversation, "A long answer please"))
    assert run.status == Run.Status.COMPLETED
    assert calls == []  # over before FIRST_PERSIST_SECONDS: stored once, complete
    assert Message.objects.get(run=run).content

    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "20")
    settings.TOLLGATE_STREAM_PERSIST_SECONDS = 60
    # The interval's cap too, or a reply longer than it (the demo's help, 20 ms a
    # word) would be written again at the cap.
    monkeypatch.setattr(engine, "MAX_PERSIST_SECONDS", 60.0)
    run = advance(send(conversation, "A long answer please"))
    assert run.status == Run.Status.COMPLETED
    assert len(calls) == 1  # FIRST_PERSIST_SECONDS in: a reload shows the reply has begun
    assert calls[0] and len(calls[0]) < len(Message.objects.get(run=run).content)
    calls.clear()

    settings.TOLLGATE_STREAM_PERSIST_SECONDS = 0.1
    run = advance(send(conversation, "A long answer please"))
    elapsed = (run.finished_at - run.started_at).total_seconds()
    assert 2 <= len(calls) <= elapsed / 0.1 + 2
    assert all(len(a) < len(b) for a, b in itertools.pairwise(calls))  # growing text


def test_provider_error_fails_run_with_named_cause(user, mock_model, llmock):
    from conversations.models import Conversation

    llmock.fail(401, times=None)
    conversation = Conversation.objects.create(owner=user, model_config=mock_model)
    run = advance(send(conversation))
    assert run.status == Run.Status.FAILED
    assert "rejected the API key" in run.error
    assert run.metadata["error_kind"] == "auth"
    assert Message.objects.get(run=run).status == Message.Status.FAILED


def test_context_trimming_is_recorded(conversation, demo_model):
    demo_model.context_window = 300
    demo_model.max_output_tokens = 100
    demo_model.supports_tools = False  # tool schemas alone would not fit in 300 tokens
    demo_model.save()
    add_turns(conversation, 30)
    run = advance(send(conversation, "latest question"))
    assert run.status == Run.Status.COMPLETED
    assert run.metadata["context_dropped_messages"] > 0
    assert run.metadata["context"]["1"]["dropped_messages"] > 0


def test_where_the_history_sent_begins_is_recorded_and_marked_in_the_chat(
    conversation, demo_model, client
):
    """Issue 22, defect 9: older messages were left out silently."""
    from conversations import selectors
    from conversations.engine import history_with_ids

    demo_model.context_window = 300
    demo_model.max_output_tokens = 100
    demo_model.supports_tools = False
    demo_model.save()
    add_turns(conversation, 30)
    run = advance(send(conversation, "latest question"))
    dropped = run.metadata["context_dropped_messages"]
    cut = run.metadata["context_cut_message_id"]
    assert dropped > 0 and isinstance(cut, int)
    _history, ids = history_with_ids(conversation=conversation)
    assert ids.index(cut) == 1 + dropped  # after the system prompt and the ones left out
    assert selectors.conversation_timeline(conversation=conversation).context_cut == cut

    client.force_login(conversation.owner)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    marker = page.index('id="context-cut"')
    assert marker < page.index(f'id="message-{cut}"')
    assert page.count('id="context-cut"') == 1
    assert f"Written without the {dropped} earliest messages" in page

    # A call that sends everything again takes the marker away.
    demo_model.context_window = 100_000
    demo_model.save()
    run = advance(send(conversation, "and now?"))
    assert "context_cut_message_id" not in run.metadata
    assert 'id="context-cut"' not in client.get(f"/c/{conversation.pk}/").content.decode()


def test_a_step_longer_than_the_lease_keeps_it_by_heartbeat(conversation, monkeypatch, settings):
    """The lease (1 s here) outlives a step of several seconds: the heartbeat renews it,
    so a second worker claiming the run mid-step finds it taken."""
    import asyncio
    import time

    from django.db import transaction

    from conversations import runs
    from conversations.engine import run_advance
    from project.dbthreads import db_async

    advance(send(conversation, "Warm up"))  # a first step loads the tokenizer: seconds
    settings.TOLLGATE_RUN_LEASE_SECONDS = 1
    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "400")  # the demo's reply: a few seconds
    run = send(conversation, "Hello")

    @db_async
    def claim_as_another_worker() -> tuple[str, bool]:
        with transaction.atomic():
            status = Run.objects.get(pk=run.pk).status
            return status, runs.run_claim(run_id=run.pk, worker="second") is not None

    started = time.monotonic()

    async def both() -> tuple[str, bool]:
        step = asyncio.ensure_future(run_advance(run_id=run.pk, worker="first"))
        await asyncio.sleep(2.5)  # leases' worth into the stream
        taken = await claim_as_another_worker()
        await step
        return taken

    # Mid-step (still calling the model), and not taken.
    assert async_to_sync(both)() == (Run.Status.CALLING_LLM, False)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert Message.objects.get(run=run).status == Message.Status.COMPLETE
    assert (time.monotonic() - started) > 3 * settings.TOLLGATE_RUN_LEASE_SECONDS
