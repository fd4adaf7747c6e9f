"""The API over Django's test client: refusals in OpenAI's shape, validation, and
isolation between users. Runs that are answered are the topology tests' (a worker
advances them)."""

from __future__ import annotations

import pytest

from approvals.models import ApprovalRequest
from conversations.models import Conversation, Message, Run
from tests.api.conftest import bearer, key_for
from tests.factories import (
    ApprovalRequestFactory,
    ConversationFactory,
    GroupFactory,
    RunFactory,
    ToolInvocationFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _chat(client, **body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return client.post("/v1/chat/completions", body, content_type="application/json")


def _error(answer, status: int) -> dict:
    assert answer.status_code == status, answer.content
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "tools_not_supported",
        ),
        ({"functions": [{"name": "f"}]}, "functions", "tools_not_supported"),
        ({"tool_choice": "required"}, "tool_choice", "tools_not_supported"),
        ({"n": 2}, "n", "invalid_n"),
        ({"messages": []}, "messages", "invalid_request"),
        ({"temperature": 3}, "temperature", "invalid_request"),
        ({"max_tokens": 0}, "max_tokens", "invalid_request"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_request"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "messages",
            "invalid_messages",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
            "unsupported_content",
        ),
        (
            {
                "messages": [
                    {"role": "tool", "tool_call_id": "x", "content": "42"},
                    {"role": "user", "content": "and?"},
                ]
            },
            "messages[0]",
            "tools_not_supported",
        ),
        ({"model": "gpt-9"}, "model", "model_not_found"),
        ({"tollgate_conversation_id": 0}, "tollgate_conversation_id", "invalid_request"),
    ],
)
def test_chat_requests_that_cannot_be_answered_are_refused_and_make_nothing(
    api_client, demo_model, body, param, code
):
    body.setdefault("model", demo_model.name)
    status = 404 if code == "model_not_found" else 422
    error = _error(_chat(api_client, **body), status)
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    if code == "tools_not_supported":
        assert "server's" in error["message"]
    assert not Conversation.objects.exists()
    assert not Run.objects.exists()


def test_an_empty_message_is_refused_with_the_services_words(api_client, demo_model):
    error = _error(
        _chat(api_client, model=demo_model.name, messages=[{"role": "user", "content": "  "}]), 422
    )
    assert error["message"] == "Type a message first."
    assert not Conversation.objects.exists()


def test_bodies_that_do_not_parse_are_refused(api_client):
    for body in ("{bad", '{"model": NaN}', '{"model": "a\\u0000"}', "[" * 100 + "]" * 100):
        answer = api_client.post("/v1/chat/completions", body, content_type="application/json")
        error = _error(answer, 400)
        assert error["code"] == "invalid_body"
        assert error["message"].startswith("The body cannot be read: ")


def test_another_users_conversation_is_not_found(user, other_user, demo_model):
    theirs = ConversationFactory(owner=other_user, model_config=demo_model)
    client = bearer(key_for(user, "chat"))
    error = _error(_chat(client, model=demo_model.name, tollgate_conversation_id=theirs.pk), 404)
    assert (error["code"], error["param"]) == ("conversation_not_found", "tollgate_conversation_id")
    assert not Message.objects.filter(conversation=theirs).exists()


def test_a_reply_still_being_written_is_a_conflict(user, demo_model):
    conversation = ConversationFactory(owner=user, model_config=demo_model)
    RunFactory(conversation=conversation, status=Run.Status.CALLING_LLM)
    client = bearer(key_for(user, "chat"))
    error = _error(
        _chat(client, model=demo_model.name, tollgate_conversation_id=conversation.pk), 409
    )
    assert error["type"] == "conflict_error"
    assert "still being written" in error["message"]


def test_the_model_list_is_the_enabled_models(api_client, demo_model):
    from tests.factories import ModelConfigFactory

    ModelConfigFactory(name="Off", litellm_model="openai/gpt-4o", enabled=False)
    answer = api_client.get("/v1/models").json()
    assert [m["id"] for m in answer["data"]] == [demo_model.name]
    assert answer["data"][0]["object"] == "model"


