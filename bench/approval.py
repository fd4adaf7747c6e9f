"""Benchmark 4: the approval round trip.

The provider (llmock) answers with one call of ``bench.sleep`` (a tool that is
not read-only, so with no policy the gate asks the user). Measured per run:

- tool call emitted → approval card received: from the end of llmock's
  response (its journal, ``time.monotonic()``, same clock as the client) to
  the frame that puts the card under the tool call;
- approve sent → tool started: from sending ``approval.decide`` over the
  socket to ``ToolInvocation.started_at`` (wall clock of the worker that
  claimed it, same machine).

Baseline, same run: a WebSocket round trip through daphne (a frame the
consumer answers at once: an unknown ``type`` gets an error fragment back).

    DATABASE_URL=... uv run python bench/approval.py [--runs 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    CARD_MARK,
    CARD_RE,
    BenchEnv,
    Result,
    bench_stack,
    fmt,
    p50,
    percentile,
    table,
)

MODEL = "bench-approve"


def _started_at(conversation_id: int) -> float | None:
    from tools.models import ToolInvocation

    for _ in range(200):
        row = (
            ToolInvocation.objects.filter(conversation_id=conversation_id)
            .values_list("started_at", flat=True)
            .first()
        )
        if row is not None:
            return row.timestamp()
        time.sleep(0.02)
    return None


async def one_round(env: BenchEnv, config) -> tuple[float, float, float, str]:
    """(card latency s, approve → started s, echo round trip s, end status)."""
    from asgiref.sync import sync_to_async

    provider = env.providers["fast"]
    provider.forget_requests()
    provider.reply(
        model=MODEL, times=1, tool_calls=[{"name": "bench__sleep", "arguments": {"ms": 0}}]
    )
    conversation_id = await sync_to_async(env.conversation)("approver", config)
    async with env.client("approver", conversation_id) as client:
        echo_sent = await client.send({"type": "bench.echo"})
        echo_back, _ = await client.until(lambda t: 'id="chat-errors"' in t, wait=30)
        await client.send_message("please run the tool")
        card_at, card = await client.until(lambda t: CARD_MARK in t, wait=60)
        emitted = [r for r in provider.requests() if r.get("model") == MODEL]
        emitted_at = emitted[0]["ended_at"] if emitted else float("nan")
        match = CARD_RE.search(card)
        if match is None:
            raise RuntimeError("approval card without id/hash")
        approve_wall = time.time()
        await client.send(
            {
                "type": "approval.decide",
                "approval_id": int(match.group(1)),
                "decision": "approve",
                "arguments_hash": match.group(2),
            }
        )
        started = await sync_to_async(_started_at)(conversation_id)
        status = await client.until_done(wait=60)
    to_start = (started - approve_wall) if started is not None else float("nan")
    return card_at - emitted_at, to_start, echo_back - echo_sent, status


async def _measure(env: BenchEnv, runs: int, warmup: int) -> Result:
    from asgiref.sync import sync_to_async

    config = await sync_to_async(env.model)(MODEL, provider="fast", tools=True)
    await sync_to_async(env.user)("approver")
    card, start, echo, errors = [], [], [], 0
    for index in range(warmup + runs):
        c, s, e, status = await one_round(env, config)
        if index >= warmup:
            card.append(c * 1000)
            start.append(s * 1000)
            echo.append(e * 1000)
            errors += status != "completed"
    rows = [
        ["WebSocket round trip (baseline)", fmt(p50(echo)), fmt(percentile(echo, 0.99)), "1.0x"],
        [
            "tool call emitted → card received",
            fmt(p50(card)),
            fmt(percentile(card, 0.99)),
            fmt(p50(card) / p50(echo), 1) + "x",
        ],
        [
            "approve sent → tool started",
            fmt(p50(start)),
            fmt(percentile(start, 0.99)),
            fmt(p50(start) / p50(echo), 1) + "x",
        ],
    ]
    return Result(
        key="approval",
        title=f"4. Approval round trip ({runs} runs, {warmup} warm-up)",
        table=table(["step", "p50 ms", "p99 ms", "p50 / baseline"], rows),
        notes=[
            "Card: the worker stores the answer, records and gates the call, creates the "
            "approval request, commits, renders the card and sends it to the user's group.",
            "Approve → started: the consumer decides (one transaction), the run step is sent "
            "to Celery on commit, the worker claims the run and the invocation.",
            f"Runs not completed: {errors}.",
        ],
        checks=[
            ("approval round trip ≤ 50 ms p50 (card)", f"{fmt(p50(card))} ms", p50(card) <= 50),
            (
                "approval round trip ≤ 50 ms p50 (approve → started)",
                f"{fmt(p50(start))} ms",
                p50(start) <= 50,
            ),
        ],
    )


def measure(env: BenchEnv, *, quick: bool = False, runs: int = 30) -> Result:
    return asyncio.run(_measure(env, 1 if quick else runs, 0 if quick else 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1 run (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, runs=args.runs).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
