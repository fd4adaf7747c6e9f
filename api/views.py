"""The API's operations (django-ninja): parse, call one service, answer.

``/v1/chat/completions`` and ``/v1/models`` follow OpenAI's wire format; the
approvals API lists, shows and decides the key's user's approval requests with
the browser's services (the same checks, the same exactly-once decision, the
same pushes to open pages). Every refusal is in OpenAI's error shape
(``api.errors``). The schema is served at ``/v1/openapi.json``, its reference
at ``/v1/docs``.

Views are async: a chat completion waits for its run (seconds, or as long as a
person takes to decide a tool call), which would hold a thread of a sync view;
their database work runs on the loop's executor (``project.dbthreads``), as the
page's socket does.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any, Literal

from django.http import HttpRequest, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from ninja import NinjaAPI, Query
from ninja.parser import Parser

from accounts.http import client_ip
from api import replies
from api.auth import APPROVALS_DECIDE, APPROVALS_READ, CHAT, MODELS, ApiKeyAuth
from api.errors import ApiError, errors_install
from api.schemas import (
    Approval,
    ApprovalList,
    ApproveBody,
    ChatCompletion,
    ChatCompletionRequest,
    DenyBody,
    ErrorResponse,
    ModelList,
)
from api.services import chat_plan, chat_start
from approvals.models import ApprovalRequest
from approvals.selectors import (
    approval_can_vote,
    approval_get_visible,
    approval_votes,
    approvals_for_user,
)
from approvals.services import (
    ApprovalArgumentsInvalid,
    ApprovalError,
    ApprovalForbidden,
    ApprovalNotFound,
    approval_decide,
)
from conversations.dispatch import recovery_timer_ensure
from conversations.selectors import RunReply, model_configs_enabled
from project.dbthreads import db_run
from project.inbound import json_parse

#: The longest JSON body read (characters); Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
#: bounds the bytes first.
MAX_BODY_CHARS = 20_000_000


class StrictParser(Parser):
    """Bodies parsed with ``project.inbound.json_parse``: strict JSON (no NaN), bounded
    nesting, no NUL character anywhere (PostgreSQL can store none)."""

    def parse_body(self, request: HttpRequest) -> Any:
        return json_parse(request.body.decode("utf-8"), max_chars=MAX_BODY_CHARS)


api = NinjaAPI(
    title="Tollgate API",
    version="1",
    description=(
        "OpenAI-compatible chat completions over Tollgate's gated runs, the models you may "
        "use, and your approval requests. Authenticate with `Authorization: Bearer <key>`; "
        "make keys on your settings page (scopes: chat, approvals, read)."
    ),
    urls_namespace="api",
    parser=StrictParser(),
    docs_url="/docs",
)
errors_install(api)

#: Every operation may answer these (a body that does not parse, the key, a field).
REFUSALS: dict[int, Any] = {
    400: ErrorResponse,
    401: ErrorResponse,
    403: ErrorResponse,
    422: ErrorResponse,
}


# --- models ----------------------------------------------------------------------------


def _models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": c.name, "object": "model", "created": int(c.created_at.timestamp())}
            for c in model_configs_enabled()
        ],
    }


@api.get(
    "/models",
    auth=ApiKeyAuth(MODELS),
    response={200: ModelList, **REFUSALS},
    tags=["models"],
    summary="The models the key's user may use",
)
async def models_list(request: HttpRequest) -> Any:
    return await db_run(_models)


# --- chat completions --------------------------------------------------------------------


def _refuse_client_tools(body: ChatCompletionRequest) -> None:
    for param in ("tools", "functions"):
        if getattr(body, param):
            raise ApiError(
                422,
                f"`{param}` cannot be sent: Tollgate's tools are the server's. It offers the "
                "tools an administrator enabled for you, puts every call through its gate "
                "(a policy, or a person's approval) and runs it itself; remove `tools`, "
                "`tool_choice`, `functions` and `function_call` from the request.",
                code="tools_not_supported",
                param=param,
            )
    for param in ("tool_choice", "function_call"):
        value = getattr(body, param)
        if value is not None and value not in ("none", "auto"):
            raise ApiError(
                422,
                f"`{param}` cannot be sent: Tollgate's tools are the server's.",
                code="tools_not_supported",
                param=param,
            )
    if body.n not in (None, 1):
        raise ApiError(422, "Only one choice is made (`n` must be 1).", code="invalid_n", param="n")


def run_error(reply: RunReply) -> ApiError | None:
    """What a failed run answers (``api.errors`` has the table); ``None`` when it
    completed or was stopped."""
    if reply.status != "failed":
        return None
    once = {"x-should-retry": "false"}
    kind, message = reply.error_kind, reply.error or "The reply failed."
    if kind == "budget" and reply.refused == "rate_limit":
        wait = 1
        if reply.retry_not_before is not None:
            wait = max(1, math.ceil((reply.retry_not_before - timezone.now()).total_seconds()))
        error = ApiError(
            429, message, code="rate_limit_exceeded", headers={"Retry-After": str(wait)}
        )
    elif kind == "budget":
        code = "model_unpriced" if reply.refused == "no_prices" else "insufficient_quota"
        error = ApiError(402, message, code=code, headers=once)
    elif kind == "guardrail":
        error = ApiError(400, message, code="guardrail_blocked", headers=once)
    elif kind == "context_too_long":
        error = ApiError(400, message, code="context_length_exceeded", headers=once)
    elif kind == "internal":
        error = ApiError(500, message, code="server_error", headers=once)
    else:
        error = ApiError(502, message, code=kind or "upstream_error", headers=once)
    error.extra = {
        "tollgate_conversation_id": reply.conversation_id,
        "tollgate_run_id": reply.run_id,
    }
    return error


def _finish_reason(reply: RunReply) -> str:
    return "length" if reply.finish_reason == "length" else "stop"


class _Answer:
    """What the response says of one run (ids, model, time), in either form."""

    def __init__(self, *, model: str, reply: RunReply) -> None:
        self.model = model
        self.conversation_id = reply.conversation_id
        self.run_id = reply.run_id
        self.id = f"chatcmpl-tollgate-{reply.run_id}"
        self.created = int((reply.created_at or timezone.now()).timestamp())

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def tail(self) -> dict[str, Any]:
        return {
            "system_fingerprint": None,
            "tollgate_conversation_id": self.conversation_id,
            "tollgate_run_id": self.run_id,
        }

    @staticmethod
    def usage(reply: RunReply) -> dict[str, int]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }

    def completion(self, reply: RunReply) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": None},
            "logprobs": None,
            "finish_reason": _finish_reason(reply),
        }
        return {
            **self.head("chat.completion"),
            "choices": [choice],
            "usage": self.usage(reply),
            **self.tail(),
            "tollgate_status": reply.status,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**self.head("chat.completion.chunk"), "choices": [choice], **self.tail()})

    def usage_chunk(self, reply: RunReply) -> str:
        body = {**self.head("chat.completion.chunk"), "choices": [], **self.tail()}
        return _sse({**body, "usage": self.usage(reply)})


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _approval_url(request: HttpRequest, approval_id: int) -> str:
    return request.build_absolute_uri(reverse("approvals:detail", args=[approval_id]))


async def _sse_events(
    request: HttpRequest,
    answer: _Answer,
    first: replies.Snapshot,
    rest: AsyncIterator[replies.Snapshot | None],
    *,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The stream of one run: the role, then each new piece of its text as it is
    stored, SSE comments about its approval requests and to keep the connection
    open, and its end (a finish reason, or an error in OpenAI's shape), then
    ``[DONE]``. The text stored only grows, except where a finished answer
    differs from what streamed (a guardrail redacted it, a step was replayed
    after its worker died): the last chunk then carries the whole answer as
    ``tollgate_content``."""
    yield answer.chunk({"role": "assistant", "content": ""})
    sent = ""
    seen: dict[int, str] = {}
    snapshot: replies.Snapshot | None = first
    while True:
        if snapshot is None:
            yield ": keep-alive\n\n"
        else:
            for approval_id, tool, status in snapshot.approvals:
                before = seen.get(approval_id)
                if status == "pending" and before is None:
                    url = _approval_url(request, approval_id)
                    yield f": approval_required id={approval_id} tool={tool} url={url}\n\n"
                elif before == "pending" and status != "pending":
                    yield f": approval_decided id={approval_id} status={status}\n\n"
                seen[approval_id] = status
            reply = snapshot.reply
            if len(reply.text) > len(sent) and reply.text.startswith(sent):
                yield answer.chunk({"content": reply.text[len(sent) :]})
                sent = reply.text
            if reply.finished:
                error = run_error(reply)
                if error is not None:
                    yield _sse(error.body())
                else:
                    delta = {} if reply.text == sent else {"tollgate_content": reply.text}
                    yield answer.chunk(delta, finish_reason=_finish_reason(reply))
                    if include_usage:
                        yield answer.usage_chunk(reply)
                yield "data: [DONE]\n\n"
                return
        try:
            snapshot = await anext(rest)
        except StopAsyncIteration:
            return


