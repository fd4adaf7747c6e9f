"""The page WebSocket through the full ASGI application (origin check, session
auth, URL router) with the Redis channel layer."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections

from conversations import dispatch
from conversations.models import Conversation, Message, Run
from project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(client, user) -> bytes:
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


ORIGIN = b"https://tollgate.example.com"


@pytest.fixture(autouse=True)
def _served_origin(settings):
    """The deployment serves its pages at ``ORIGIN`` only."""
    settings.TOLLGATE_WEBSOCKET_ORIGINS = [ORIGIN.decode()]


def communicator(path: str, cookie: bytes | None, origin: bytes | None = ORIGIN):
    headers = [(b"host", b"tollgate.example.com")]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.fixture
def cookie(client, user) -> bytes:
    return session_cookie(client, user)


@pytest.fixture
def other_cookie(other_user) -> bytes:
    from django.test import Client

    return session_cookie(Client(), other_user)


async def test_anonymous_is_rejected():
    ws = communicator("/ws/", None)
    connected, code = await ws.connect()
    assert not connected
    assert code == 4401


async def test_the_exact_served_origin_is_accepted(cookie):
    ws = communicator("/ws/", cookie, origin=ORIGIN)
    connected, _ = await ws.connect()
    assert connected
    await ws.disconnect()


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(b"http://tollgate.example.com", id="other-scheme"),
        pytest.param(b"https://tollgate.example.com:8443", id="other-port"),
        pytest.param(b"https://evil.example", id="other-host"),
        pytest.param(b"https://sub.tollgate.example.com", id="subdomain"),
        pytest.param(b"null", id="opaque"),
        pytest.param(None, id="missing"),
    ],
)
async def test_a_logged_in_socket_from_another_origin_is_refused(cookie, origin):
    ws = communicator("/ws/", cookie, origin=origin)
    connected, _ = await ws.connect()
    assert not connected


async def test_the_same_host_on_other_loopback_ports_and_schemes_is_refused(cookie, settings):
    settings.TOLLGATE_WEBSOCKET_ORIGINS = ["http://127.0.0.1:8000"]
    served = communicator("/ws/", cookie, origin=b"http://127.0.0.1:8000")
    assert (await served.connect())[0]
    await served.disconnect()
    for origin in (b"https://127.0.0.1:8000", b"http://127.0.0.1:1", b"http://127.0.0.1"):
        connected, _ = await communicator("/ws/", cookie, origin=origin).connect()
        assert not connected, origin


async def test_cannot_join_another_users_conversation(other_cookie, conversation):
    ws = communicator(f"/ws/?conversation={conversation.pk}", other_cookie)
    connected, code = await ws.connect()
    assert not connected
    assert code == 4403
    ws = communicator("/ws/?conversation=abc", other_cookie)
    connected, code = await ws.connect()
    assert not connected


async def test_groups_joined_receive_pushes(cookie, user, conversation, other_user, demo_model):
    other = await database_sync_to_async(Conversation.objects.create)(
        owner=other_user, model_config=demo_model
    )
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    connected, _ = await ws.connect()
    assert connected
    layer = get_channel_layer()
    await layer.group_send(f"conversation.{other.pk}", {"type": "html.push", "html": "<p>x</p>"})
    await layer.group_send(f"user.{other_user.pk}", {"type": "html.push", "html": "<p>y</p>"})
    await layer.group_send(f"user.{user.pk}", {"type": "html.push", "html": '<p id="u">mine</p>'})
    await layer.group_send(
        f"conversation.{conversation.pk}", {"type": "html.push", "html": '<p id="c">conv</p>'}
    )
    assert await ws.receive_from(timeout=5) == '<p id="u">mine</p>'
    assert await ws.receive_from(timeout=5) == '<p id="c">conv</p>'
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_push_is_forwarded_without_a_hop_to_a_database_thread(
    cookie, conversation, monkeypatch
):
    """Channels closes stale connections (a thread hop) before every handler; a push
    touches no database, so the page's consumer forwards it without one."""
    import channels.consumer

    hops = []

    async def counted() -> None:
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    connected, _ = await ws.connect()
    assert connected
    hops.clear()
    await get_channel_layer().group_send(
        f"conversation.{conversation.pk}", {"type": "html.push", "html": '<p id="c">x</p>'}
    )
    assert await ws.receive_from(timeout=5) == '<p id="c">x</p>'
    assert hops == []
    await ws.send_to(text_data="not json")  # a frame from the page: Channels' dispatch
    assert "error" in (await ws.receive_from(timeout=5)).lower()
    assert hops == [1]
    await ws.disconnect()


