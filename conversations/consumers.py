"""The page's single WebSocket (``/ws/``, optional ``?conversation=<id>``).

Joins ``user.<id>`` always and ``conversation.<id>`` only for a conversation the
user owns (else the connection is closed with 4403). Anonymous users are
closed with 4401. Outbound: ``html.push`` group messages are forwarded as text
frames (htmx's ws extension swaps them). Inbound: JSON frames validated with
pydantic and routed through ``INBOUND`` (``type`` → model + handler); anything
else gets an inline error fragment, a log line, and changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import ValidationError as DjangoValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from approvals.services import ApprovalError, approval_decide_from_payload
from conversations import services
from conversations.dispatch import recovery_timer_ensure
from conversations.events import error_fragment
from conversations.models import Conversation
from project.dbthreads import db_async, db_concurrent
from project.pushes import conversation_group, user_group

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
MAX_FRAME_CHARS = 1_000_000


class Frame(BaseModel):
    """Base of inbound frames: unknown keys (htmx adds ``HEADERS``) are ignored."""

    model_config = ConfigDict(extra="ignore")


class MessageSendFrame(Frame):
    conversation_id: int
    content: str = Field(max_length=MAX_FRAME_CHARS)


class RunCancelFrame(Frame):
    run_id: int


class ApprovalDecideFrame(Frame):
    """An approval card's form sent over the socket; the fields are checked by
    approvals' ``DecisionForm`` (``approval_decide_from_payload``)."""

    model_config = ConfigDict(extra="allow")
    approval_id: int


Handler = Callable[["PageConsumer", Any], Awaitable[None]]


async def _db(fn: Callable[..., Any], /, **kwargs: Any) -> Any:
    """A service call from the consumer, on the loop's default executor
    (``db_concurrent``), so many sockets' calls do not queue behind one thread."""
    with db_concurrent():
        return await db_async(fn)(**kwargs)


async def _message_send(consumer: PageConsumer, frame: MessageSendFrame) -> None:
    await _db(
        services.message_send,
        user=consumer.user,
        conversation_id=frame.conversation_id,
        content=frame.content,
    )


async def _run_cancel(consumer: PageConsumer, frame: RunCancelFrame) -> None:
    await _db(services.run_cancel, user=consumer.user, run_id=frame.run_id)


async def _approval_decide(consumer: PageConsumer, frame: ApprovalDecideFrame) -> None:
    client = consumer.scope.get("client") or [None]
    await _db(
        approval_decide_from_payload,
        user=consumer.user,
        payload=frame.model_dump(),
        ip=client[0],
    )


#: Inbound frame ``type`` → (pydantic model, handler).
INBOUND: dict[str, tuple[type[Frame], Handler]] = {
    "message.send": (MessageSendFrame, _message_send),
    "run.cancel": (RunCancelFrame, _run_cancel),
    "approval.decide": (ApprovalDecideFrame, _approval_decide),
}


def _owns_sync(*, user: Any, conversation_id: int) -> bool:
    return Conversation.objects.filter(pk=conversation_id, owner=user).exists()


async def _owns(user: Any, conversation_id: int) -> bool:
    return await _db(_owns_sync, user=user, conversation_id=conversation_id)


class PageConsumer(AsyncWebsocketConsumer):
    """One per page; thin: authorise, validate, call a service, forward HTML."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.joined: list[str] = []
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        raw = (query.get("conversation") or [""])[0]
        groups = [user_group(self.user.pk)]
        if raw:
            if not raw.isdigit() or not await _owns(self.user, int(raw)):
                logger.warning("user %s may not join conversation %r", self.user.pk, raw)
                await self.close(code=CLOSE_FORBIDDEN)
                return
            groups.append(conversation_group(int(raw)))
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
            await self._reject("Binary frames are not supported.", repr(bytes_data)[:80])
            return
        if len(text_data) > MAX_FRAME_CHARS + 10_000:
            await self._reject("That message is too large.", f"{len(text_data)} chars")
            return
        try:
            data = json.loads(text_data)
        except ValueError:
            await self._reject("The page sent something that is not JSON.", text_data[:80])
            return
        if not isinstance(data, dict) or data.get("type") not in INBOUND:
            kind = data.get("type") if isinstance(data, dict) else type(data).__name__
            await self._reject(f"Unknown request type {str(kind)[:40]!r}.", text_data[:80])
            return
        model, handler = INBOUND[data["type"]]
        try:
            frame = model.model_validate(data)
        except ValidationError as error:
            fields = ", ".join(str(e["loc"][0]) for e in error.errors() if e.get("loc"))
            await self._reject(f"Invalid request: check {fields or 'the fields'}.", text_data[:80])
            return
        try:
            await handler(self, frame)
        except (services.ConversationError, ApprovalError) as error:
            logger.info("user %s %s rejected: %s", self.user.pk, data["type"], error)
            await self.send(text_data=error_fragment(str(error)))
            return
        except DjangoValidationError as error:
            logger.info("user %s %s invalid: %s", self.user.pk, data["type"], error.messages)
            await self.send(
                text_data=error_fragment("Invalid request: " + " ".join(error.messages))
            )
            return
        # Success clears a previous error box.
        await self.send(text_data=error_fragment(""))

    async def _reject(self, message: str, detail: str) -> None:
        logger.warning("bad frame from user %s: %s (%s)", self.user.pk, message, detail)
        await self.send(text_data=error_fragment(message))

    async def html_push(self, event: dict[str, Any]) -> None:
        """Forward server-rendered HTML (from ``<app>/events.py``) to the browser."""
        await self.send(text_data=event["html"])
