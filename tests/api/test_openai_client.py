"""The API driven by the official ``openai`` client against the production topology
(daphne, a Celery worker, Celery beat; ``tests.topology``): a plain reply, streamed
and not, continued in the same conversation; a tool call that waits for a person,
approved through the approvals API by a second client while the stream stays
open (and shown decided in the requester's open page); edited arguments approved
(and checked against the tool's schema); a denial the model reads; a revoked key;
another user's approval refused with 404 by every approvals endpoint; a budget
(402) and a rate limit (429) applied as in the browser. The offline demo model
asks for ``notes.write`` on "remember that …" (not read-only: with no rule, a
person is asked).

Users sign up through the real form and make their keys on the settings page
(``tests.hardening.visitor.Visitor``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest

from tests.hardening.visitor import Visitor
from tests.topology import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "Demo (offline)"
KEY = re.compile(r'<code id="new-key-value">(tg_[A-Za-z0-9_-]+)</code>')
APPROVAL_COMMENT = re.compile(r"^: approval_required id=(\d+) tool=(\S+) url=(\S+)$")


class Member:
    """A user signed up on the stack, with the keys they made on their settings page."""

    def __init__(self, visitor: Visitor) -> None:
        self.visitor = visitor
        self.keys: dict[str, str] = {}

    async def key(self, name: str, *scopes: str) -> str:
        page = await self.visitor.post(
            "/settings/api-keys/", {"name": name, "scopes": list(scopes), "expires_in_days": ""}
        )
        assert page.status_code == 200, page.text[:500]
        found = KEY.search(page.text)
        assert found, page.text[:2000]
        self.keys[name] = found.group(1)
        return found.group(1)


async def _member(stack: Stack, prefix: str) -> Member:
    visitor = await Visitor(stack, f"{prefix}-{time.time_ns()}@example.com").sign_up()
    return Member(visitor)


def _client(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=stack.base_url + "/v1", max_retries=0)


def _http(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.base_url + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


async def _pending_approval(http: httpx.AsyncClient, *, wait: float = 60) -> dict:
    """The first pending approval request the client's user may see."""
    deadline = time.monotonic() + wait
    while True:
        answer = await http.get("/approvals", params={"status": "pending"})
        assert answer.status_code == 200, answer.text
        if answer.json()["data"]:
            return answer.json()["data"][0]
        assert time.monotonic() < deadline, "no approval request was made"
        await asyncio.sleep(0.2)


def test_models_and_a_plain_reply_with_the_sync_client(stack):
    async def signed_up() -> str:
        member = await _member(stack, "plain")
        try:
            return await member.key("laptop", "chat")
        finally:
            await member.visitor.close()

    key = asyncio.run(signed_up())
    client = openai.OpenAI(api_key=key, base_url=stack.base_url + "/v1", max_retries=0)

    assert [model.id for model in client.models.list()] == [MODEL]
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from a script"}]
    )
    text = answer.choices[0].message.content
    assert "Hello from a script" in text, text
    assert answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion" and answer.model == MODEL
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    conversation_id = answer.model_extra["tollgate_conversation_id"]
    # The same conversation goes on: the stored history is what the model reads.
    again = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "And a second question"}],
        extra_body={"tollgate_conversation_id": conversation_id},
    )
    assert again.model_extra["tollgate_conversation_id"] == conversation_id
    assert "And a second question" in again.choices[0].message.content
    rows = stack.sql(
        "SELECT r.status, m.content FROM conversations_run r"
        " JOIN conversations_message m ON m.id = r.user_message_id"
        " WHERE r.conversation_id = %s ORDER BY r.id",
        (conversation_id,),
    )
    assert rows == [("completed", "Hello from a script"), ("completed", "And a second question")]
    # Tools are the server's: a request that brings its own is refused, saying so.
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert refused.value.code == "tools_not_supported"
    assert "tools are the server's" in refused.value.message


async def test_a_streamed_reply_arrives_in_chunks_as_it_is_stored(stack):
    member = await _member(stack, "stream")
    client = _client(stack, await member.key("bot", "chat"))
    long = "Please repeat this. " + " ".join(f"word{i}" for i in range(60))
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": long}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2, pieces  # the text came as it was stored, not once at the end
    text = "".join(pieces)
    assert "offline demo model" in text
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    conversation_id = chunks[0].model_extra["tollgate_conversation_id"]
    # What streamed is what was stored; the system message is the conversation's prompt.
    [(stored, prompt)] = stack.sql(
        "SELECT m.content, c.system_prompt_text FROM conversations_message m"
        " JOIN conversations_conversation c ON c.id = m.conversation_id"
        " WHERE m.conversation_id = %s AND m.role = 'assistant'",
        (conversation_id,),
    )
    assert stored == text
    assert prompt == "Be brief."
    await member.visitor.close()


