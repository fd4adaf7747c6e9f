"""Context-window trimming, history building and delta coalescing."""

from __future__ import annotations

import pytest

from conversations.context import context_fit
from conversations.gateway import GatewayError

MODEL = "gpt-4o-mini"


def call(call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "t", "arguments": "{}"}}


def history(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question number {i} " + "word " * 30})
        messages.append({"role": "assistant", "content": f"answer number {i} " + "word " * 30})
    return messages


def test_fits_untouched():
    messages = history(2)
    fit = context_fit(messages=messages, model=MODEL, context_window=8000, max_output_tokens=500)
    assert fit.messages == messages
    assert fit.dropped == 0


def test_drops_oldest_keeps_system_and_newest():
    messages = history(20)
    fit = context_fit(messages=messages, model=MODEL, context_window=600, max_output_tokens=200)
    assert fit.dropped > 0
    assert fit.messages[0] == messages[0]
    assert fit.messages[-1] == messages[-1]
    assert fit.messages[1:] == messages[1 + fit.dropped :]
    assert fit.prompt_tokens + 200 <= 600


def test_never_splits_a_tool_call_from_its_results():
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "old " * 200},
        {"role": "assistant", "content": None, "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": "result a " * 50},
        {"role": "tool", "tool_call_id": "b", "content": "result b " * 50},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "new question"},
    ]
    for window in range(150, 700, 25):
        try:
            fit = context_fit(
                messages=messages, model=MODEL, context_window=window, max_output_tokens=50
            )
        except GatewayError:
            continue
        kept = fit.messages
        assert kept[0]["role"] == "system"
        roles = [m["role"] for m in kept]
        if "tool" in roles:
            first_tool = roles.index("tool")
            assert kept[first_tool - 1].get("tool_calls"), (window, roles)
            assert roles.count("tool") == 2
        assert kept[-1]["content"] == "new question"


def test_too_long_even_alone_is_a_named_error():
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "word " * 2000}]
    with pytest.raises(GatewayError) as excinfo:
        context_fit(messages=messages, model=MODEL, context_window=1000, max_output_tokens=100)
    assert excinfo.value.kind == "context_too_long"


@pytest.mark.django_db
def test_history_pairs_tool_calls_with_results(conversation):
    from conversations.engine import history_messages
    from conversations.models import Message

    M = Message.Role
    Message.objects.create(conversation=conversation, role=M.USER, content="q1")
    Message.objects.create(
        conversation=conversation, role=M.ASSISTANT, content="", tool_calls=[call("x")]
    )  # its result never arrived
    Message.objects.create(conversation=conversation, role=M.USER, content="q2")
    Message.objects.create(
        conversation=conversation, role=M.ASSISTANT, content="", tool_calls=[call("y")]
    )
    Message.objects.create(conversation=conversation, role=M.TOOL, tool_call_id="y", content="ok")
    Message.objects.create(
        conversation=conversation, role=M.ASSISTANT, content="oops", status="failed"
    )
    out = history_messages(conversation=conversation)
    assert [m["role"] for m in out] == ["system", "user", "user", "assistant", "tool"]
    assert out[3]["tool_calls"] == [call("y")]
    assert out[4] == {"role": "tool", "tool_call_id": "y", "content": "ok"}


async def test_stream_publisher_coalesces_deltas_into_frames(settings):
    from channels.layers import get_channel_layer

    from conversations.events import StreamPublisher

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.999999", channel)
    persisted: list[str] = []

    async def on_flush(text: str) -> None:
        persisted.append(text)

    publisher = StreamPublisher(message_id=5, conversation_id=999999, on_flush=on_flush)
    words = [f"w{i} " for i in range(300)]
    for word in words:
        await publisher.feed(word)
    await publisher.close()
    assert persisted[-1] == "".join(words)
    assert publisher.frames < len(words) / 10  # coalesced, not one frame per delta
    received = [await layer.receive(channel) for _ in range(publisher.frames)]
    assert all(frame["type"] == "html.push" for frame in received)
    assert received[0]["html"].startswith('<div id="message-5-body"')  # a keyframe first
    last = received[-1]["html"]
    # One paragraph: the unfinished tail, which a frame replaces whole.
    assert last.startswith(('<div id="message-5-tail"', '<div id="message-5-body"'))
    assert "w0 w1" in last and "w299" in last
    await layer.group_discard("conversation.999999", channel)


def test_token_counts_are_litellms_and_counted_once_per_message():
    import litellm

    from conversations.context import _tokens, token_count

    message = {"role": "user", "content": "count me once, please"}
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    model = "gpt-4o-mini"
    assert token_count(model=model, message=message) == litellm.token_counter(
        model=model, messages=[message]
    )
    assert token_count(model=model, tools=tools) == litellm.token_counter(
        model=model, messages=[], tools=tools
    )
    hits = _tokens.cache_info().hits
    token_count(model=model, message=dict(reversed(message.items())))  # same message
    assert _tokens.cache_info().hits == hits + 1
    changed = {**message, "content": "count me once, please!"}
    assert token_count(model=model, message=changed) >= token_count(model=model, message=message)
    assert _tokens.cache_info().hits == hits + 2  # the second call for `message`, not `changed`