# -- approvals ------------------------------------------------------------------------


@pytest.fixture
def pending(user, demo_model) -> ApprovalRequest:
    conversation = ConversationFactory(owner=user, model_config=demo_model)
    run = RunFactory(conversation=conversation, status=Run.Status.AWAITING_APPROVAL)
    invocation = ToolInvocationFactory(run=run)
    return ApprovalRequestFactory(
        invocation=invocation,
        explanation="No rule allows notes.write: a person decides.",
        arguments_schema={
            "type": "object",
            "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
            "required": ["key", "value"],
            "additionalProperties": False,
        },
    )


def test_an_approval_is_shown_with_its_arguments_hash_and_why(api_client, pending):
    listed = api_client.get("/v1/approvals", {"status": "pending"}).json()
    assert [a["id"] for a in listed["data"]] == [pending.pk]
    detail = api_client.get(f"/v1/approvals/{pending.pk}").json()
    assert detail["tool"] == "notes.write"
    assert detail["arguments"] == {"key": "todo", "value": "buy milk"}
    assert detail["arguments_hash"] == pending.arguments_hash
    assert detail["explanation"] == "No rule allows notes.write: a person decides."
    assert detail["can_decide"] is True
    assert detail["url"].endswith(f"/approvals/{pending.pk}/")
    assert api_client.get("/v1/approvals", {"status": "approved"}).json()["data"] == []


def test_approve_refusals(api_client, pending):
    url = f"/v1/approvals/{pending.pk}/approve"
    bad_hash = api_client.post(url, {"arguments_hash": "nope"}, content_type="application/json")
    assert _error(bad_hash, 422)["param"] == "arguments_hash"
    mismatch = api_client.post(url, {"arguments_hash": "0" * 64}, content_type="application/json")
    assert _error(mismatch, 409)["code"] == "approval_arguments_mismatch"
    edited = api_client.post(
        url,
        {"arguments_hash": pending.arguments_hash, "arguments": {"key": "todo", "value": 7}},
        content_type="application/json",
    )
    error = _error(edited, 422)
    assert (error["code"], error["param"]) == ("arguments_invalid", "arguments")
    assert "value: 7 is not of type 'string'" in error["message"]
    no_reason = api_client.post(
        f"/v1/approvals/{pending.pk}/deny", {"reason": ""}, content_type="application/json"
    )
    assert _error(no_reason, 422)["param"] == "reason"
    pending.refresh_from_db()
    assert pending.status == "pending" and not pending.votes.exists()


def test_another_users_approval_is_not_found_by_any_endpoint(other_user, pending):
    client = bearer(key_for(other_user))
    assert client.get("/v1/approvals").json()["data"] == []
    answers = [
        client.get(f"/v1/approvals/{pending.pk}"),
        client.post(
            f"/v1/approvals/{pending.pk}/approve",
            {"arguments_hash": pending.arguments_hash},
            content_type="application/json",
        ),
        client.post(
            f"/v1/approvals/{pending.pk}/deny", {"reason": "no"}, content_type="application/json"
        ),
    ]
    for answer in answers:
        assert _error(answer, 404)["code"] == "approval_not_found"
    pending.refresh_from_db()
    assert pending.status == "pending"


def test_under_four_eyes_the_requester_sees_but_may_not_decide(user, api_client, pending):
    group = GroupFactory()
    user.groups.add(group)
    ApprovalRequest.objects.filter(pk=pending.pk).update(four_eyes=True, approver_group=group)
    detail = api_client.get(f"/v1/approvals/{pending.pk}").json()
    assert detail["can_decide"] is False
    refused = api_client.post(
        f"/v1/approvals/{pending.pk}/approve",
        {"arguments_hash": pending.arguments_hash},
        content_type="application/json",
    )
    error = _error(refused, 403)
    assert error["code"] == "approval_forbidden"
    assert "someone else must decide" in error["message"]
