from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group

from tools.models import Tool, ToolInvocation
from tools.registry import ToolArgumentsInvalid
from tools.selectors import invocation_tool_message
from tools.services import InvocationStateError, invocation_mark, invocations_record

pytestmark = pytest.mark.django_db

Status = ToolInvocation.Status


def _call(call_id, name, arguments):
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def _record(run, calls):
    return invocations_record(
        run_id=run.pk,
        message_id=None,
        user_id=run.conversation.owner_id,
        conversation_id=run.conversation_id,
        tool_calls=calls,
    )


def test_record_stores_calls_in_order_and_is_idempotent(run):
    calls = [
        _call("a", "time__now", {"timezone": "Asia/Tokyo"}),
        _call("b", "calc__evaluate", {"expression": "17*23"}),
    ]
    first = _record(run, calls)
    assert [(i.tool_call_id, i.tool_name, i.position, i.status) for i in first] == [
        ("a", "time.now", 0, Status.REQUESTED),
        ("b", "calc.evaluate", 1, Status.REQUESTED),
    ]
    assert first[0].arguments_requested == {"timezone": "Asia/Tokyo"}
    assert first[0].arguments_raw == '{"timezone": "Asia/Tokyo"}'
    assert first[0].user_id == run.conversation.owner_id
    assert first[0].conversation_id == run.conversation_id

    invocation_mark(invocation_id=first[0].pk, status=Status.APPROVED)
    again = _record(run, calls)
    assert [i.pk for i in again] == [i.pk for i in first]
    assert again[0].status == Status.APPROVED  # a replay changes nothing
    assert ToolInvocation.objects.filter(run_id=run.pk).count() == 2


def test_invalid_arguments_become_an_error_result_not_an_exception(run):
    (inv,) = _record(run, [_call("x", "calc__evaluate", '{"expression": 5')])
    assert inv.status == Status.INVALID
    assert inv.is_error
    assert inv.result.startswith("Invalid arguments for tool calc.evaluate: not valid JSON")
    assert inv.finished_at is not None
    assert invocation_tool_message(invocation=inv) == {
        "role": "tool",
        "tool_call_id": "x",
        "content": inv.result,
    }
    (wrong,) = _record(run, [_call("y", "calc__evaluate", {"expr": "1"})])
    assert wrong.status == Status.INVALID
    assert "'expression' is a required property" in wrong.result


def test_unknown_disabled_and_group_restricted_tools_are_invalid(run, user):
    Tool.objects.filter(name="notes.delete").update(enabled=False)
    staff = Group.objects.create(name="Staff")
    Tool.objects.get(name="notes.write").groups.add(staff)
    invs = _record(
        run,
        [
            _call("1", "shell__exec", {"cmd": "rm -rf /"}),
            _call("2", "notes__delete", {"key": "k"}),
            _call("3", "notes__write", {"key": "k", "value": "v"}),
            _call("4", "http__get", {"url": "https://example.com"}),  # off by default
        ],
    )
    assert [i.status for i in invs] == [Status.INVALID] * 4
    assert "Unknown or unavailable tool 'shell__exec'" in invs[0].result

    user.groups.add(staff)
    (ok,) = _record(run, [_call("5", "notes__write", {"key": "k", "value": "v"})])
    assert ok.status == Status.REQUESTED


def test_call_without_id_and_dict_arguments(run):
    (inv,) = _record(
        run,
        [{"type": "function", "function": {"name": "time.now", "arguments": {"timezone": "UTC"}}}],
    )
    assert inv.tool_call_id == "call_0"
    assert inv.tool_name == "time.now"
    assert inv.arguments_requested == {"timezone": "UTC"}


def test_mark_checks_the_expected_status_and_validates_edited_arguments(run):
    (inv,) = _record(run, [_call("a", "notes__write", {"key": "k", "value": "v"})])
    with pytest.raises(ToolArgumentsInvalid, match="value"):
        invocation_mark(
            invocation_id=inv.pk, status=Status.APPROVED, arguments_executed={"key": "k"}
        )
    inv.refresh_from_db()
    assert inv.status == Status.REQUESTED and inv.arguments_executed is None

    inv = invocation_mark(
        invocation_id=inv.pk,
        status=Status.APPROVED,
        expected=[Status.REQUESTED],
        decision=ToolInvocation.Decision.ALLOW,
        arguments_executed={"key": "k", "value": "edited"},
    )
    assert inv.arguments_executed == {"key": "k", "value": "edited"}
    with pytest.raises(InvocationStateError, match="is approved"):
        invocation_mark(invocation_id=inv.pk, status=Status.DENIED, expected=[Status.REQUESTED])

    denied = invocation_mark(
        invocation_id=inv.pk, status=Status.DENIED, result="Denied by the user: not now."
    )
    assert denied.finished_at is not None
    with pytest.raises(InvocationStateError):
        invocation_mark(invocation_id=inv.pk, status=Status.APPROVED)
