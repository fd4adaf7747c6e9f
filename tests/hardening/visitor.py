"""A signed-up user of a running stack, from outside: HTTP and the page's WebSocket.

``Visitor`` signs up through the real form (allauth) with ``httpx``, then
posts forms the way the pages do (the CSRF token in ``X-CSRFToken``, htmx's
``HX-Request`` header when asked) and opens the page's socket with the
``websockets`` library, carrying the session cookie and the stack's origin
(the one origin its ``TOLLGATE_WEBSOCKET_ORIGINS`` accepts).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import websockets

from tests.topology import Stack

PASSWORD = "hardening-long-pass-phrase-42"  # test users only
#: Every inbound frame is answered with the page's error box: empty on success.
ERROR_BOX = 'id="chat-errors"'
ERROR_TEXT = re.compile(r'<p class="error-box">(.*?) <button', re.S)
CARD = re.compile(r'id="approval-(\d+)"[^>]*data-arguments-hash="([0-9a-f]{64})"')


def error_text(frame: str) -> str:
    """The message in an error-box frame ("" when the box was cleared)."""
    found = ERROR_TEXT.search(frame)
    return found.group(1).strip() if found else ""


class Visitor:
    """One user, signed up on ``stack`` as ``email`` (``await sign_up()`` first)."""

    def __init__(self, stack: Stack, email: str) -> None:
        self.stack = stack
        self.email = email
        self.http = httpx.AsyncClient(base_url=stack.base_url, follow_redirects=False, timeout=60)

    async def sign_up(self) -> Visitor:
        page = await self.http.get("/accounts/signup/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None, page.text[:300]
        answer = await self.http.post(
            "/accounts/signup/",
            data={
                "email": self.email,
                "password1": PASSWORD,
                "password2": PASSWORD,
                "csrfmiddlewaretoken": token.group(1),
            },
        )
        assert answer.status_code == 302, answer.text[:500]
        assert self.http.cookies.get("sessionid")
        return self

    @property
    def user_id(self) -> int:
        return self.stack.sql("SELECT id FROM accounts_user WHERE email = %s", (self.email,))[0][0]

    def headers(self, *, htmx: bool = False) -> dict[str, str]:
        headers = {"X-CSRFToken": self.http.cookies.get("csrftoken") or ""}
        if htmx:
            headers["HX-Request"] = "true"
        return headers

    async def post(
        self, path: str, data: Any = None, *, htmx: bool = False, **kwargs: Any
    ) -> httpx.Response:
        if data is not None:
            kwargs["data"] = data
        return await self.http.post(path, headers=self.headers(htmx=htmx), **kwargs)

    async def get(self, path: str, *, htmx: bool = False, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.headers(htmx=htmx), **kwargs)

    async def conversation_new(self) -> int:
        """A new, empty conversation with the default (demo) model; its id."""
        answer = await self.post("/c/new", {"content": ""})
        assert answer.status_code == 302, answer.text[:300]
        found = re.search(r"/c/(\d+)/$", answer.headers["location"])
        assert found, answer.headers["location"]
        return int(found.group(1))

    async def socket(self, conversation_id: int | None = None) -> Socket:
        url = self.stack.base_url.replace("http://", "ws://") + "/ws/"
        if conversation_id is not None:
            url += f"?conversation={conversation_id}"
        connection = await websockets.connect(
            url,
            additional_headers={"Cookie": f"sessionid={self.http.cookies['sessionid']}"},
            origin=self.stack.base_url,  # type: ignore[arg-type]
            max_size=None,
            open_timeout=60,
            ping_interval=None,
        )
        return Socket(connection)

    async def close(self) -> None:
        await self.http.aclose()


class Socket:
    """The page's socket: send frames, read the frames pushed back."""

    def __init__(self, connection: Any) -> None:
        self.ws = connection
        self.seen: list[str] = []

    async def send(self, frame: dict | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def until(self, predicate: Any, *, wait: float = 30.0) -> str:
        """Read frames until one satisfies ``predicate(text)``; return it."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {wait:.0f}s")
            async with asyncio.timeout(remaining):
                text = await self.ws.recv()
            self.seen.append(text)
            if predicate(text):
                return text

    async def answer(self, frame: dict | str | bytes, *, wait: float = 30.0) -> str:
        """Send ``frame`` and return the consumer's answer: its error box."""
        await self.send(frame)
        return await self.until(lambda text: ERROR_BOX in text, wait=wait)

    async def close(self) -> None:
        await self.ws.close()
