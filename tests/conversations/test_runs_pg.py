"""The engine's PostgreSQL fast paths (``conversations.runs_pg``) and their way back.

The engine tests (test_engine.py) run whole steps through these paths; here:
that the common step really takes them (statement counts, which the ORM path
exceeds), and that each hands the uncommon case back to the ORM path with
nothing written (a lost lease, a budget that refuses).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Budget, UsageRecord
from approvals.models import AuditEvent
from conversations import engine, services
from conversations.gateway import ChatResult
from conversations.models import Conversation, Message, Run
from tests.roundtrips import round_trips
from tools.selectors import tools_offered_for_user

pytestmark = pytest.mark.django_db

ANSWER = ChatResult(
    content="The answer.",
    prompt_tokens=12,
    completion_tokens=3,
    cost_usd=Decimal("0.00042"),
    latency_ms=40,
    ttft_ms=9,
    finish_reason="stop",
    model="demo/tollgate",
)


def _statements(captured: CaptureQueriesContext) -> list[str]:
    """What ran, less the savepoints of the test's own transaction."""
    return [
        q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"].split(" ", 2)[:2]
    ]


def _claimed(conversation, worker: str = "w1"):
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="hello"
    )
    tools_offered_for_user(user=conversation.owner)  # cached for a while, as in the worker
    with CaptureQueriesContext(connection) as claim:
        run, start = engine._claim_and_begin.func(run.pk, worker)
    return run, start, _statements(claim)


def test_common_step_takes_the_fast_paths(conversation):
    run, start, claim = _claimed(conversation)
    assert run.status == Run.Status.CALLING_LLM and run.step == 1 and run.lease_owner == "w1"
    assert Message.objects.get(pk=start.message_id).status == Message.Status.STREAMING
    # No wait for the disk at commit, the claim with the message, and the history (one
    # round trip), then the budget hold. The ORM path runs 8 statements and 2 savepoints.
    assert len(claim) == 4, claim
    with CaptureQueriesContext(connection) as store, round_trips() as trips:
        stored = engine._store_answer.func(
            run, "w1", start.message_id, ANSWER, dropped=2, admission=start.admission
        )
    # Lock + message + run, the ledger, the audit head (one round trip); the audit
    # event and the head's hash (one round trip). The ORM path: 11 statements and 2
    # savepoint commands.
    assert len(_statements(store)) == 7, _statements(store)
    assert trips == [5, 2]
    assert stored == start.message_id
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and run.lease_owner == ""
    assert run.finished_at is not None
    assert run.metadata["context"] == {"1": {"dropped_messages": 2}}
    assert run.metadata["context_dropped_messages"] == 2
    message = Message.objects.get(pk=stored)
    assert (message.status, message.content, message.model) == (
        Message.Status.COMPLETE,
        "The answer.",
        "demo/tollgate",
    )
    assert (message.prompt_tokens, message.completion_tokens, message.cost_usd) == (
        12,
        3,
        Decimal("0.00042"),
    )
    assert message.metadata == {
        "ttft_ms": 9,
        "finish_reason": "stop",
        "context_dropped_messages": 2,
    }
    record = UsageRecord.objects.get(run_id=run.pk)
    assert (record.prompt_tokens, record.cost_usd) == (12, Decimal("0.00042"))
    event = AuditEvent.objects.get(action="llm.call", target_id=str(run.pk))
    assert event.actor_id == conversation.owner_id
    assert event.data["prompt_tokens"] == 12


@pytest.mark.django_db(transaction=True)
def test_the_stored_answer_commits_in_its_last_round(conversation):
    """Outside a test's transaction (as in the worker) the COMMIT rides the audit
    event's round: no round trip of its own; the pushes still go out on commit."""
    from tests.listening import GroupListener

    run, start, _ = _claimed(conversation)
    with GroupListener(f"conversation.{conversation.pk}") as listener:
        with round_trips() as trips:
            stored = engine._store_answer.func(
                run, "w1", start.message_id, ANSWER, dropped=0, admission=start.admission
            )
        pushed = [listener.receive()["html"] for _ in range(2)]
    assert trips == [5, 3]
    assert stored == start.message_id
    assert Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED
    assert Message.objects.get(pk=stored).status == Message.Status.COMPLETE
    assert AuditEvent.objects.filter(action="llm.call", target_id=str(run.pk)).count() == 1
    assert f'id="message-{stored}"' in pushed[0] and "run-completed" in pushed[1]