@api.post(
    "/chat/completions",
    auth=ApiKeyAuth(CHAT),
    response={
        200: ChatCompletion,
        402: ErrorResponse,
        404: ErrorResponse,
        409: ErrorResponse,
        429: ErrorResponse,
        502: ErrorResponse,
        **REFUSALS,
    },
    tags=["chat"],
    summary="Answer a message through Tollgate's gated run (OpenAI's format)",
    openapi_extra={
        "responses": {
            200: {
                "description": "The answer; with `stream` true, `text/event-stream` chunks.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        }
    },
)
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> Any:
    """A user message, answered by a run of the same engine as the browser's: budget
    admission, guardrails, the gate, the tools. The answer is read from the
    database as the run stores it (``api.replies``); with ``stream``, a tool call
    waiting for a person is announced with an SSE comment and the stream waits,
    while approval comes from the browser or ``POST /v1/approvals/{id}/approve``."""
    _refuse_client_tools(body)
    plan = chat_plan(messages=[m.model_dump() for m in body.messages])
    run = await db_run(
        chat_start,
        key=request.auth,  # type: ignore[attr-defined]
        model=body.model,
        plan=plan,
        conversation_id=body.tollgate_conversation_id,
        temperature=body.temperature,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stream=body.stream,
    )
    recovery_timer_ensure()  # the embedded mode's timers; with Celery, a warm broker
    snapshots = replies.run_snapshots(run_id=run.pk, conversation_id=run.conversation_id)
    streaming = False
    try:
        # Until the first model call is admitted: a refusal (a budget, a rate limit)
        # answers with its status code rather than inside a stream.
        while True:
            snapshot = await anext(snapshots)
            if snapshot is not None and (snapshot.reply.admitted or snapshot.reply.finished):
                break
        reply = snapshot.reply
        answer = _Answer(model=body.model, reply=reply)
        if not body.stream or reply.finished:
            while not reply.finished:
                later = await anext(snapshots)
                if later is not None:
                    reply = later.reply
            error = run_error(reply)
            if error is not None:
                raise error
            if not body.stream:
                return answer.completion(reply)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(request, answer, snapshot, snapshots, include_usage=include_usage)
        response = StreamingHttpResponse(
            _closing(events, snapshots), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        streaming = True
        return response
    finally:
        if not streaming:  # else the stream closes them when it ends
            await snapshots.aclose()


async def _closing(events: AsyncIterator[str], snapshots: Any) -> AsyncIterator[str]:
    """``events``, then ``snapshots`` closed (the group left) however the stream ends."""
    try:
        async for event in events:
            yield event
    finally:
        await snapshots.aclose()


# --- approvals ---------------------------------------------------------------------------

ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled"]


def approval_json(
    request: HttpRequest, approval: ApprovalRequest, *, user: Any, group_ids: set[int]
) -> dict[str, Any]:
    """An approval request as the API shows it (``api.schemas.Approval``); its votes
    prefetched (``approvals_for_user``, ``approval_get_visible``)."""
    return {
        "id": approval.pk,
        "status": approval.status,
        "tool": approval.tool_name,
        "tool_description": approval.tool_description,
        "arguments": approval.arguments,
        "arguments_hash": approval.effective_arguments_hash,
        "edited_arguments": approval.edited_arguments,
        "arguments_diff": approval.arguments_diff,
        "arguments_schema": approval.arguments_schema or {},
        "explanation": approval.explanation,
        "cost_estimate": approval.cost_estimate or {},
        "estimated_cost_usd": (
            str(approval.estimated_cost_usd) if approval.estimated_cost_usd is not None else None
        ),
        "requester": str(approval.requester),
        "conversation_id": approval.conversation_id,
        "run_id": approval.run_id,
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "decided_at": approval.decided_at,
        "decided_by": str(approval.decided_by) if approval.decided_by_id else None,
        "reason": approval.reason,
        "approvals_required": approval.approvals_required,
        "votes": [
            {
                "voter": str(vote.voter) if vote.voter_id else None,
                "decision": vote.decision,
                "reason": vote.reason,
                "edited": vote.edited,
                "created_at": vote.created_at,
            }
            for vote in approval_votes(approval=approval)
        ],
        "can_decide": approval_can_vote(user=user, approval=approval, group_ids=group_ids),
        "url": _approval_url(request, approval.pk),
    }


def _group_ids(user: Any) -> set[int]:
    return set(user.groups.values_list("pk", flat=True))


def _not_found() -> ApiError:
    return ApiError(404, "No such approval.", code="approval_not_found", param="approval_id")


def _approvals_page(
    request: HttpRequest,
    *,
    user: Any,
    status: str | None,
    tool: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    rows = list(
        approvals_for_user(user=user, status=status, tool=tool)[offset : offset + limit + 1]
    )
    group_ids = _group_ids(user)
    return {
        "object": "list",
        "data": [approval_json(request, a, user=user, group_ids=group_ids) for a in rows[:limit]],
        "has_more": len(rows) > limit,
    }


@api.get(
    "/approvals",
    auth=ApiKeyAuth(APPROVALS_READ),
    response={200: ApprovalList, **REFUSALS},
    tags=["approvals"],
    summary="Your approval requests and those you approve, newest first",
)
async def approvals_list(
    request: HttpRequest,
    status: ApprovalStatus | None = None,
    tool: str | None = Query(None, max_length=200, pattern=r"^[^\x00]*$"),  # type: ignore[type-arg]
    limit: int = Query(20, ge=1, le=100),  # type: ignore[type-arg]
    offset: int = Query(0, ge=0, le=1_000_000),  # type: ignore[type-arg]
) -> Any:
    user = request.auth.user  # type: ignore[attr-defined]
    return await db_run(
        _approvals_page, request=request, user=user, status=status, tool=tool, limit=limit,
        offset=offset,
    )  # fmt: skip


def _approval_visible(request: HttpRequest, *, user: Any, approval_id: int) -> dict[str, Any]:
    approval = approval_get_visible(user=user, approval_id=approval_id)
    if approval is None:
        raise _not_found()
    return approval_json(request, approval, user=user, group_ids=_group_ids(user))


@api.get(
    "/approvals/{int:approval_id}",
    auth=ApiKeyAuth(APPROVALS_READ),
    response={200: Approval, 404: ErrorResponse, **REFUSALS},
    tags=["approvals"],
    summary="One approval request: the tool, its arguments and their hash, why it was asked",
)
async def approval_get(request: HttpRequest, approval_id: int) -> Any:
    user = request.auth.user  # type: ignore[attr-defined]
    return await db_run(_approval_visible, request=request, user=user, approval_id=approval_id)


def _decide(
    request: HttpRequest,
    *,
    user: Any,
    approval_id: int,
    approve: bool,
    arguments_hash: str | None,
    arguments: dict[str, Any] | None,
    reason: str,
) -> dict[str, Any]:
    """``approvals.services.approval_decide`` for an approval ``user`` may see (else
    404, as the browser's card answers); its refusals as ``ApiError``."""
    approval = approval_get_visible(user=user, approval_id=approval_id)
    if approval is None:
        raise _not_found()
    try:
        approval_decide(
            approval_id=approval.pk,
            actor=user,
            approve=approve,
            arguments_hash=arguments_hash or approval.effective_arguments_hash,
            edited_arguments=arguments,
            reason=reason,
            ip=client_ip(request),
        )
    except ApprovalNotFound:
        raise _not_found() from None
    except ApprovalForbidden as refused:
        raise ApiError(403, str(refused), code="approval_forbidden") from None
    except ApprovalArgumentsInvalid as refused:
        raise ApiError(422, str(refused), code="arguments_invalid", param="arguments") from None
    except ApprovalError as refused:
        raise ApiError(409, str(refused), code=_code(refused)) from None
    return _approval_visible(request, user=user, approval_id=approval_id)


def _code(error: ApprovalError) -> str:
    """``ApprovalNotPending`` → ``approval_not_pending``."""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


DECISION_REFUSALS: dict[int, Any] = {404: ErrorResponse, 409: ErrorResponse, **REFUSALS}


@api.post(
    "/approvals/{int:approval_id}/approve",
    auth=ApiKeyAuth(APPROVALS_DECIDE),
    response={200: Approval, **DECISION_REFUSALS},
    tags=["approvals"],
    summary="Approve, echoing the arguments hash; optionally with edited arguments",
)
async def approval_approve(request: HttpRequest, approval_id: int, body: ApproveBody) -> Any:
    """Your vote to approve: ``arguments_hash`` must be the request's current one
    (409 otherwise); ``arguments`` approves those instead, validated against the
    tool's JSON Schema (422). As in the browser: 403 when you may not decide it,
    409 when it is no longer pending, you voted already, or approving would pass
    a budget of the requester's."""
    user = request.auth.user  # type: ignore[attr-defined]
    return await db_run(
        _decide, request=request, user=user, approval_id=approval_id, approve=True,
        arguments_hash=body.arguments_hash, arguments=body.arguments, reason=body.reason,
    )  # fmt: skip


@api.post(
    "/approvals/{int:approval_id}/deny",
    auth=ApiKeyAuth(APPROVALS_DECIDE),
    response={200: Approval, **DECISION_REFUSALS},
    tags=["approvals"],
    summary="Deny, with a reason the model reads",
)
async def approval_deny(request: HttpRequest, approval_id: int, body: DenyBody) -> Any:
    user = request.auth.user  # type: ignore[attr-defined]
    return await db_run(
        _decide, request=request, user=user, approval_id=approval_id, approve=False,
        arguments_hash=body.arguments_hash, arguments=None, reason=body.reason,
    )  # fmt: skip
