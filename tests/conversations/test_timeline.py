"""A run's timeline (``selectors.run_timeline`` and its page): lanes drawn from the
stored timestamps of model calls, approvals and tool executions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from conversations import selectors
from conversations.demo import demo_plan
from conversations.models import Message, Run
from tests.factories import (
    ApprovalRequestFactory,
    ConversationFactory,
    MessageFactory,
    RunFactory,
    ToolInvocationFactory,
)

pytestmark = pytest.mark.django_db


def _run_with_two_parallel_tools_and_an_approval(owner) -> Run:
    run = RunFactory(conversation=ConversationFactory(owner=owner), status=Run.Status.COMPLETED)
    t0 = run.created_at
    Run.objects.filter(pk=run.pk).update(finished_at=t0 + timedelta(seconds=10))
    run.refresh_from_db()
    first = MessageFactory(
        conversation=run.conversation,
        run=run,
        role="assistant",
        run_step=1,
        model="demo",
        latency_ms=1000,
        tool_calls=[{}, {}, {}],
    )
    last = MessageFactory(
        conversation=run.conversation,
        run=run,
        role="assistant",
        run_step=2,
        model="demo",
        latency_ms=500,
    )
    Message.objects.filter(pk=first.pk).update(created_at=t0 + timedelta(milliseconds=100))
    Message.objects.filter(pk=last.pk).update(created_at=t0 + timedelta(seconds=9))
    # calc and clock overlap (4.0-5.0 s and 4.2-4.8 s); the note waits for a person
    # (1.2-4.0 s) and then runs after calc (5.0-5.5 s), so it shares calc's lane.
    spans = {"calc.evaluate": (4000, 5000), "time.now": (4200, 4800), "notes.write": (5000, 5500)}
    for position, (name, (start, end)) in enumerate(spans.items()):
        invocation = ToolInvocationFactory(
            run=run,
            tool_name=name,
            position=position,
            status="succeeded",
            started_at=t0 + timedelta(milliseconds=start),
            finished_at=t0 + timedelta(milliseconds=end),
        )
        if name == "notes.write":
            approval = ApprovalRequestFactory(
                invocation=invocation,
                status="approved",
                decided_by=owner,
                decided_at=t0 + timedelta(milliseconds=4000),
            )
            approval.created_at = t0 + timedelta(milliseconds=1200)
            approval.save(update_fields=["created_at"])
    return run


def test_a_runs_steps_are_laid_out_in_lanes_with_parallel_tools_apart(user):
    run = _run_with_two_parallel_tools_and_an_approval(user)
    timeline = selectors.run_timeline(user=user, run_id=run.pk)

    lanes = {
        lane.name: [(b.kind, b.start_ms, b.end_ms) for b in lane.bars] for lane in timeline.lanes
    }
    assert lanes == {
        "Model": [("llm", 100, 1100), ("llm", 9000, 9500)],
        "People": [("approval", 1200, 4000)],
        "Tools 1": [("tool", 4000, 5000), ("tool", 5000, 5500)],
        "Tools 2": [("tool", 4200, 4800)],
    }
    assert timeline.total_ms == 10_000
    assert timeline.lanes[0].bars[0].label == "Step 1 · demo · 3 tool calls"
    placed = {lane.name: bars for lane, bars in timeline.placed()}
    _bar, left, width = placed["People"][0]
    assert (left, width) == (12.0, 28.0)


def test_a_run_still_going_is_drawn_to_now(user):
    run = RunFactory(conversation=ConversationFactory(owner=user), status=Run.Status.CALLING_LLM)
    Run.objects.filter(pk=run.pk).update(started_at=run.created_at + timedelta(seconds=2))
    MessageFactory(
        conversation=run.conversation, run=run, role="assistant", run_step=1, status="streaming"
    )
    timeline = selectors.run_timeline(user=user, run_id=run.pk)
    queued, bar = timeline.lanes[0].bars
    assert (queued.kind, queued.start_ms, queued.end_ms) == ("queue", 0, 2000)
    assert bar.end_ms is None and bar.duration_ms is None
    assert [lane.name for lane in timeline.lanes] == ["Model"]


def test_the_timeline_costs_the_same_queries_however_many_steps(user, django_assert_num_queries):
    small = _run_with_two_parallel_tools_and_an_approval(user)
    big = _run_with_two_parallel_tools_and_an_approval(user)
    for step in range(3, 12):
        MessageFactory(conversation=big.conversation, run=big, role="assistant", run_step=step)
    with django_assert_num_queries(5):
        selectors.run_timeline(user=user, run_id=small.pk)
    with django_assert_num_queries(5):
        selectors.run_timeline(user=user, run_id=big.pk)


def test_the_timeline_page_shows_the_lanes_and_refuses_another_users_run(
    user_client, user, client, other_user
):
    run = _run_with_two_parallel_tools_and_an_approval(user)
    url = reverse("conversations:run-timeline", args=[run.pk])
    page = user_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("Model", "People", "Tools 2", "Approval: notes.write — approved", "left: 12.0%"):
        assert text in html
    client.force_login(other_user)
    assert client.get(url).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302  # to sign in


def test_the_demo_makes_one_call_per_line_when_every_line_asks_for_a_tool():
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in ("time__now", "calc__evaluate")
    ]
    several = 'use tool time.now {"timezone": "UTC"}\nuse tool calc.evaluate {"expression": "1+1"}'
    _text, calls = demo_plan([{"role": "user", "content": several}], tools)
    assert [c["function"]["name"] for c in calls] == ["time__now", "calc__evaluate"]
    assert len({c["id"] for c in calls}) == 2
    # A line that is not a tool request makes it an ordinary message again (at most
    # one call, from the phrases the demo recognises).
    _text, calls = demo_plan([{"role": "user", "content": several + "\nthanks"}], tools)
    assert len(calls) < 2
