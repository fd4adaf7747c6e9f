"""Loop events (``conversations.loopevents``): what a subscriber receives from the
run core, in order, after commit."""

from __future__ import annotations

import pytest

from conversations.loopevents import (
    LOOP_EVENTS,
    PendingEvent,
    loop_event_emit,
    loop_event_subscribe,
)
from tests.conversations.conftest import drive_approved_tool_call

pytestmark = pytest.mark.django_db


def _deliver(callbacks) -> None:
    """Run the captured on-commit callbacks that send loop events (the others, such
    as dispatching a step, are the test's to do by hand)."""
    for callback in callbacks:
        if isinstance(getattr(callback, "__self__", None), PendingEvent):
            callback()


def test_a_subscriber_receives_a_runs_events_in_order_with_their_fields(
    conversation, django_capture_on_commit_callbacks
):
    seen = []
    unsubscribe = loop_event_subscribe(seen.append)
    try:
        with django_capture_on_commit_callbacks() as callbacks:
            run = drive_approved_tool_call(conversation)
            assert seen == []  # nothing before the commit
        _deliver(callbacks)
    finally:
        unsubscribe()

    assert [(e.name, e.step) for e in seen] == [
        ("run.started", 1),
        ("step.started", 1),
        ("step.finished", 1),
        ("tool_call.gated", 1),
        ("tool_call.decided", 1),
        ("tool_call.executed", 1),
        ("step.started", 2),
        ("step.finished", 2),
        ("run.finished", 2),
    ]
    assert {e.run_id for e in seen} == {run.pk}
    assert {e.user_id for e in seen} == {conversation.owner_id}
    assert {e.conversation_id for e in seen} == {conversation.pk}
    by_name = {e.name: e.data for e in seen}
    assert by_name["run.started"] == {"kind": "answer", "model": conversation.model_config.name}
    calling = seen[2].data
    assert calling["outcome"] == "tool_calls" and calling["tool_calls"] == 1
    assert calling["model"] == conversation.model_config.name
    assert calling["prompt_tokens"] > 0 and calling["latency_ms"] is not None
    tool_call_id = by_name["tool_call.gated"]["tool_call_id"]
    assert by_name["tool_call.gated"] == {
        "tool_call_id": tool_call_id,
        "tool": "notes.delete",
        "decision": "ask",
    }
    assert by_name["tool_call.decided"] == {
        "tool_call_id": tool_call_id,
        "tool": "notes.delete",
        "decision": "approved",
        "actor_id": conversation.owner_id,
        "waited_ms": by_name["tool_call.decided"]["waited_ms"],
    }
    assert by_name["tool_call.decided"]["waited_ms"] >= 0
    executed = by_name["tool_call.executed"]
    assert (executed["tool"], executed["status"]) == ("notes.delete", "succeeded")
    assert executed["duration_ms"] >= 0
    assert by_name["step.finished"]["outcome"] == "answer"  # the last one
    assert by_name["run.finished"] == {
        "status": "completed",
        "steps": 2,
        "error": "",
        "created_at": run.created_at.isoformat(),
    }
    assert all(seen[i].at <= seen[i + 1].at for i in range(len(seen) - 1))


def test_a_failing_subscriber_does_not_stop_the_others_and_unsubscribing_works(
    django_capture_on_commit_callbacks,
):
    def broken(event):
        raise RuntimeError("subscriber bug")

    seen = []
    unsubscribe_broken = loop_event_subscribe(broken)
    unsubscribe = loop_event_subscribe(seen.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            loop_event_emit(
                name="run.started", run_id=1, conversation_id=2, user_id=3, step=1, kind="answer"
            )
        unsubscribe()
        with django_capture_on_commit_callbacks(execute=True):
            loop_event_emit(name="step.started", run_id=1, conversation_id=2, user_id=3, step=1)
    finally:
        unsubscribe_broken()
    assert [(e.name, e.data) for e in seen] == [("run.started", {"kind": "answer"})]


def test_a_withdrawn_event_is_not_sent_and_an_unknown_one_is_refused(
    django_capture_on_commit_callbacks,
):
    seen = []
    unsubscribe = loop_event_subscribe(seen.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            pending = loop_event_emit(
                name="step.finished", run_id=1, conversation_id=2, user_id=3, step=1
            )
            pending.cancel()
    finally:
        unsubscribe()
    assert seen == []
    assert "run.finished" in LOOP_EVENTS
    with pytest.raises(ValueError, match="Unknown loop event"):
        loop_event_emit(name="run.exploded", run_id=1, conversation_id=2, user_id=3, step=0)
