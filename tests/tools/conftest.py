"""Fixtures for the tools tests: a Run to hang invocations on, and temporary tools."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from conversations.models import Conversation, Message, ModelConfig, Run
from tools.models import ToolInvocation
from tools.registry import ToolContext, ToolSpec, registry, spec_from_function
from tools.services import invocation_mark, invocations_record, tools_sync


def make_run(user: Any) -> Run:
    config, _ = ModelConfig.objects.get_or_create(
        name="Demo", defaults={"litellm_model": "demo/tollgate"}
    )
    conversation = Conversation.objects.create(owner=user, model_config=config, title="t")
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="hi"
    )
    return Run.objects.create(conversation=conversation, user_message=message)


@pytest.fixture
def run(user) -> Run:
    return make_run(user)


@pytest.fixture
def make_tool() -> Iterator[Callable[..., ToolSpec]]:
    """Register a tool from a function for one test (and sync its Tool row)."""
    names: list[str] = []

    def factory(fn: Callable[..., Any], *, name: str, sync: bool = True, **options: Any):
        spec = spec_from_function(fn, name=name, **options)
        registry.register(spec)
        names.append(name)
        if sync:
            tools_sync()
        return spec

    yield factory
    for name in names:
        registry.unregister(name)


def call(name: str, *, user_id: int, **arguments: Any) -> Any:
    """Call a registered tool's handler directly (validation + handler, no invocation row)."""
    spec = registry.get(name)
    assert spec is not None
    return async_to_sync(spec.handler)(arguments, ToolContext(user_id=user_id))


def approved_invocation(
    run: Run, *, tool_name: str, arguments: dict[str, Any] | None = None, call_id: str = "c1"
) -> ToolInvocation:
    """Record one call of ``tool_name`` on ``run`` and approve it, as the gate would."""
    import json

    spec = registry.get(tool_name)
    assert spec is not None
    (invocation,) = invocations_record(
        run_id=run.pk,
        message_id=None,
        user_id=run.conversation.owner_id,
        conversation_id=run.conversation_id,
        tool_calls=[
            {
                "id": call_id,
                "type": "function",
                "function": {"name": spec.wire_name, "arguments": json.dumps(arguments or {})},
            }
        ],
    )
    assert invocation.status == ToolInvocation.Status.REQUESTED, invocation.result
    return invocation_mark(invocation_id=invocation.pk, status=ToolInvocation.Status.APPROVED)
