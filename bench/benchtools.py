"""A tool for the benchmarks only, loaded with ``TOLLGATE_EXTRA_TOOL_MODULES=bench.benchtools``.

``bench.sleep`` waits ``ms`` milliseconds (asyncio, no CPU) and answers "slept".
It is not read-only, so with no policy the gate asks a person (the approval
benchmark); an ``allow`` policy lets it run at once (the parallel-tools one).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import Field

from tools.registry import tool


@tool(
    name="bench.sleep",
    read_only=False,
    destructive=False,
    idempotent=True,
    open_world=False,
    timeout_seconds=30,
)
async def bench_sleep(ms: Annotated[int, Field(ge=0, le=10_000)] = 200) -> str:
    """Wait ``ms`` milliseconds, then answer "slept" (benchmarks only)."""
    await asyncio.sleep(ms / 1000)
    return "slept"
