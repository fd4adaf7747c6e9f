"""invocation_execute: exactly once, timeouts, truncation, errors, concurrency, recovery."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.utils import timezone

from tools.models import Note, Tool, ToolInvocation
from tools.registry import ToolContext, ToolError
from tools.selectors import invocation_ids_interrupted
from tools.services import (
    invocation_execute,
    invocation_recover_interrupted,
    invocations_execute,
)

from .conftest import approved_invocation, make_run

Status = ToolInvocation.Status


def execute(invocation_id: int) -> ToolInvocation:
    return async_to_sync(invocation_execute)(invocation_id=invocation_id)


@pytest.mark.django_db
def test_builtin_runs_and_stores_result(run, user):
    inv = approved_invocation(
        run, tool_name="notes.write", arguments={"key": "k", "value": "hello"}
    )
    done = execute(inv.pk)
    assert done.status == Status.SUCCEEDED
    assert not done.is_error
    assert done.result == '{"key": "k", "created": true}'
    assert done.attempts == 1
    assert done.started_at is not None and done.finished_at >= done.started_at
    assert done.duration_ms is not None
    assert done.arguments_executed == {"key": "k", "value": "hello"}
    assert Note.objects.get(user=user, key="k").value == "hello"


@pytest.mark.django_db
def test_edited_arguments_are_the_ones_executed(run, user):
    from tools.services import invocation_mark

    inv = approved_invocation(run, tool_name="notes.write", arguments={"key": "k", "value": "a"})
    invocation_mark(
        invocation_id=inv.pk,
        status=Status.APPROVED,
        expected=[Status.APPROVED],
        arguments_executed={"key": "k", "value": "edited"},
    )
    assert execute(inv.pk).status == Status.SUCCEEDED
    assert Note.objects.get(user=user, key="k").value == "edited"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", [Status.REQUESTED, Status.AWAITING_APPROVAL, Status.DENIED, Status.SUCCEEDED]
)
def test_only_approved_invocations_run(run, make_tool, status):
    calls = []
    make_tool(lambda: calls.append(1) or "ran", name="t.count")
    inv = approved_invocation(run, tool_name="t.count")
    ToolInvocation.objects.filter(pk=inv.pk).update(status=status)
    again = execute(inv.pk)
    assert again.status == status
    assert again.attempts == 0
    assert calls == []


@pytest.mark.django_db
def test_a_replayed_execution_is_a_no_op(run, make_tool):
    calls = []
    make_tool(lambda: calls.append(1) or "ran", name="t.once")
    inv = approved_invocation(run, tool_name="t.once")
    first = execute(inv.pk)
    second = execute(inv.pk)
    assert calls == [1]
    assert (first.status, second.status, second.attempts) == (Status.SUCCEEDED,) * 2 + (1,)


@pytest.mark.django_db
def test_timeout_becomes_an_error_result(run, make_tool):
    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    make_tool(hang, name="t.hang", timeout_seconds=0.2)
    done = execute(approved_invocation(run, tool_name="t.hang").pk)
    assert done.status == Status.FAILED
    assert done.is_error
    assert done.result == "Tool t.hang timed out after 0.2 s."
    assert done.error == done.result


@pytest.mark.django_db
def test_sync_handler_timeout_does_not_block(run, make_tool):
    release = threading.Event()

    def slow() -> str:
        release.wait(30)
        return "late"

    make_tool(slow, name="t.slow_sync", timeout_seconds=0.2)
    try:
        done = execute(approved_invocation(run, tool_name="t.slow_sync").pk)
    finally:
        release.set()
    assert done.status == Status.FAILED
    assert "timed out after 0.2 s" in done.result


@pytest.mark.django_db
def test_inner_timeout_error_is_not_reported_as_our_timeout(run, make_tool):
    async def raises_timeout() -> str:
        raise TimeoutError("upstream took too long")

    make_tool(raises_timeout, name="t.inner_timeout", timeout_seconds=5)
    done = execute(approved_invocation(run, tool_name="t.inner_timeout").pk)
    assert done.result == "Tool t.inner_timeout failed: TimeoutError: upstream took too long"


@pytest.mark.django_db
def test_result_is_truncated_with_a_note(run, make_tool):
    make_tool(lambda: "x" * 1000, name="t.big", max_result_chars=100)
    done = execute(approved_invocation(run, tool_name="t.big").pk)
    assert done.status == Status.SUCCEEDED
    assert done.result == "x" * 100 + "\n[truncated: 900 of 1000 characters cut]"


@pytest.mark.django_db
def test_exceptions_become_error_results(run, make_tool):
    def boom() -> str:
        raise RuntimeError("disk on fire")

    def expected() -> str:
        raise ToolError("No such thing.")

    make_tool(boom, name="t.boom")
    make_tool(expected, name="t.expected")
    done = execute(approved_invocation(run, tool_name="t.boom").pk)
    assert (done.status, done.is_error) == (Status.FAILED, True)
    assert done.result == "Tool t.boom failed: RuntimeError: disk on fire"
    done = execute(approved_invocation(run, tool_name="t.expected", call_id="c2").pk)
    assert (done.status, done.result) == (Status.FAILED, "No such thing.")


@pytest.mark.django_db
def test_tool_disabled_after_approval_is_not_run(run, make_tool):
    calls = []
    make_tool(lambda: calls.append(1) or "ran", name="t.disabled_later")
    inv = approved_invocation(run, tool_name="t.disabled_later")
    Tool.objects.filter(name="t.disabled_later").update(enabled=False)
    done = execute(inv.pk)
    assert calls == []
    assert done.status == Status.FAILED
    assert "is not available" in done.result


@pytest.mark.django_db
def test_handler_receives_context(run, make_tool):
    seen = []

    async def whoami(ctx: ToolContext) -> str:
        seen.append(ctx)
        return "ok"

    make_tool(whoami, name="t.ctx")
    inv = approved_invocation(run, tool_name="t.ctx")
    execute(inv.pk)
    assert seen == [
        ToolContext(
            user_id=run.conversation.owner_id,
            conversation_id=run.conversation_id,
            run_id=run.pk,
            invocation_id=inv.pk,
        )
    ]
    # The run's stop flag, through settings.TOLLGATE_RUN_CANCELLED_CHECK.
    check = seen[0].cancel_requested
    assert check is not None
    assert async_to_sync(check)() is False
    run.cancel_requested = True
    run.save(update_fields=["cancel_requested"])
    assert async_to_sync(check)() is True


@pytest.mark.django_db
def test_several_invocations_run_concurrently(run, make_tool):
    count = 3
    state: dict[str, Any] = {"started": 0}
    stamps: dict[str, tuple[float, float]] = {}

    async def rendezvous(label: str) -> str:
        start = time.monotonic()
        all_started = state.setdefault("event", asyncio.Event())
        state["started"] += 1
        if state["started"] == count:
            all_started.set()
        # Finishes only once every handler has started: run one after the
        # other, the first would wait here until its timeout and fail.
        await all_started.wait()
        await asyncio.sleep(0.05)
        stamps[label] = (start, time.monotonic())
        return label

    make_tool(rendezvous, name="t.rendezvous", timeout_seconds=20)
    ids = [
        approved_invocation(
            run, tool_name="t.rendezvous", arguments={"label": f"n{i}"}, call_id=f"c{i}"
        ).pk
        for i in range(count)
    ]
    done = async_to_sync(invocations_execute)(invocation_ids=ids)
    assert [d.pk for d in done] == ids
    assert [d.status for d in done] == [Status.SUCCEEDED] * count
    assert [d.result for d in done] == ["n0", "n1", "n2"]
    latest_start = max(start for start, _ in stamps.values())
    earliest_end = min(end for _, end in stamps.values())
    assert latest_start < earliest_end  # all three were running at the same time


@pytest.mark.django_db(transaction=True)
def test_racing_executions_run_the_handler_exactly_once(user, make_tool):
    lock = threading.Lock()
    calls: list[str] = []

    def counted() -> str:
        with lock:
            calls.append(threading.current_thread().name)
        time.sleep(0.2)  # keep the first run in flight while the others arrive
        return "ran"

    make_tool(counted, name="t.race")
    run = make_run(user)
    inv = approved_invocation(run, tool_name="t.race")
    racers = 4
    barrier = threading.Barrier(racers)
    results: list[ToolInvocation] = []
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            barrier.wait()
            results.append(execute(inv.pk))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=racer, name=f"racer-{i}") for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(calls) == 1
    inv.refresh_from_db()
    assert (inv.status, inv.attempts, inv.result) == (Status.SUCCEEDED, 1, "ran")
    # The losers saw the row running (or finished) and returned it unchanged.
    assert sorted(r.status for r in results).count(Status.APPROVED) == 0


def _stuck(run, tool_name: str, *, minutes_ago: float) -> ToolInvocation:
    inv = approved_invocation(run, tool_name=tool_name)
    ToolInvocation.objects.filter(pk=inv.pk).update(
        status=Status.RUNNING,
        attempts=1,
        started_at=timezone.now() - dt.timedelta(minutes=minutes_ago),
    )
    return inv


@pytest.mark.django_db
def test_interrupted_idempotent_tool_is_run_again(run, make_tool):
    calls = []
    make_tool(lambda: calls.append(1) or "again", name="t.idem", idempotent=True)
    inv = _stuck(run, "t.idem", minutes_ago=10)
    assert invocation_ids_interrupted() == [inv.pk]
    done = async_to_sync(invocation_recover_interrupted)(invocation_id=inv.pk)
    assert calls == [1]
    assert (done.status, done.attempts, done.result) == (Status.SUCCEEDED, 2, "again")
    assert done.metadata["recovered"] == 1
    assert invocation_ids_interrupted() == []


@pytest.mark.django_db
def test_interrupted_non_idempotent_tool_is_failed_not_retried(run, make_tool):
    calls = []
    make_tool(lambda: calls.append(1) or "again", name="t.once_only", idempotent=False)
    inv = _stuck(run, "t.once_only", minutes_ago=10)
    done = async_to_sync(invocation_recover_interrupted)(invocation_id=inv.pk)
    assert calls == []
    assert done.status == Status.FAILED and done.is_error
    assert "interrupted; not retried because the tool is not idempotent" in done.result


@pytest.mark.django_db
def test_recently_started_invocation_is_left_alone(run, make_tool):
    calls = []
    make_tool(lambda: calls.append(1) or "x", name="t.fresh", idempotent=True, timeout_seconds=30)
    inv = _stuck(run, "t.fresh", minutes_ago=0.1)
    assert invocation_ids_interrupted() == []
    done = async_to_sync(invocation_recover_interrupted)(invocation_id=inv.pk)
    assert done.status == Status.RUNNING and calls == []