@pytest.fixture
def no_dispatch(monkeypatch):
    """Runs a test starts are not sent to a worker: only the consumer's answer is under test."""
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", lambda run_id: None)


def _send(conversation_id: object, content: object) -> str:
    return json.dumps(
        {"type": "message.send", "conversation_id": conversation_id, "content": content}
    )


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{not json", "cannot be read. Not valid JSON"),
        ('{"type": "explode"}', "Unknown request type &#x27;explode&#x27;."),
        ('{"type": []}', "Unknown request type &#x27;[]&#x27;."),
        ('{"type": {"a": 1}}', "Unknown request type"),
        ('{"run_id": 1}', "The request has no type."),
        ("[1, 2]", "A request must be a JSON object."),
        ('{"type": "message.send", "conversation_id": "x", "content": "hi"}', "conversation_id"),
        ('{"type": "run.cancel"}', "run_id: Field required"),
        ('{"type": "run.cancel", "run_id": "²"}', "run_id: Expected an id"),
        ('{"type": "run.cancel", "run_id": "\u0661"}', "run_id: Expected an id"),
        ('{"type": "run.cancel", "run_id": true}', "run_id: Expected an id"),
        ('{"type": "run.cancel", "run_id": 1.0}', "run_id: Expected an id"),
        ('{"type": "run.cancel", "run_id": 9223372036854775808}', "run_id: Expected an id"),
        ('{"type": "run.cancel", "run_id": NaN}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"type": "run.cancel", "run_id": 1e999}', "a number is too large to hold"),
        ("[" * 100_000 + "]" * 100_000, "nested more than 4 levels deep"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested more than 4 levels deep"),
        ('{"type": "run.cancel", "run_id": 1, "x": [[[[[]]]]]}', "nested more than 4 levels"),
        (r'{"type": "run.cancel", "run_id": 1, "x": "\ud800"}', "hex escape"),
        ("x" * 1_000_001, "Too long: 1,000,001 characters"),
        (_send(1, ["hi"]), "content: Input should be a valid string"),
    ],
)
async def test_malformed_frames_get_an_error_and_change_nothing(
    cookie, conversation, frame, error, no_dispatch
):
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=frame)
    reply = await ws.receive_from(timeout=5)
    assert 'id="chat-errors"' in reply
    assert 'hx-swap-oob="outerHTML"' in reply
    assert error in reply
    assert len(reply) < 1000  # the message, not the frame
    assert await database_sync_to_async(Message.objects.count)() == 0
    # The socket is still open and still does what it is for.
    await ws.send_to(text_data=_send(conversation.pk, "Hello"))
    reply = await ws.receive_from(timeout=5)
    assert 'id="chat-errors"' in reply and "error-box" not in reply
    assert 'data-composer="sent"' in reply  # the page clears the composer now
    assert await database_sync_to_async(Message.objects.count)() == 1
    await ws.disconnect()


async def test_a_binary_frame_is_refused(cookie, conversation, caplog):
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(bytes_data=_send(conversation.pk, "hi").encode())
    assert "Binary frames are not supported." in await ws.receive_from(timeout=5)
    await ws.disconnect()
    assert [r.levelname for r in caplog.records if r.name == "conversations.consumers"] == [
        "WARNING"
    ]


@pytest.mark.parametrize(
    "content", ["a\x00b", "\x00", "line one\n\x00<b>two</b>"], ids=["inside", "only", "html"]
)
async def test_a_message_with_a_nul_character_is_refused_and_its_text_put_back(
    cookie, conversation, content, caplog
):
    """The answer says the message was refused: the page keeps the text in the
    composer (it clears it only for an answer that says "sent")."""
    typed = content
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=_send(conversation.pk, typed))
    reply = await ws.receive_from(timeout=5)
    assert "content: Null characters are not allowed." in reply
    assert 'id="chat-errors"' in reply and 'data-composer="refused"' in reply
    assert "textarea" not in reply  # nothing to put back: the page kept it
    assert await database_sync_to_async(Message.objects.count)() == 0
    await ws.disconnect()
    records = [r for r in caplog.records if r.name == "conversations.consumers"]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]


