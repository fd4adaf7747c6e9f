"""The page's single WebSocket (``/ws/``, optional ``?conversation=<id>``).

Joins ``user.<id>`` always and ``conversation.<id>`` only for a conversation the
user owns (else the connection is closed with 4403; an id that is not a whole
number from 1 is refused the same way). Anonymous users are closed with 4401.
Outbound: ``html.push`` group messages are forwarded as text frames (htmx's ws
extension swaps them).

Inbound: every frame is answered with the page's error box (``#chat-errors``):
empty when the request was carried out, else with a message for people.
``frame_parse`` checks a frame's length before parsing it, parses it strictly
(``project.inbound.json_parse``: bounded nesting, no NaN) and validates it with
the pydantic model of its ``type`` (``INBOUND``). A refused frame is logged
once, as a warning, changes nothing and leaves the socket open. The answer to a
``message.send`` says whether it was taken (``data-composer``: the page clears
the composer only then) or refused (the text stays in the composer). A request
the services refuse for the state it finds (a reply already stopped, an
approval already decided) is answered the same way, with the service's message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from approvals.services import ApprovalError, approval_decide_from_payload
from conversations import services
from conversations.dispatch import recovery_timer_ensure
from conversations.events import error_fragment
from conversations.models import Conversation
from conversations.runs import RunStateError
from conversations.tracing import tracing_record
from project.dbthreads import db_run
from project.inbound import Id, InboundError, Text, id_parse, json_parse
from project.pushes import conversation_group, user_group

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
#: A frame longer than this is refused before it is parsed (daphne itself closes
#: the socket on a message over 1 MiB, its ``--websocket-max-message-size``).
MAX_FRAME_CHARS = 1_000_000
#: Nesting a frame may have: the frame, htmx's ``HEADERS``, and room to spare.
MAX_FRAME_DEPTH = 4
#: Longest message of a refusal (a field's value can end up in a form's message).
MAX_ERROR_CHARS = 300


class Frame(BaseModel):
    """Base of inbound frames: unknown keys (htmx adds ``HEADERS``) are ignored;
    ``type`` names the request (a ``Literal`` in each subclass)."""

    model_config = ConfigDict(extra="ignore")
    type: str


def _blank_is_none(value: Any) -> Any:
    """An empty form field (a select left on its first option) is no value."""
    return None if value == "" else value


class MessageSendFrame(Frame):
    """The composer. ``compare`` (its Compare toggle, a checkbox's value when on):
    answer with ``compare_models`` (ids, one or a list as a form sends them; how
    many: the service's to check, ``services.message_send``)."""

    type: Literal["message.send"]
    conversation_id: Id
    # The length is the service's to check (``TOLLGATE_MAX_MESSAGE_CHARS``).
    content: Text
    compare: Text = Field(default="", max_length=10)
    compare_models: list[Id] = Field(default_factory=list, max_length=50)
    #: The composer's files (its chips' documents; how many, and whose: the service's
    #: to check, ``conversations.attachments``).
    attachments: list[Id] = Field(default_factory=list, max_length=50)

    @field_validator("compare_models", "attachments", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return value if isinstance(value, list) else [value]

    def compare_ids(self) -> list[int] | None:
        """The models to compare when the toggle is on (``[]``: none picked), else ``None``."""
        return list(self.compare_models) if self.compare else None

    #: The chain to run the message through (the composer's "Run as"; empty: none).
    chain_id: Annotated[Id | None, BeforeValidator(_blank_is_none)] = None


class RunCancelFrame(Frame):
    type: Literal["run.cancel"]
    run_id: Id


class ApprovalDecideFrame(Frame):
    """An approval card's form sent over the socket; the fields are checked by
    approvals' ``DecisionForm`` (``approval_decide_from_payload``), each a single
    value as a form field holds (text, a number or a boolean)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["approval.decide"]
    approval_id: Id

    @model_validator(mode="after")
    def _form_values(self) -> ApprovalDecideFrame:
        for key, value in (self.model_extra or {}).items():
            if key != "HEADERS" and not isinstance(value, str | int | float | bool):
                raise ValueError(f"{key[:40]} must be text, a number or true/false")
        return self


InboundFrame = Annotated[
    MessageSendFrame | RunCancelFrame | ApprovalDecideFrame, Field(discriminator="type")
]
_INBOUND_FRAME: TypeAdapter[Frame] = TypeAdapter(InboundFrame)


class FrameRefused(InboundError):
    """A frame that is not a valid request; ``data`` is what it parsed to, if anything."""

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


def frame_parse(text: str) -> Frame:
    """The request in an inbound text frame (a ``Frame`` subclass of ``INBOUND``).

    Raises :class:`FrameRefused` with a message for people: too long (checked
    first), not strict JSON or nested too deeply (``json_parse``), not an
    object, no or an unknown ``type``, or a field of the wrong kind (an id that
    is not a whole number from 1, text with a NUL character, a missing field).
    """
    try:
        data = json_parse(
            text, max_chars=MAX_FRAME_CHARS, max_depth=MAX_FRAME_DEPTH, allow_nul=True
        )
    except InboundError as error:
        raise FrameRefused(f"The page sent a request that cannot be read. {error}") from None
    try:
        return _INBOUND_FRAME.validate_python(data)
    except ValidationError as error:
        raise FrameRefused(_frame_error(error), data=data) from None


def _validation_message(error: DjangoValidationError) -> str:
    """A form's refusal as one line: ``"reason: Null characters are not allowed."``."""
    if not hasattr(error, "error_dict"):
        return " ".join(error.messages)
    return "; ".join(
        " ".join(messages) if field == "__all__" else f"{field}: {' '.join(messages)}"
        for field, messages in error.message_dict.items()
    )


def _frame_error(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "union_tag_not_found":
        return "The request has no type."
    if kind == "union_tag_invalid":
        return f"Unknown request type {str(first['ctx']['tag'])[:40]!r}."
    if kind == "model_attributes_type":
        return "A request must be a JSON object."
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"][1:])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    return "Invalid request: " + "; ".join(problems)


Handler = Callable[["PageConsumer", Any], Awaitable[None]]


async def _message_send(consumer: PageConsumer, frame: MessageSendFrame) -> None:
    began = timezone.now()
    run = await db_run(
        services.message_send,
        user=consumer.user,
        conversation_id=frame.conversation_id,
        content=frame.content,
        compare_model_ids=frame.compare_ids(),
        chain_id=frame.chain_id,
        attachment_ids=frame.attachments,
    )
    # The message's handling is the first span of the run's trace (when tracing is on).
    tracing_record(
        run_id=run.pk,
        name="chat.message",
        start=began,
        end=timezone.now(),
        attributes={"tollgate.conversation_id": frame.conversation_id},
    )


async def _run_cancel(consumer: PageConsumer, frame: RunCancelFrame) -> None:
    await db_run(services.run_cancel, user=consumer.user, run_id=frame.run_id)


async def _approval_decide(consumer: PageConsumer, frame: ApprovalDecideFrame) -> None:
    client = consumer.scope.get("client") or [None]
    await db_run(
        approval_decide_from_payload,
        user=consumer.user,
        payload=frame.model_dump(),
        ip=client[0],
    )


#: Inbound frame model → its handler (the model's ``type`` names the request).
INBOUND: dict[type[Frame], Handler] = {
    MessageSendFrame: _message_send,
    RunCancelFrame: _run_cancel,
    ApprovalDecideFrame: _approval_decide,
}


def _owns_sync(*, user: Any, conversation_id: int) -> bool:
    return Conversation.objects.filter(pk=conversation_id, owner=user).exists()


async def _owns(user: Any, conversation_id: int) -> bool:
    return await db_run(_owns_sync, user=user, conversation_id=conversation_id)


class PageConsumer(AsyncWebsocketConsumer):
    """One per page; thin: authorise, validate, call a service, forward HTML."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.joined: list[str] = []
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        raw = (query.get("conversation") or [""])[0]
        groups = [user_group(self.user.pk)]
        if raw:
            conversation_id = id_parse(raw)
            if conversation_id is None or not await _owns(self.user, conversation_id):
                logger.warning("user %s may not join conversation %r", self.user.pk, raw[:40])
                await self.close(code=CLOSE_FORBIDDEN)
                return
            groups.append(conversation_group(conversation_id))
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
        await self.accept()
        recovery_timer_ensure()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self._refuse("Binary frames are not supported.", repr((bytes_data or b"")[:80]))
            return
        try:
            frame = frame_parse(text_data)
        except FrameRefused as error:
            await self._refuse(str(error), repr(text_data[:80]), data=error.data)
            return
        try:
            await INBOUND[type(frame)](self, frame)
        except (services.ConversationError, ApprovalError, RunStateError) as error:
            # Not bad input: the state changed first (a lost race, a finished run).
            logger.info("user %s %s refused: %s", self.user.pk, frame.type, error)
            await self._answer(str(error), frame.model_dump())
            return
        except DjangoValidationError as error:
            await self._refuse("Invalid request: " + _validation_message(error), frame.type)
            return
        # Success clears a previous error box (and, for a message, the composer).
        sent = "sent" if isinstance(frame, MessageSendFrame) else ""
        await self.send(text_data=error_fragment("", composer=sent))

    async def _refuse(self, message: str, detail: str, *, data: Any = None) -> None:
        """Answer a frame that is not a valid request, and log it once (a warning)."""
        logger.warning("bad frame from user %s: %s (%s)", self.user.pk, message[:200], detail)
        await self._answer(message, data)

    async def _answer(self, message: str, data: Any) -> None:
        """The error box with ``message``; for a ``message.send``, marked refused (the
        page keeps the typed text in the composer)."""
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        sending = isinstance(data, dict) and data.get("type") == "message.send"
        await self.send(text_data=error_fragment(message, composer="refused" if sending else ""))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, except that a push goes straight to ``html_push``.

        Channels (4.2+) closes stale database connections before every handler, a
        hop to a thread and back; a push touches no database, and a streaming
        reply is ~25 pushes a second per page: at 100 streams the hops were 12% of
        daphne's CPU (``bench/scale.py``, ``docs/profiles/``). Frames from the
        browser still go through Channels' dispatch (their database calls run in
        ``project.dbthreads``, which closes stale connections itself).
        """
        if message["type"] == "html.push":
            await self.html_push(message)
            return
        await super().dispatch(message)

    async def html_push(self, event: dict[str, Any]) -> None:
        """Forward server-rendered HTML (from ``<app>/events.py``) to the browser."""
        await self.send(text_data=event["html"])
