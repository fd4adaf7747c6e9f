"""Benchmark 5: ten approved tool calls in one turn run concurrently.

The provider (llmock) answers with 10 calls of ``bench.sleep`` (200 ms each);
an ``ApprovalPolicy`` allows the tool for the bench user, so the gate approves
all ten at once and the worker runs them. From the ``ToolInvocation`` rows:
execution wall time (first ``started_at`` → last ``finished_at``) and turn
wall time (calls recorded → last finished), against the slowest single call
(its ``duration_ms``) and 10 x 200 ms run one after another.

    DATABASE_URL=... uv run python bench/parallel.py [--turns 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, table

MODEL = "bench-parallel"
CALLS = 10
SLEEP_MS = 200


def _turn_times(conversation_id: int) -> tuple[float, float, float, int]:
    from tools.models import ToolInvocation

    rows = list(ToolInvocation.objects.filter(conversation_id=conversation_id))
    started = [r.started_at for r in rows if r.started_at]
    finished = [r.finished_at for r in rows if r.finished_at]
    if len(finished) < CALLS:
        return float("nan"), float("nan"), float("nan"), len(finished)
    execution = (max(finished) - min(started)).total_seconds() * 1000
    turn = (max(finished) - min(r.created_at for r in rows)).total_seconds() * 1000
    slowest = float(max(r.duration_ms or 0 for r in rows))
    return execution, turn, slowest, sum(r.status == "succeeded" for r in rows)


async def one_turn(env: BenchEnv, config) -> tuple[float, float, float, int, str]:
    from asgiref.sync import sync_to_async

    calls = [{"name": "bench__sleep", "arguments": {"ms": SLEEP_MS}} for _ in range(CALLS)]
    env.providers["fast"].reply(model=MODEL, times=1, tool_calls=calls)
    conversation_id = await sync_to_async(env.conversation)("parallel", config)
    async with env.client("parallel", conversation_id) as client:
        await client.send_message("run the tools")
        status = await client.until_done(wait=120)
    return (*await sync_to_async(_turn_times)(conversation_id), status)


async def _measure(env: BenchEnv, turns: int, *, warmup: bool = True) -> Result:
    from asgiref.sync import sync_to_async

    from approvals.models import ApprovalPolicy

    config = await sync_to_async(env.model)(MODEL, provider="fast", tools=True)
    user = await sync_to_async(env.user)("parallel")
    await ApprovalPolicy.objects.acreate(user=user, tool_pattern="bench.sleep", action="allow")
    if warmup:
        await one_turn(env, config)
    results = [await one_turn(env, config) for _ in range(turns)]
    execution = [r[0] for r in results]
    turn = [r[1] for r in results]
    slowest = [r[2] for r in results]
    ok = sum(r[3] for r in results)
    serial = CALLS * SLEEP_MS
    rows = [
        ["slowest single call (baseline)", fmt(p50(slowest), 0), "1.00x", ""],
        ["10 calls one after another", str(serial), f"{serial / p50(slowest):.2f}x", ""],
        [
            "execution: first start → last finish",
            fmt(p50(execution), 0),
            f"{p50(execution) / p50(slowest):.2f}x",
            f"{p50(execution) / serial:.2f}",
        ],
        [
            "turn: calls recorded → last finish",
            fmt(p50(turn), 0),
            f"{p50(turn) / p50(slowest):.2f}x",
            f"{p50(turn) / serial:.2f}",
        ],
    ]
    ratio = p50(execution) / p50(slowest)
    return Result(
        key="parallel",
        title=f"5. Parallel tools ({CALLS} approved calls of a {SLEEP_MS} ms tool, {turns} turns)",
        table=table(["what", "p50 ms", "/ slowest call", "/ serial"], rows),
        notes=[
            "The turn figure adds the gate (policy allow for each call), the commit and the "
            "Celery round trip that starts the execution step.",
            f"Calls succeeded: {ok} of {CALLS * turns}; runs not completed: "
            f"{sum(r[4] != 'completed' for r in results)}.",
        ],
        checks=[
            ("parallel tools ≤ 1.2 x the slowest call (execution)", f"{ratio:.2f}x", ratio <= 1.2)
        ],
    )


def measure(env: BenchEnv, *, quick: bool = False, turns: int = 5) -> Result:
    return asyncio.run(_measure(env, 1 if quick else turns, warmup=not quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one turn (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, turns=args.turns).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
