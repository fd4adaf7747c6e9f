"""The API's request and response bodies (pydantic, through django-ninja): what it
validates and what its OpenAPI schema (``/v1/openapi.json``) documents.

Chat completions follow OpenAI's wire format; the fields Tollgate adds start with
``tollgate_``. Parameters of OpenAI's that Tollgate does not use (``top_p``,
``stop``, ``seed``, ``user``…) are accepted and ignored; ``tools``,
``tool_choice``, ``functions`` and ``function_call`` are refused (the server's
tools run behind its gate), as is ``n`` other than 1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

# --- chat completions ------------------------------------------------------------------


class ContentPart(Schema):
    """One part of a message's content; only ``text`` parts are read."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(max_length=40)
    text: str | None = None


class ChatMessage(Schema):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=200)


class StreamOptions(Schema):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(Schema):
    """``POST /v1/chat/completions``: OpenAI's request, plus ``tollgate_conversation_id``."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=100, description="A model of `GET /v1/models`.")
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=20_000,
        description=(
            "Without `tollgate_conversation_id`: a new conversation of these messages (system "
            "and developer messages become its system prompt, earlier user and assistant "
            "messages its history). With it: only the last message is sent; the "
            "conversation's stored history is what the model reads."
        ),
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    n: int | None = Field(default=None, ge=1, le=128)
    tools: list[Any] | None = Field(
        default=None, description="Refused: the tools are the server's."
    )
    tool_choice: Any = Field(default=None, description="Refused (with `tools`).")
    functions: list[Any] | None = Field(default=None, description="Refused.")
    function_call: Any = Field(default=None, description="Refused.")
    tollgate_conversation_id: int | None = Field(
        default=None,
        ge=1,
        le=2**63 - 1,
        description="Continue this conversation of yours (the id a previous answer returned).",
    )


class Usage(Schema):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Schema):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(Schema):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(Schema):
    """A finished answer (``stream`` false). With ``stream`` true the answer is
    ``text/event-stream``: ``chat.completion.chunk`` objects as ``data:`` lines, SSE
    comments ``: approval_required id=… tool=… url=…`` when a tool call waits for
    a person (and ``: approval_decided id=… status=…``), then ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    tollgate_conversation_id: int
    tollgate_run_id: int
    tollgate_status: str = Field(description="The run's end: completed or cancelled.")


# --- models ----------------------------------------------------------------------------


class Model(Schema):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tollgate"


class ModelList(Schema):
    object: Literal["list"] = "list"
    data: list[Model]


# --- errors ----------------------------------------------------------------------------


class ErrorDetail(Schema):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Schema):
    """OpenAI's error shape."""

    error: ErrorDetail


# --- approvals -------------------------------------------------------------------------


class ApprovalVote(Schema):
    voter: str | None
    decision: Literal["approve", "deny"]
    reason: str
    edited: bool
    created_at: datetime


class Approval(Schema):
    """An approval request: a tool call that waits (or waited) for a person."""

    id: int
    object: Literal["approval"] = "approval"
    status: Literal["pending", "approved", "denied", "expired", "cancelled"]
    tool: str
    tool_description: str
    arguments: Any = Field(description="The arguments the model asked for.")
    arguments_hash: str = Field(
        description="The hash to echo when approving: of the arguments as they stand now "
        "(the edited ones once an approver edited them)."
    )
    edited_arguments: Any = None
    arguments_diff: list[dict[str, Any]] | None = None
    arguments_schema: dict[str, Any]
    explanation: str = Field(description="Why a person is asked (the rule that asked).")
    cost_estimate: dict[str, Any] = Field(description="What approving may cost; {}: unknown.")
    estimated_cost_usd: str | None = None
    requester: str
    conversation_id: int | None
    run_id: int | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str
    approvals_required: int
    votes: list[ApprovalVote]
    can_decide: bool = Field(description="Whether this key's user may vote on it now.")
    url: str = Field(description="Its card in the browser.")


class ApprovalList(Schema):
    object: Literal["list"] = "list"
    data: list[Approval]
    has_more: bool


class ApproveBody(Schema):
    arguments_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="The `arguments_hash` of the arguments approved."
    )
    arguments: dict[str, Any] | None = Field(
        default=None,
        description="Approve these arguments instead (validated against the tool's schema).",
    )
    reason: str = Field(default="", max_length=2000)


class DenyBody(Schema):
    reason: str = Field(min_length=1, max_length=2000, description="The model reads it.")
    arguments_hash: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Optional: deny only these."
    )