@pytest.mark.django_db(transaction=True)
def test_message_send_commits_in_its_last_round(conversation):
    """Outside a test's transaction (as in the web process) the COMMIT rides the
    audit event's round; the event names the rows inserted in the round before."""
    from tests.listening import GroupListener

    with GroupListener(f"conversation.{conversation.pk}") as listener:
        with round_trips() as trips:
            run = services.message_send(
                user=conversation.owner, conversation_id=conversation.pk, content="  Hi there "
            )
        pushed = listener.receive()["html"]
    assert trips == [1, 2, 3]
    event = AuditEvent.objects.get(action="message.sent")
    assert (event.actor_id, event.target_type) == (conversation.owner_id, "message")
    assert event.target_id == str(run.user_message_id)
    assert event.data == {"conversation_id": conversation.pk, "run_id": run.pk, "chars": 8}
    assert f'id="run-{run.pk}"' in pushed


def test_claim_and_store_move_updated_at_as_save_would(conversation):
    # Stuck-run recovery and the admin read Run.updated_at; the ORM path's save()
    # sets it (auto_now), so the hand-written statements must too.
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="hello"
    )
    long_ago = timezone.now() - timedelta(hours=1)
    Run.objects.filter(pk=run.pk).update(updated_at=long_ago)
    run, start = engine._claim_and_begin.func(run.pk, "w1")
    claimed_at = Run.objects.values_list("updated_at", flat=True).get(pk=run.pk)
    assert claimed_at > long_ago
    Run.objects.filter(pk=run.pk).update(updated_at=long_ago)
    engine._store_answer.func(
        run, "w1", start.message_id, ANSWER, dropped=0, admission=start.admission
    )
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert run.updated_at > long_ago


def test_store_after_a_lost_lease_writes_nothing(conversation):
    run, start, _ = _claimed(conversation)
    # Another worker took over (this one was presumed dead).
    Run.objects.filter(pk=run.pk).update(
        lease_owner="w2", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    stored = engine._store_answer.func(
        run, "w1", start.message_id, ANSWER, dropped=0, admission=start.admission
    )
    assert stored is None
    run.refresh_from_db()
    assert (run.status, run.lease_owner) == (Run.Status.CALLING_LLM, "w2")
    assert Message.objects.get(pk=start.message_id).status == Message.Status.STREAMING
    assert not UsageRecord.objects.filter(run_id=run.pk).exists()
    assert not AuditEvent.objects.filter(action="llm.call").exists()


def test_budget_refusal_is_worded_and_audited_by_the_orm_path(conversation, demo_model):
    demo_model.input_cost_per_token = Decimal("0.01")
    demo_model.save()
    Budget.objects.create(user=conversation.owner, period="total", cost_limit_usd=Decimal("0.05"))
    run, start, _ = _claimed(conversation)
    assert start.message_id is None and start.kind == "budget"
    assert "budget" in start.error
    run.refresh_from_db()
    # The claim committed without a hold or a message; the step then fails the run.
    assert run.lease_owner == "w1"
    assert not Message.objects.filter(run=run, role=Message.Role.ASSISTANT).exists()
    assert AuditEvent.objects.filter(action="budget.refused", target_id=str(run.pk)).exists()


def test_pushes_render_the_rows_in_hand_as_a_query_would(
    conversation, django_capture_on_commit_callbacks
):
    """The fast paths push what they wrote without reading it back; a page must
    get exactly what rendering the stored rows gives."""
    from conversations.events import render
    from tests.listening import GroupListener

    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="hello"
    )
    with GroupListener(f"conversation.{conversation.pk}") as listener:
        with django_capture_on_commit_callbacks(execute=True):
            run, start = engine._claim_and_begin.func(run.pk, "w1")
        claimed = [listener.receive()["html"] for _ in range(2)]
        message = Message.objects.get(pk=start.message_id)
        assert claimed[0] == render("run-status", {"run": Run.objects.get(pk=run.pk), "oob": True})
        assert render("message", {"m": message}) in claimed[1]
        with django_capture_on_commit_callbacks(execute=True):
            engine._store_answer.func(
                run, "w1", start.message_id, ANSWER, dropped=0, admission=start.admission
            )
        stored = [listener.receive()["html"] for _ in range(2)]
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE
    assert stored == [
        render("message", {"m": message, "oob": True}),
        render("run-status", {"run": Run.objects.get(pk=run.pk), "oob": True}),
    ]


