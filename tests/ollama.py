"""A fault-injecting stand-in for an Ollama server, for the tests of the Ollama route.

llmock has no Ollama endpoint, and Ollama's stream is not SSE but one JSON object
a line (``/api/chat``), ending with ``"done": true``. This server answers that
route with a scripted reply, a word a line, and can break the stream the ways
llmock breaks the others: ``truncate`` (end cleanly with no ``done``),
``disconnect`` (drop the connection), ``malformed`` (a line that is not JSON) and
``stall`` (stop sending for a while), each after ``after`` lines.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    """What the next streams do: ``text`` a word a line, then ``fault`` after ``after``
    lines (``None``: none), for ``times`` streams (then no fault)."""

    text: str = "Hello from Ollama"
    fault: str | None = None
    after: int = 0
    times: int = 1
    stall_seconds: float = 1.5
    requests: list[dict[str, Any]] = field(default_factory=list)


class _Disconnect(Exception):
    pass


class OllamaServer:
    """A real HTTP server on loopback in a daemon thread (uvicorn), like llmock's."""

    def __init__(self) -> None:
        self.script = Script()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def app(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body or b"{}")
        script = self.script
        script.requests.append(request)
        fault = script.fault if script.times > 0 else None
        script.times -= 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})  # fmt: skip
        words = script.text.split(" ")
        lines = [
            {"model": request.get("model"), "created_at": "2026-01-01T00:00:00Z",
             "message": {"role": "assistant", "content": w + (" " if i < len(words) - 1 else "")},
             "done": False}
            for i, w in enumerate(words)
        ]  # fmt: skip
        lines.append({"model": request.get("model"), "created_at": "2026-01-01T00:00:00Z",
                      "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "stop", "prompt_eval_count": 12,
                      "eval_count": len(words)})  # fmt: skip
        for index, line in enumerate(lines):
            data = json.dumps(line).encode() + b"\n"
            if fault is not None and index == script.after:
                if fault == "truncate":
                    break
                if fault == "disconnect":
                    raise _Disconnect
                if fault == "malformed":
                    data = data[: len(data) // 2] + b"\n"
                if fault == "stall":
                    await asyncio.sleep(script.stall_seconds)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def start(self) -> OllamaServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="critical", lifespan="off", interface="asgi3")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the Ollama stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
