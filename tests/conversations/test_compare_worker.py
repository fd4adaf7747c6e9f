"""Compare mode on a real Celery worker (issue 24): three models' answers stream at the
same time, the summary waits for all of them, a failing model leaves a summary of the
others, and the answer picked is the only one the next run sends to the model.

The worker runs against this session's PostgreSQL database and Redis broker (as in
``test_worker.py``), with the demo model streaming at 15 ms a word, so that each
answer takes long enough for the intervals to be compared.
"""

from __future__ import annotations

import pytest

from accounts.models import UsageRecord
from audit.models import AuditEvent
from conversations import services
from conversations.demo import _count_tokens
from conversations.engine import history_messages, history_with_ids
from conversations.models import Message, Run
from tests.conversations.test_compare import demo_models, failing_model
from tests.conversations.test_worker import wait_for, worker_running

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

S = Run.Status


@pytest.fixture
def slow_worker(transactional_db, tmp_path):
    """A Celery worker whose demo model streams a word every 15 ms."""
    with worker_running(tmp_path, demo_delay_ms=15) as proc:
        yield proc


def wait_terminal(run: Run, worker, *, timeout: float = 90) -> Run:
    return wait_for(run, worker, timeout=timeout)


def answer_of(run: Run) -> Message:
    return Message.objects.filter(run=run, role=Message.Role.ASSISTANT).latest("id")


def streaming_interval(run: Run):
    """When the run's answer began streaming (its message was made, just before the
    model call) and when the run ended."""
    return answer_of(run).created_at, run.finished_at


def test_three_answers_stream_at_once_and_the_summary_waits_for_all(slow_worker, conversation):
    models = demo_models(3)
    run = services.message_send(
        user=conversation.owner,
        conversation_id=conversation.pk,
        content="Explain how tides work",
        compare_model_ids=[m.pk for m in models],
    )
    run = wait_terminal(run, slow_worker)
    assert run.status == S.COMPLETED, run.error
    parts = list(run.parts.order_by("position"))
    assert [p.status for p in parts] == [S.COMPLETED] * 3
    intervals = [streaming_interval(p) for p in parts]
    # Every answer took a while (words at 15 ms), and all three streamed together:
    # the last to start began before the first to end had ended.
    assert all((end - start).total_seconds() > 0.5 for start, end in intervals)
    latest_start = max(start for start, _ in intervals)
    earliest_end = min(end for _, end in intervals)
    assert latest_start < earliest_end, intervals
    # The summary began only after the last answer ended, and covers all three.
    summary = answer_of(run)
    assert summary.created_at >= max(end for _, end in intervals)
    assert summary.content.startswith("Summary of 3 answers:")
    for model in models:
        assert model.name in summary.content
    # Each model call is in the ledger and the audit trail under its own run and step.
    for each in [*parts, run]:
        event = AuditEvent.objects.get(action="llm.call", target_id=str(each.pk))
        assert event.data["step"] == 1
        assert UsageRecord.objects.filter(run_id=each.pk).count() == 1
    assert AuditEvent.objects.filter(action="run.completed", target_id=str(run.pk)).exists()


def test_a_failing_model_still_yields_a_summary_of_the_others(slow_worker, conversation):
    models = [*demo_models(2), failing_model()]
    run = services.message_send(
        user=conversation.owner,
        conversation_id=conversation.pk,
        content="Name a river",
        compare_model_ids=[m.pk for m in models],
    )
    run = wait_terminal(run, slow_worker)
    assert run.status == S.COMPLETED, run.error
    parts = list(run.parts.order_by("position"))
    assert [p.status for p in parts] == [S.COMPLETED, S.COMPLETED, S.FAILED]
    assert "Broken" in parts[2].error
    summary = answer_of(run).content
    assert summary.startswith("Summary of 3 answers:")
    assert "**Demo A**" in summary and "**Demo B**" in summary
    assert "**Broken**: (This model failed" in summary


def test_continue_with_one_sends_only_that_answer_to_the_next_model_call(slow_worker, conversation):
    run = services.message_send(
        user=conversation.owner,
        conversation_id=conversation.pk,
        content="Pick a colour",
        compare_model_ids=[m.pk for m in demo_models(3)],
    )
    run = wait_terminal(run, slow_worker)
    chosen = run.parts.get(position=2)
    services.compare_choose(user=conversation.owner, run_id=chosen.pk)
    follow = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="Why that one?"
    )
    follow = wait_terminal(follow, slow_worker)
    assert follow.status == S.COMPLETED, follow.error
    assert follow.parent_id == chosen.pk
    conversation.refresh_from_db()
    _, ids = history_with_ids(conversation=conversation, system_prompt="S", run=follow)
    assert ids == [
        None,
        run.user_message_id,
        answer_of(chosen).pk,
        follow.user_message_id,
        answer_of(follow).pk,
    ]
    others = [answer_of(p) for p in run.parts.exclude(pk=chosen.pk)] + [answer_of(run)]
    assert all(m.pk not in ids for m in others)
    # What the worker sent the provider: the demo model reports the prompt tokens of
    # the messages it was given, which are exactly these four (system, question, the
    # one answer picked, the follow-up), not the other answers or the summary.
    sent = history_messages(
        conversation=conversation, system_prompt=follow.parameters["system_prompt"]["text"],
        run=follow,
    )[:-1]  # fmt: skip
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert answer_of(follow).prompt_tokens == sum(_count_tokens(m["content"]) + 4 for m in sent)
