"""Fixtures for the conversations tests (PostgreSQL, Redis, the demo model, llmock)."""

from __future__ import annotations

import pytest

from conversations.models import Conversation, Message, ModelConfig, Run
from tests.factories import ConversationFactory, ModelConfigFactory


@pytest.fixture(autouse=True)
def _fast_demo(monkeypatch):
    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "0")


@pytest.fixture
def demo_model(db) -> ModelConfig:
    """The offline demo model, free (transactional tests truncate tables, so the data
    migration's row may be gone: the factory gets it, or makes it the default)."""
    return ModelConfigFactory(is_default=True)


@pytest.fixture
def conversation(user, demo_model) -> Conversation:
    return ConversationFactory(owner=user, model_config=demo_model)


@pytest.fixture
def mock_model(db, llmock) -> ModelConfig:
    """A ModelConfig pointing at the llmock server (a real OpenAI-compatible HTTP server)."""
    return ModelConfig.objects.create(
        name="Mock GPT",
        litellm_model="openai/gpt-4o-mini",
        api_base=llmock.base_url("openai"),
        api_key_env="OPENAI_API_KEY",
    )


def add_turns(conversation: Conversation, count: int) -> None:
    """``count`` user/assistant pairs of history."""
    rows = []
    for i in range(count):
        rows.append(
            Message(conversation=conversation, role=Message.Role.USER, content=f"question {i}")
        )
        rows.append(
            Message(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                content=f"answer **{i}**",
                prompt_tokens=10,
                completion_tokens=5,
            )
        )
    Message.objects.bulk_create(rows)


def send(conversation: Conversation, content: str) -> Run:
    """Post ``content`` as the conversation's owner; the new run (not yet advanced)."""
    from conversations import services

    return services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content=content
    )


async def advance_and_push(*, run_id: int, worker: str) -> None:
    """One ``run_advance``, then its browser pushes: the caller's loop ends after this."""
    from conversations.engine import run_advance
    from project.pushes import pushes_drain

    try:
        await run_advance(run_id=run_id, worker=worker)
    finally:
        await pushes_drain()


def drive(run: Run, *, limit: int = 12) -> Run:
    """Advance the run step by step, as dispatched steps would, until it waits
    for a person or ends."""
    from asgiref.sync import async_to_sync

    for _ in range(limit):
        async_to_sync(advance_and_push)(run_id=run.pk, worker="test-worker")
        run.refresh_from_db()
        if run.is_terminal or run.status == Run.Status.AWAITING_APPROVAL:
            return run
    raise AssertionError(f"run {run.pk} still {run.status} after {limit} steps")


def drive_approved_tool_call(conversation: Conversation) -> Run:
    """A run of ``conversation`` whose one tool call (``notes.delete``) asks a person,
    approved by its owner, driven to its end: the path loop events, metrics and traces
    are checked on. Call inside ``django_capture_on_commit_callbacks`` to see what the
    commits would send."""
    from approvals.models import ApprovalRequest
    from approvals.services import approval_decide
    from tools.models import Note
    from tools.services import tools_sync

    tools_sync()
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday")
    run = drive(send(conversation, "forget the meeting"))
    assert run.status == Run.Status.AWAITING_APPROVAL, run.error
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    approval_decide(
        approval_id=approval.pk,
        actor=conversation.owner,
        approve=True,
        arguments_hash=approval.arguments_hash,
    )
    run = drive(run)
    assert run.status == Run.Status.COMPLETED, run.error
    return run
