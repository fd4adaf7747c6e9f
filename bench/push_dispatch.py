"""CPU per push forwarded by the chat page's consumer: Channels' dispatch against
``PageConsumer.dispatch`` (issue 30, second profiling round).

Channels (4.2+) closes stale database connections, in a thread, before every
handler; ``PageConsumer.dispatch`` forwards an ``html.push`` without that hop.
Both are called on one consumer whose socket is a no-op, alternately, in one
process (no database, no channel layer):

    DATABASE_URL=... taskset -c 1 uv run python bench/push_dispatch.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("SECRET_KEY", "profile-only-" + "x" * 40)


async def _main(pushes: int = 5000) -> None:
    from channels.consumer import AsyncConsumer

    from conversations.consumers import PageConsumer

    consumer = PageConsumer()

    async def base_send(message: dict) -> None:
        pass

    consumer.base_send = base_send
    push = {"type": "html.push", "html": "<div id='x'>" + "w " * 60 + "</div>"}
    ways = [
        ("Channels' dispatch (a hop to a thread)", lambda: AsyncConsumer.dispatch(consumer, push)),
        ("PageConsumer.dispatch (no hop)", lambda: consumer.dispatch(push)),
    ]
    for label, call in ways * 2:
        for _ in range(200):
            await call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(pushes):
            await call()
        print(
            f"{label}: {(time.process_time() - cpu) / pushes * 1e6:.0f} µs CPU, "
            f"{(time.perf_counter() - wall) / pushes * 1e6:.0f} µs wall per push"
        )


if __name__ == "__main__":
    import django

    django.setup()
    asyncio.run(_main())