def test_message_send_takes_the_fast_path_and_pushes_what_a_query_would(
    conversation, django_capture_on_commit_callbacks
):
    from approvals.services import audit_record
    from conversations import selectors
    from conversations.events import render
    from tests.listening import GroupListener

    audit_record(action="test.chain_started")  # the chain's head row exists, as it does live
    conversation.title = ""
    conversation.save()  # the first message titles it
    owner = conversation.owner
    with (
        GroupListener(f"conversation.{conversation.pk}") as listener,
        GroupListener(f"user.{owner.pk}") as sidebar,
    ):
        with (
            CaptureQueriesContext(connection) as sent,
            django_capture_on_commit_callbacks(execute=False) as callbacks,
            round_trips() as trips,
        ):
            run = services.message_send(
                user=owner, conversation_id=conversation.pk, content="First words"
            )
        # The lock and check, one insert statement, three for the audit append
        # (the ORM path: 9 statements and 2 savepoint commands), in three round
        # trips: the insert shares one with the audit head's lock.
        assert len(_statements(sent)) == 5, _statements(sent)
        assert trips == [1, 2, 2]
        for callback in callbacks[1:]:  # [0] dispatches the step to a worker
            callback()
        pushed = listener.receive()["html"]
        item = sidebar.receive()["html"]
    run = selectors.run_for_push(run_id=run.pk)
    assert run.user_message.content == "First words"
    assert run.conversation.title == "First words"
    assert render("message", {"m": run.user_message}) in pushed
    assert render("run", {"run": run}) in pushed
    # The sidebar gets the conversation's item, with its new title, to put first.
    assert item == (
        '<div hx-swap-oob="afterbegin:#conversation-list">'
        + render("conversation-item", {"c": Conversation.objects.get(pk=conversation.pk)})
        + "</div>"
    )


def test_streaming_saves_report_stop_and_a_lost_lease(conversation):
    run, start, _ = _claimed(conversation)
    save = engine._persist_partial.func
    assert save(run.pk, "w1", start.message_id, "Half a", False) == "ok"
    assert Message.objects.get(pk=start.message_id).content == "Half a"
    before = Run.objects.get(pk=run.pk).lease_expires_at
    assert save(run.pk, "w1", start.message_id, "Half an answer", True) == "ok"
    assert Run.objects.get(pk=run.pk).lease_expires_at > before  # renewed
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert save(run.pk, "w1", start.message_id, "Half an answer.", False) == "cancelled"
    Run.objects.filter(pk=run.pk).update(lease_owner="w2")
    assert save(run.pk, "w1", start.message_id, "More", True) == "lost"
    lease = Run.objects.get(pk=run.pk).lease_expires_at
    assert save(run.pk, "w1", start.message_id, "More", True) == "lost"
    assert Run.objects.get(pk=run.pk).lease_expires_at == lease  # not ours to renew


def test_saves_are_spread_out_when_many_replies_stream(settings, monkeypatch):
    from conversations.events import StreamPublisher

    settings.TOLLGATE_STREAM_PERSIST_SECONDS = 0.5
    settings.TOLLGATE_STREAM_PERSISTS_PER_SECOND = 100
    monkeypatch.setattr(StreamPublisher, "live_count", classmethod(lambda cls: 10))
    assert engine._persist_interval() == 0.5
    monkeypatch.setattr(StreamPublisher, "live_count", classmethod(lambda cls: 200))
    assert engine._persist_interval() == 2.0
    monkeypatch.setattr(StreamPublisher, "live_count", classmethod(lambda cls: 5000))
    assert engine._persist_interval() == engine.MAX_PERSIST_SECONDS


def test_the_answers_tokens_count_against_rate_limits_once_committed(
    conversation, django_capture_on_commit_callbacks
):
    from accounts.models import RateLimit
    from accounts.services import RateLimited, ratelimit_check

    limit = conversation.model_config.max_output_tokens + 1000
    RateLimit.objects.create(user=conversation.owner, tokens_per_minute=limit)
    run, start, _ = _claimed(conversation)
    with django_capture_on_commit_callbacks() as callbacks:
        engine._store_answer.func(
            run, "w1", start.message_id, ANSWER, dropped=0, admission=start.admission
        )
        # Not counted while the store's transaction is open (or if it rolls back).
        ratelimit_check(user=conversation.owner, tokens=limit)
    for callback in callbacks:
        callback()
    # Counted once committed: the answer's 15 tokens leave less than the whole minute.
    ratelimit_check(user=conversation.owner, tokens=limit - 15)
    with pytest.raises(RateLimited):
        ratelimit_check(user=conversation.owner, tokens=limit - 14)
