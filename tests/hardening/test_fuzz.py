"""Malformed input from outside, against the production topology (issue 20).

A logged-in user sends the fixed corpus of ``corpus.py``: over 300 malformed
WebSocket frames across every inbound message type, and malformed form posts
(and the GETs that take input) across every endpoint. Every one must be
refused with a message: an error frame (the page's error box) on the socket,
a 4xx answer over HTTP. Nothing may answer 5xx, the socket must stay open and
answer a valid frame afterwards, and the web and worker logs must hold no
traceback and no ERROR line.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from tests.hardening import corpus
from tests.hardening.visitor import Visitor, error_text
from tests.topology import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_MESSAGE_CHARS = 100_000  # settings.TOLLGATE_MAX_MESSAGE_CHARS in the stack


def _log_offsets(stack: Stack) -> dict[str, int]:
    return {name: stack.logs[name].stat().st_size for name in ("web", "worker")}


def _log_problems(stack: Stack, offsets: dict[str, int]) -> list[str]:
    """Lines with a traceback or an ERROR written to the web and worker logs since."""
    problems = []
    for name, offset in offsets.items():
        with stack.logs[name].open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        for line in text.splitlines():
            if "Traceback" in line or "ERROR" in line:
                problems.append(f"{name}: {line[:300]}")
    return problems


def _poll(stack: Stack, query: str, params: tuple, *, what: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = stack.sql(query, params)
        if rows:
            return rows[0][0]
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s\n{stack.log_tails()}")


async def _ask_for_approval(visitor: Visitor) -> tuple[int, int, int]:
    """A new conversation whose run waits at the gate: (conversation, run, approval) ids."""
    conversation = await visitor.conversation_new()
    sent = await visitor.post(f"/c/{conversation}/send", {"content": "forget the meeting"})
    assert sent.status_code == 302, sent.text[:300]
    approval = await asyncio.to_thread(
        _poll,
        visitor.stack,
        "SELECT id FROM approvals_approvalrequest"
        " WHERE conversation_id = %s AND status = 'pending'",
        (conversation,),
        what="no approval request",
    )
    run = visitor.stack.sql(
        "SELECT run_id FROM approvals_approvalrequest WHERE id = %s", (approval,)
    )[0][0]
    return conversation, run, approval


async def _setup(fuzzer: Visitor, other: Visitor) -> corpus.Ids:
    conversation = await fuzzer.conversation_new()
    socket = await fuzzer.socket(conversation)
    answer = await socket.answer(
        {"type": "message.send", "conversation_id": conversation, "content": "Hello"}
    )
    assert error_text(answer) == "", answer
    await socket.until(lambda text: "run-completed" in text)
    await socket.close()
    finished = fuzzer.stack.sql(
        "SELECT id FROM conversations_run WHERE conversation_id = %s", (conversation,)
    )[0][0]
    archived = await fuzzer.conversation_new()
    answer_ = await fuzzer.post(f"/c/{archived}/archive", {"archived": "1"})
    assert answer_.status_code == 302
    _, _, approval = await _ask_for_approval(fuzzer)
    other_conversation, other_run, other_approval = await _ask_for_approval(other)
    return corpus.Ids(
        conversation=conversation,
        archived=archived,
        finished_run=finished,
        approval=approval,
        other_conversation=other_conversation,
        other_run=other_run,
        other_approval=other_approval,
    )


async def _fuzz_frames(fuzzer: Visitor, ids: corpus.Ids, report: dict[str, list[str]]) -> int:
    cases = corpus.frames(ids)
    socket = await fuzzer.socket(ids.conversation)
    for label, frame in cases:
        try:
            answer = await socket.answer(frame, wait=5)
        except websockets.ConnectionClosed as closed:
            report["socket closed"].append(f"{label}: {closed.rcvd}")
            socket = await fuzzer.socket(ids.conversation)
            continue
        except TimeoutError:
            report["no answer"].append(label)
            continue
        message = error_text(answer)
        if not message:
            report["accepted"].append(label)
        elif len(message) > 400 or "Traceback" in message:
            report["unreadable message"].append(f"{label}: {message[:200]}")
    # Still open, and it still does what it is for.
    answer = await socket.answer(
        {"type": "message.send", "conversation_id": ids.conversation, "content": "Hello again"}
    )
    if error_text(answer):
        report["valid frame refused"].append(error_text(answer))
    await socket.until(lambda text: "run-completed" in text)
    await socket.close()
    return len(cases)


async def _oversized_frame(fuzzer: Visitor, ids: corpus.Ids, report: dict[str, list[str]]) -> None:
    """Over daphne's 1 MiB message limit (``--websocket-max-message-size``), the
    transport drops the connection (autobahn's ``failByDrop``: no close frame, or
    1009 "message too big") before the application sees the frame; the user's
    other sockets and the session are untouched."""
    bystander = await fuzzer.socket(ids.conversation)
    socket = await fuzzer.socket(ids.conversation)
    try:
        await socket.answer("x" * 2_000_000, wait=10)
        report["accepted"].append("oversized frame")
    except websockets.ConnectionClosed as closed:
        if closed.rcvd is not None and closed.rcvd.code != 1009:
            report["socket closed"].append(f"oversized frame: {closed.rcvd}")
    answer = await bystander.answer({"type": "run.cancel", "run_id": ids.finished_run})
    if "already finished" not in error_text(answer):
        report["valid frame refused"].append(f"after the oversized frame: {answer[:200]}")
    await bystander.close()


async def _fuzz_connects(fuzzer: Visitor, ids: corpus.Ids, report: dict[str, list[str]]) -> int:
    queries = corpus.socket_queries(ids)
    url = fuzzer.stack.base_url.replace("http://", "ws://") + "/ws/?"
    for query in queries:
        try:
            connection = await websockets.connect(
                url + query,
                additional_headers={"Cookie": f"sessionid={fuzzer.http.cookies['sessionid']}"},
                origin=fuzzer.stack.base_url,  # type: ignore[arg-type]
                open_timeout=30,
            )
        except websockets.InvalidStatus as refused:
            if refused.response.status_code >= 500:
                report["5xx"].append(f"connect {query}: {refused.response.status_code}")
            continue
        try:
            async with asyncio.timeout(5):
                await connection.recv()
            report["connect accepted"].append(query)
        except TimeoutError:
            report["connect accepted"].append(query)
        except websockets.ConnectionClosed as closed:
            if closed.rcvd is None or closed.rcvd.code != 4403:
                report["connect closed oddly"].append(f"{query}: {closed.rcvd}")
        finally:
            await connection.close()
    return len(queries)


async def _fuzz_posts(fuzzer: Visitor, ids: corpus.Ids, report: dict[str, list[str]]) -> int:
    cases = corpus.posts(ids, max_chars=MAX_MESSAGE_CHARS)
    for case in cases:
        kwargs: dict = {}
        if case.content is not None:
            kwargs["content"] = case.content
            headers = fuzzer.headers(htmx=case.htmx)
            headers["content-type"] = case.content_type
            answer = await fuzzer.http.request(case.method, case.path, headers=headers, **kwargs)
        elif case.method == "GET":
            answer = await fuzzer.get(case.path, htmx=case.htmx, params=case.data)
        else:
            answer = await fuzzer.post(case.path, case.data, htmx=case.htmx)
        status = answer.status_code
        if status >= 500:
            report["5xx"].append(f"{case.label}: {status}")
        elif case.bad and not 300 <= status < 500:
            report["bad input accepted"].append(f"{case.label}: {status}")
        elif 400 <= status < 500 and not answer.text.strip():
            report["4xx without a message"].append(f"{case.label}: {status}")
    return len(cases)


async def test_malformed_input_gets_a_message_and_nothing_else(stack: Stack):
    stamp = time.time_ns()
    fuzzer = await Visitor(stack, f"fuzz-{stamp}@example.com").sign_up()
    other = await Visitor(stack, f"other-{stamp}@example.com").sign_up()
    report: dict[str, list[str]] = {
        key: []
        for key in (
            "5xx",
            "socket closed",
            "no answer",
            "accepted",
            "unreadable message",
            "valid frame refused",
            "connect accepted",
            "connect closed oddly",
            "bad input accepted",
            "4xx without a message",
        )
    }
    try:
        ids = await _setup(fuzzer, other)
        offsets = _log_offsets(stack)
        frames = await _fuzz_frames(fuzzer, ids, report)
        await _oversized_frame(fuzzer, ids, report)
        connects = await _fuzz_connects(fuzzer, ids, report)
        posts = await _fuzz_posts(fuzzer, ids, report)
        # The user's session still works.
        page = await fuzzer.get(f"/c/{ids.conversation}/")
        assert page.status_code == 200
        await asyncio.sleep(1)  # a worker's step started by the last frame logs after it
        logs = _log_problems(stack, offsets)
    finally:
        await fuzzer.close()
        await other.close()
    assert frames >= 300
    assert posts >= 50
    found = {key: items for key, items in report.items() if items}
    summary = (
        f"{frames} frames, {connects} connects, {posts} requests: "
        + ", ".join(f"{len(items)} {key}" for key, items in found.items())
        + f", {len(logs)} traceback/ERROR log lines"
    )
    details = "\n".join(f"{key}: {items[:40]}" for key, items in found.items())
    assert not found and not logs, summary + "\n" + details + "\n" + "\n".join(logs[:60])
