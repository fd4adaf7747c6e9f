"""Hear channel-group messages from synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from channels.layers import get_channel_layer


class GroupListener:
    """A channel in ``groups``, on an event loop of its own, for synchronous tests.

    With the pub/sub channel layer (settings ``CHANNEL_LAYERS``) a message reaches
    only channels subscribed when it is published, on a loop that is running;
    ``async_to_sync`` would give every call a loop, and so a layer, of its own.
    Use as a context manager; ``receive()`` returns the next message (a dict) or
    raises ``TimeoutError``.
    """

    def __init__(self, *groups: str) -> None:
        self.groups = groups
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.layer = get_channel_layer()
        self.channel = ""

    def _run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> GroupListener:
        self.thread.start()
        self.channel = self._run(self.layer.new_channel())
        for group in self.groups:
            self._run(self.layer.group_add(group, self.channel))
        return self

    def receive(self, timeout: float = 5.0) -> dict:
        return self._run(asyncio.wait_for(self.layer.receive(self.channel), timeout), timeout + 5)

    def __exit__(self, *exc: object) -> None:
        try:
            for group in self.groups:
                self._run(self.layer.group_discard(group, self.channel))
            if hasattr(self.layer, "flush"):
                self._run(self.layer.flush())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
