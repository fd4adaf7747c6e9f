"""Compare over the page's WebSocket (issue 24): the composer's frame with its
Compare toggle and models is validated, refused in words with the text kept, and
cannot reach another user's conversation."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from conversations.models import Message, Run
from tests.conversations.test_consumer import ORIGIN, communicator, session_cookie
from tests.factories import ModelConfigFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _served_origin(settings):
    settings.TOLLGATE_WEBSOCKET_ORIGINS = [ORIGIN.decode()]


@pytest.fixture
def cookie(client, user) -> bytes:
    return session_cookie(client, user)


@pytest.fixture
def other_cookie(other_user) -> bytes:
    from django.test import Client

    return session_cookie(Client(), other_user)


@pytest.fixture
def no_dispatch(monkeypatch):
    """Runs are not sent to a worker: only the consumer's answer is under test."""
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", lambda run_id: None)


def _frame(conversation_id: int, models, *, compare: str = "on") -> str:
    return json.dumps(
        {
            "type": "message.send",
            "conversation_id": conversation_id,
            "content": "my careful question",
            "compare": compare,
            "compare_models": models,
        }
    )


async def _answer(cookie_value: bytes, conversation_id: int, frame: str) -> str:
    ws = communicator(f"/ws/?conversation={conversation_id}", cookie_value)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=frame)
    reply = await ws.receive_from(timeout=5)
    await ws.disconnect()
    return reply


@database_sync_to_async
def _models(count: int) -> list[int]:
    return [ModelConfigFactory(name=f"Demo {i}").pk for i in range(count)]


@database_sync_to_async
def _counts() -> tuple[int, int]:
    return Message.objects.count(), Run.objects.count()


@pytest.mark.parametrize(
    ("models", "error"),
    [
        (1, "Pick 2 to 6 models to compare (1 picked)."),
        (7, "Pick 2 to 6 models to compare (7 picked)."),
        ("x", "compare_models"),
        ("many", "compare_models"),
    ],
)
async def test_a_compare_frame_that_cannot_start_is_refused_and_its_text_kept(
    cookie, conversation, no_dispatch, models, error
):
    if models == "x":
        ids: object = ["x", "y"]
    elif models == "many":
        ids = list(range(1, 60))
    else:
        ids = await _models(models)
    reply = await _answer(cookie, conversation.pk, _frame(conversation.pk, ids))
    assert error in reply
    assert 'data-composer="refused"' in reply
    assert await _counts() == (0, 0)


async def test_one_id_alone_is_read_as_a_list_and_compare_off_sends_a_plain_message(
    cookie, conversation, no_dispatch
):
    [one] = await _models(1)
    reply = await _answer(cookie, conversation.pk, _frame(conversation.pk, one))
    assert "(1 picked)" in reply
    reply = await _answer(cookie, conversation.pk, _frame(conversation.pk, [one], compare=""))
    assert 'data-composer="sent"' in reply
    kinds = await database_sync_to_async(lambda: list(Run.objects.values_list("kind", flat=True)))()
    assert kinds == [Run.Kind.ANSWER]


async def test_a_compare_frame_starts_the_compare_run_and_its_parts(
    cookie, conversation, no_dispatch
):
    ids = await _models(3)
    reply = await _answer(cookie, conversation.pk, _frame(conversation.pk, ids))
    assert 'data-composer="sent"' in reply
    run = await Run.objects.aget(kind=Run.Kind.COMPARE)
    parts = await database_sync_to_async(
        lambda: list(run.parts.order_by("position").values_list("model_config_id", flat=True))
    )()
    assert parts == ids


async def test_a_compare_frame_to_another_users_conversation_is_refused(
    other_cookie, conversation, no_dispatch
):
    ids = await _models(2)
    ws = communicator("/ws/", other_cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=_frame(conversation.pk, ids))
    reply = await ws.receive_from(timeout=5)
    await ws.disconnect()
    assert "Conversation not found." in reply
    assert await _counts() == (0, 0)