async def test_a_tool_call_waits_for_approval_given_through_the_approvals_api(stack):
    requester = await _member(stack, "approve")
    chat_key = await requester.key("chat bot", "chat")
    approvals_key = await requester.key("approvals bot", "approvals")
    page = await requester.visitor.socket()  # an open page of the requester (its user group)
    client = _client(stack, chat_key)
    async with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "remember that the meeting is on Friday"}],
        stream=True,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        comment = None
        async for line in lines:
            comment = APPROVAL_COMMENT.match(line)
            if comment:
                break
        assert comment is not None, "no approval_required comment"
        approval_id = int(comment.group(1))
        assert comment.group(2) == "notes.write"
        assert comment.group(3) == f"{stack.base_url}/approvals/{approval_id}/"

        # A second client, with a key for approvals only, approves it.
        async with _http(stack, approvals_key) as second:
            found = await _pending_approval(second)
            assert found["id"] == approval_id
            detail = (await second.get(f"/approvals/{approval_id}")).json()
            assert detail["tool"] == "notes.write"
            assert detail["arguments"]["value"] == "the meeting is on Friday"
            assert re.fullmatch(r"[0-9a-f]{64}", detail["arguments_hash"])
            assert detail["explanation"], detail
            assert detail["can_decide"] is True
            assert "next_step" in json.dumps(detail["cost_estimate"]) or detail["cost_estimate"]
            # Approving needs the hash of the arguments approved.
            wrong = await second.post(
                f"/approvals/{approval_id}/approve", json={"arguments_hash": "0" * 64}
            )
            assert wrong.status_code == 409, wrong.text
            assert wrong.json()["error"]["code"] == "approval_arguments_mismatch"
            approved = await second.post(
                f"/approvals/{approval_id}/approve",
                json={"arguments_hash": detail["arguments_hash"]},
            )
            assert approved.status_code == 200, approved.text
            assert approved.json()["status"] == "approved"
            # Exactly once: a second approval is refused.
            again = await second.post(
                f"/approvals/{approval_id}/approve",
                json={"arguments_hash": detail["arguments_hash"]},
            )
            assert again.status_code == 409
            # A chat key may not decide approvals.
            async with _http(stack, chat_key) as chat_only:
                forbidden = await chat_only.get(f"/approvals/{approval_id}")
            assert forbidden.status_code == 403
            assert forbidden.json()["error"]["code"] == "insufficient_scope"

        # The requester's open page was shown the decision, live.
        card = await page.until(
            lambda frame: f'id="approval-{approval_id}"' in frame and "Approved" in frame
        )
        assert "Approved" in card

        # The final answer arrives on the stream that stayed open.
        rest = [line async for line in lines if line]
    data = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in data if d["choices"])
    assert f": approval_decided id={approval_id} status=approved" in rest
    assert "Done — the tool said:" in text, rest
    assert rest[-1] == "data: [DONE]"
    assert [d["choices"][0]["finish_reason"] for d in data if d["choices"]][-1] == "stop"
    user_id = requester.visitor.user_id
    assert stack.sql(
        "SELECT value FROM tools_note WHERE user_id = %s AND key = 'meeting'", (user_id,)
    ) == [("the meeting is on Friday",)]
    await page.close()
    await requester.visitor.close()


async def test_a_denial_is_read_by_the_model_and_other_users_get_404(stack):
    requester = await _member(stack, "deny")
    key = await requester.key("all", "chat", "approvals")
    stranger = await _member(stack, "stranger")
    stranger_key = await stranger.key("all", "chat", "approvals", "read")
    client = _client(stack, key)
    answer = asyncio.create_task(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "remember that the code is 1234"}]
        )
    )
    async with _http(stack, key) as mine, _http(stack, stranger_key) as theirs:
        pending = await _pending_approval(mine)
        approval_id, arguments_hash = pending["id"], pending["arguments_hash"]
        # Another user's approval does not exist for them, whatever they ask.
        listed = await theirs.get("/approvals")
        assert approval_id not in [a["id"] for a in listed.json()["data"]]
        for method, path, body in (
            ("GET", f"/approvals/{approval_id}", None),
            ("POST", f"/approvals/{approval_id}/approve", {"arguments_hash": arguments_hash}),
            ("POST", f"/approvals/{approval_id}/deny", {"reason": "not yours"}),
        ):
            refused = await theirs.request(method, path, json=body)
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["error"]["code"] == "approval_not_found"
        denied = await mine.post(
            f"/approvals/{approval_id}/deny", json={"reason": "no secrets in notes"}
        )
        assert denied.status_code == 200, denied.text
        assert denied.json()["status"] == "denied"
        assert denied.json()["reason"] == "no secrets in notes"
    completion = await asyncio.wait_for(answer, 60)
    text = completion.choices[0].message.content
    assert "no secrets in notes" in text, text  # the model read the denial's reason
    assert completion.model_extra["tollgate_status"] == "completed"
    assert stack.sql("SELECT count(*) FROM tools_note WHERE key = 'code'") == [(0,)]
    await requester.visitor.close()
    await stranger.visitor.close()