async def test_a_message_refused_for_the_state_gets_its_text_back(
    cookie, conversation, no_dispatch
):
    """A reply still being written: the new message is refused and kept in the composer."""
    from conversations import services

    await database_sync_to_async(services.message_send)(
        user=conversation.owner, conversation_id=conversation.pk, content="first"
    )
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=_send(conversation.pk, "my long second thought"))
    reply = await ws.receive_from(timeout=5)
    assert "A reply is still being written." in reply
    assert 'data-composer="refused"' in reply
    await ws.disconnect()


@pytest.mark.parametrize(
    "query",
    ["²", "\u0661", "-1", "0", "99999999999999999999999", "abc", "%00", "1e3", "+1", "%201"],
)
async def test_a_conversation_that_is_not_an_id_is_refused_at_connect(cookie, conversation, query):
    query = query.replace("1", str(conversation.pk)) if query in ("+1", "%201") else query
    ws = communicator(f"/ws/?conversation={query}", cookie)
    connected, code = await ws.connect()
    assert not connected
    assert code == 4403


async def test_send_to_another_users_conversation_is_refused(other_cookie, conversation):
    ws = communicator("/ws/", other_cookie)
    assert (await ws.connect())[0]
    await ws.send_to(
        text_data=json.dumps(
            {"type": "message.send", "conversation_id": conversation.pk, "content": "hi"}
        )
    )
    reply = await ws.receive_from(timeout=5)
    assert "Conversation not found." in reply
    assert await database_sync_to_async(Message.objects.count)() == 0
    await ws.disconnect()


async def test_empty_message_is_refused(cookie, conversation):
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(
        text_data=json.dumps(
            {
                "type": "message.send",
                "conversation_id": str(conversation.pk),
                "content": "  ",
                "HEADERS": {"HX-Request": "true"},
            }
        )
    )
    assert "Type a message first." in await ws.receive_from(timeout=5)
    await ws.disconnect()


async def test_message_send_streams_reply_in_process(cookie, conversation, settings):
    """message.send over the socket → run dispatched in this event loop → frames."""
    settings.TOLLGATE_DISPATCHER = "inprocess"
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    try:
        await ws.send_to(
            text_data=json.dumps(
                {
                    "type": "message.send",
                    "conversation_id": conversation.pk,
                    "content": "Hello there, demo",
                }
            )
        )
        frames: list[str] = []
        while True:
            frame = await ws.receive_from(timeout=20)
            frames.append(frame)
            if "run-completed" in frame or "run-failed" in frame:
                break
        run = await database_sync_to_async(Run.objects.get)(conversation=conversation)
        answer = await database_sync_to_async(Message.objects.get)(run=run)
        assert run.status == Run.Status.COMPLETED
        joined = "\n".join(frames)
        assert 'hx-swap-oob="beforeend:#messages"' in joined  # user message + run block
        assert f'id="run-{run.pk}"' in joined
        assert f'hx-swap-oob="beforeend:#run-{run.pk}-messages"' in joined
        body = f'<div id="message-{answer.pk}-body" class="msg-body" hx-swap-oob="outerHTML">'
        tail = f'<div id="message-{answer.pk}-tail" class="msg-tail" hx-swap-oob="outerHTML">'
        blocks = f'<div hx-swap-oob="beforeend:#message-{answer.pk}-blocks">'
        stream_frames = [f for f in frames if f.lstrip().startswith((body, tail, blocks))]
        assert stream_frames[0].startswith(body)  # a keyframe (the whole body) first
        assert all(body in f or tail in f for f in stream_frames)  # then tails replaced
        assert "offline demo model" in joined
        assert f'id="message-{answer.pk}" class="msg msg-assistant msg-complete"' in joined
    finally:
        for _ in range(100):
            if not dispatch._tasks:
                break
            await asyncio.sleep(0.05)
        for task in list(dispatch._recovery.values()):
            task.cancel()
        await ws.disconnect()
        # The engine ran in asgiref's shared sync thread: close its connection so
        # the test database can be dropped.
        await sync_to_async(connections.close_all)()


