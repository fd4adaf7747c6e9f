"""Fixtures for approvals tests: real rows for conversations, runs and tool invocations."""

from __future__ import annotations

import pytest

from approvals.models import ApprovalRequest
from approvals.selectors import GateDecision
from approvals.services import approval_request_create
from approvals.signals import approval_decided
from conversations import toolphase
from tests.approvals import handlers
from tests.factories import ConversationFactory, GroupFactory, RunFactory, ToolInvocationFactory

NOTE_SCHEMA = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "description": "Note name"},
        "text": {"type": "string", "maxLength": 500},
        "priority": {"type": "integer", "minimum": 0},
        "pinned": {"type": "boolean"},
        "color": {"enum": ["red", "green"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["key"],
    "additionalProperties": False,
}


@pytest.fixture(autouse=True)
def decided_handler(settings):
    """Approvals on their own: the ``approval_decided`` calls made during the test,
    ``[(approval id, status)]``, received by ``handlers.record_decided`` in place of
    conversations' receiver (which the views and browser tests exercise)."""
    # Users are made by the dozen here; the default hasher costs a second each on a busy machine.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    handlers.CALLS.clear()
    approval_decided.disconnect(sender=ApprovalRequest, dispatch_uid="conversations")
    approval_decided.connect(handlers.record_decided, dispatch_uid="tests.record_decided")
    yield handlers.CALLS
    approval_decided.disconnect(dispatch_uid="tests.record_decided")
    approval_decided.connect(
        toolphase.approval_decided, sender=ApprovalRequest, dispatch_uid="conversations"
    )
    handlers.CALLS.clear()


@pytest.fixture
def exploding_receiver():
    """An ``approval_decided`` receiver that raises (a decision must roll back)."""
    approval_decided.connect(handlers.exploding, dispatch_uid="tests.exploding")
    yield
    approval_decided.disconnect(dispatch_uid="tests.exploding")


@pytest.fixture
def staff_group(db):
    return GroupFactory(name="Staff")


@pytest.fixture
def make_invocation(db):
    """A tool call awaiting approval in a run of ``user`` (a new conversation and run
    unless given)."""

    def make(user, *, conversation=None, run=None, tool_name="notes.delete", arguments=None):
        if run is None:
            run = RunFactory(
                conversation=conversation or ConversationFactory(owner=user),
                user_message__content="please",
            )
        return ToolInvocationFactory(
            run=run, user=user, tool_name=tool_name, arguments_requested=arguments or {}
        )

    return make


@pytest.fixture
def make_approval(make_invocation):
    def make(
        user,
        *,
        tool_name="notes.write",
        arguments=None,
        hints=None,
        schema=None,
        approver_group=None,
        four_eyes=False,
        approvals_required=1,
        expires=1800,
        invocation=None,
        cost=None,
    ):
        arguments = {"key": "todo", "text": "buy milk"} if arguments is None else arguments
        invocation = invocation or make_invocation(user, tool_name=tool_name, arguments=arguments)
        decision = GateDecision(
            action="ask",
            policy_id=None,
            explanation="asked because: no rule matched and the tool is not read-only",
            expires_after_seconds=expires,
            approver_group_id=approver_group.pk if approver_group else None,
            four_eyes=four_eyes,
            approvals_required=approvals_required,
        )
        return approval_request_create(
            invocation_id=invocation.pk,
            requester=user,
            conversation_id=invocation.conversation_id,
            run_id=invocation.run_id,
            tool_name=tool_name,
            tool_description="Write a note.",
            hints=hints if hints is not None else {"read_only": False, "destructive": False},
            arguments=arguments,
            arguments_schema=NOTE_SCHEMA if schema is None else schema,
            decision=decision,
            cost=cost,
        )

    return make