async def test_a_revoked_key_is_refused_and_the_refusal_audited(stack):
    member = await _member(stack, "revoke")
    key = await member.key("old laptop", "chat")
    client = _client(stack, key)
    assert [m.id async for m in client.models.list()] == [MODEL]
    page = await member.visitor.get("/settings/api-keys/")
    key_id = int(re.search(r'id="api-key-(\d+)"', page.text).group(1))
    revoked = await member.visitor.post(f"/settings/api-keys/{key_id}/revoke")
    assert revoked.status_code == 302
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "still there?"}]
        )
    assert refused.value.code == "key_revoked"
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    actions = [
        (action, data.get("reason"))
        for action, data in stack.sql(
            "SELECT action, data FROM audit_auditevent WHERE target_type = 'api_key'"
            " AND target_id = %s ORDER BY sequence",
            (str(key_id),),
        )
    ]
    assert actions == [
        ("api_key.created", None),
        ("api_key.revoked", None),
        ("api_key.denied", "revoked"),
        ("api_key.denied", "revoked"),
    ]
    await member.visitor.close()


async def test_budgets_and_rate_limits_apply_as_in_the_browser(stack):
    broke = await _member(stack, "broke")
    hurried = await _member(stack, "hurried")
    broke_key = await broke.key("k", "chat")
    hurried_key = await hurried.key("k", "chat")
    stack.manage(
        "shell",
        "-c",
        "from accounts.models import Budget, RateLimit, User\n"
        f"Budget.objects.create(user=User.objects.get(email='{broke.visitor.email}'),"
        " period='monthly', cost_limit_usd=0)\n"
        f"RateLimit.objects.create(user=User.objects.get(email='{hurried.visitor.email}'),"
        " requests_per_minute=1)\n",
    )
    # A budget refuses: 402, and the client is told not to send it again (its default
    # retries would make another run each time).
    client = openai.AsyncOpenAI(api_key=broke_key, base_url=stack.base_url + "/v1")
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
    assert refused.value.status_code == 402
    assert refused.value.code == "insufficient_quota"
    assert "budget" in refused.value.message
    assert stack.sql(
        "SELECT count(*) FROM conversations_run r JOIN conversations_conversation c"
        " ON c.id = r.conversation_id JOIN accounts_user u ON u.id = c.owner_id"
        " WHERE u.email = %s",
        (broke.visitor.email,),
    ) == [(1,)]
    # A rate limit refuses the second call of the minute: 429 with Retry-After.
    client = _client(stack, hurried_key)
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "two"}]
        )
    assert limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    await broke.visitor.close()
    await hurried.visitor.close()


async def test_approving_edited_arguments_runs_the_call_with_them(stack):
    member = await _member(stack, "edit")
    key = await member.key("all", "chat", "approvals")
    client = _client(stack, key)
    answer = asyncio.create_task(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "remember that lunch is at noon"}]
        )
    )
    async with _http(stack, key) as http:
        pending = await _pending_approval(http)
        url = f"/approvals/{pending['id']}/approve"
        edited = {**pending["arguments"], "value": "lunch is at one"}
        # Edits are checked against the tool's schema: nothing is decided on a bad one.
        bad = await http.post(
            url, json={"arguments_hash": pending["arguments_hash"], "arguments": {"value": 1}}
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["code"] == "arguments_invalid"
        approved = await http.post(
            url, json={"arguments_hash": pending["arguments_hash"], "arguments": edited}
        )
        assert approved.status_code == 200, approved.text
        body = approved.json()
        assert body["status"] == "approved"
        assert body["edited_arguments"] == edited
        assert body["arguments_diff"] == [
            {"key": "value", "op": "changed", "old": "lunch is at noon", "new": "lunch is at one"}
        ]
    completion = await asyncio.wait_for(answer, 60)
    assert "Done — the tool said:" in completion.choices[0].message.content
    user_id = member.visitor.user_id
    assert stack.sql("SELECT value FROM tools_note WHERE user_id = %s", (user_id,)) == [
        ("lunch is at one",)
    ]
    await member.visitor.close()