async def _frame_with(ws, text: str, *, frames: int = 10) -> str:
    """The first of the next ``frames`` frames that contains ``text`` (pushes made on
    commit before the socket joined its groups may still arrive first)."""
    seen = []
    for _ in range(frames):
        frame = await ws.receive_from(timeout=5)
        if text in frame:
            return frame
        seen.append(frame[:120])
    raise AssertionError(f"no frame with {text!r} among {seen}")


@database_sync_to_async
def _pending_approval(conversation):
    from tests.conversations.test_toolphase import _pending_delete
    from tools.services import tools_sync

    tools_sync()
    _run, approval = _pending_delete(conversation)
    return approval


async def test_approval_decided_over_the_socket_by_its_owner_only(
    cookie, other_cookie, conversation
):
    from approvals.models import ApprovalRequest

    approval = await _pending_approval(conversation)
    frame = {
        "type": "approval.decide",
        "approval_id": approval.pk,
        "decision": "approve",
        "arguments_hash": approval.arguments_hash,
    }

    stranger = communicator("/ws/", other_cookie)
    assert (await stranger.connect())[0]
    await stranger.send_to(text_data=json.dumps(frame))
    reply = await stranger.receive_from(timeout=5)
    assert "chat-errors" in reply and "error-box" in reply
    await stranger.disconnect()
    await sync_to_async(approval.refresh_from_db)()
    assert approval.status == ApprovalRequest.Status.PENDING

    owner = communicator("/ws/", cookie)
    assert (await owner.connect())[0]
    await owner.send_to(text_data=json.dumps({**frame, "arguments_hash": "0" * 64}))
    reply = await owner.receive_from(timeout=5)
    assert "error-box" in reply  # bound to the exact arguments shown
    await sync_to_async(approval.refresh_from_db)()
    assert approval.status == ApprovalRequest.Status.PENDING

    await owner.send_to(text_data=json.dumps(frame))
    for _ in range(10):  # the card/badge pushes and the cleared error box arrive
        await sync_to_async(approval.refresh_from_db)()
        if approval.status != ApprovalRequest.Status.PENDING:
            break
        await owner.receive_from(timeout=5)
    assert approval.status == ApprovalRequest.Status.APPROVED
    assert approval.decided_by_id == conversation.owner_id
    await owner.disconnect()


async def test_stop_and_approve_that_lost_are_told_what_happened(cookie, conversation, no_dispatch):
    """A reply already stopped, an approval already cancelled by that Stop: each
    refusal says what happened, and the socket goes on."""
    from approvals.models import ApprovalRequest
    from conversations import services

    approval = await _pending_approval(conversation)
    await database_sync_to_async(services.run_cancel)(
        user=conversation.owner, run_id=approval.run_id
    )
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=json.dumps({"type": "run.cancel", "run_id": approval.run_id}))
    await _frame_with(ws, "This reply has already been stopped.")
    await ws.send_to(
        text_data=json.dumps(
            {
                "type": "approval.decide",
                "approval_id": approval.pk,
                "decision": "approve",
                "arguments_hash": approval.arguments_hash,
            }
        )
    )
    await _frame_with(ws, "This approval is already cancelled.")
    await sync_to_async(approval.refresh_from_db)()
    assert approval.status == ApprovalRequest.Status.CANCELLED
    await ws.send_to(text_data=_send(conversation.pk, "Hello"))
    reply = await _frame_with(ws, 'id="chat-errors"')
    assert "error-box" not in reply
    await ws.disconnect()


async def test_a_message_sent_is_the_first_span_of_its_runs_trace(
    cookie, conversation, no_dispatch, monkeypatch
):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from conversations.tracing import run_context, run_trace_ids

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    ws = communicator(f"/ws/?conversation={conversation.pk}", cookie)
    assert (await ws.connect())[0]
    await ws.send_to(text_data=_send(conversation.pk, "trace me"))
    await ws.receive_output(timeout=5)
    await ws.disconnect()
    run = await Run.objects.aget(conversation=conversation)
    (span,) = spans.get_finished_spans()
    trace_id, root_id = run_trace_ids(run.pk)
    assert span.name == "chat.message"
    assert (span.context.trace_id, span.parent.span_id) == (trace_id, root_id)
    assert span.attributes["tollgate.conversation_id"] == conversation.pk
    # A step sent to a worker carries that trace (the task's headers take the current one).
    with run_context(run.pk):
        assert trace.get_current_span().get_span_context().trace_id == trace_id
    assert trace.get_current_span().get_span_context().trace_id != trace_id
