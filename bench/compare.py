"""Benchmark 10: Compare mode, three answers in parallel against one answer alone.

Three ModelConfigs on the paced llmock provider (``chat``: 20 ms a chunk) answer
with the same 100 words. Each round sends, over the page's WebSocket, one plain
message to each model alone, one after another (the slowest of the three is the
baseline), then one Compare message to the three at once. From the rows: an
answer's wall time is its user message's ``created_at`` → its run's
``finished_at``; the three answers' wall time ends with the last of them (the
summary after them is timed on its own row).

    DATABASE_URL=... uv run python bench/compare.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, table, words

MODELS = ("compare-a", "compare-b", "compare-c")
WORDS = 100


def _single_ms(conversation_id: int) -> tuple[float, str]:
    from conversations.models import Run

    run = Run.objects.filter(conversation_id=conversation_id).select_related("user_message").get()
    if run.finished_at is None:
        return float("nan"), run.status
    return (run.finished_at - run.user_message.created_at).total_seconds() * 1000, run.status


def _compare_ms(conversation_id: int) -> tuple[float, float, list[str]]:
    """The three answers' wall time and the whole exchange's (with the summary), in ms."""
    from conversations.models import Run

    run = Run.objects.select_related("user_message").get(
        conversation_id=conversation_id, kind=Run.Kind.COMPARE
    )
    parts = list(run.parts.all())
    asked = run.user_message.created_at
    if run.finished_at is None or any(p.finished_at is None for p in parts):
        return float("nan"), float("nan"), [p.status for p in parts]
    answers = (max(p.finished_at for p in parts) - asked).total_seconds() * 1000
    whole = (run.finished_at - asked).total_seconds() * 1000
    return answers, whole, [p.status for p in [*parts, run]]


async def _wait_finished(conversation_id: int, *, wait: float = 120.0) -> None:
    from conversations.models import Run

    runs = Run.objects.filter(conversation_id=conversation_id)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if await runs.aexists() and not await runs.exclude(status__in=Run.TERMINAL).aexists():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"conversation {conversation_id} still running after {wait:.0f}s")


async def _read_until_finished(client, conversation_id: int) -> None:
    """Read the page's frames (as a browser does, so the server's sends never wait on
    this client) until every run of the conversation has ended."""

    async def read() -> None:
        while True:
            client.frames.append((time.monotonic(), await client.ws.recv()))

    reader = asyncio.create_task(read())
    try:
        await _wait_finished(conversation_id)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def one_round(env: BenchEnv, configs: list) -> tuple[list[float], float, float, list[str]]:
    from asgiref.sync import sync_to_async

    singles, statuses = [], []
    for config in configs:
        conversation_id = await sync_to_async(env.conversation)("compare", config)
        async with env.client("compare", conversation_id) as client:
            await client.send_message("Explain the tides")
            await _read_until_finished(client, conversation_id)
        ms, status = await sync_to_async(_single_ms)(conversation_id)
        singles.append(ms)
        statuses.append(status)
    conversation_id = await sync_to_async(env.conversation)("compare", configs[0])
    async with env.client("compare", conversation_id) as client:
        await client.send(
            {
                "type": "message.send",
                "conversation_id": conversation_id,
                "content": "Explain the tides",
                "compare": "on",
                "compare_models": [c.pk for c in configs],
            }
        )
        await _read_until_finished(client, conversation_id)
    answers, whole, compared = await sync_to_async(_compare_ms)(conversation_id)
    return singles, answers, whole, statuses + compared


async def _measure(env: BenchEnv, rounds: int, *, warmup: bool = True) -> Result:
    from asgiref.sync import sync_to_async

    configs = [await sync_to_async(env.model)(name, provider="chat") for name in MODELS]
    for name in MODELS:
        env.providers["chat"].reply(model=name, text=words(WORDS))
    if warmup:
        await one_round(env, configs)
    results = [await one_round(env, configs) for _ in range(rounds)]
    slowest = [max(r[0]) for r in results]
    answers = [r[1] for r in results]
    whole = [r[2] for r in results]
    ratios = [a / s for a, s in zip(answers, slowest, strict=True)]
    failed = sum(status != "completed" for r in results for status in r[3])
    rows = [
        ["slowest single answer (baseline, same round)", fmt(p50(slowest), 0), "1.00x"],
        ["3 answers in parallel (Compare): sent → last answer", fmt(p50(answers), 0),
         f"{p50(ratios):.2f}x"],
        ["the same, with the summary after them", fmt(p50(whole), 0),
         f"{p50(whole) / p50(slowest):.2f}x"],
        ["3 answers one after another (sum of the singles)",
         fmt(p50([sum(r[0]) for r in results]), 0),
         f"{p50([sum(r[0]) for r in results]) / p50(slowest):.2f}x"],
    ]  # fmt: skip
    ratio = p50(ratios)
    return Result(
        key="compare",
        title=f"10. Compare: 3 answers in parallel ({WORDS} words at 20 ms each, {rounds} rounds)",
        table=table(["what", "p50 ms", "/ slowest single"], rows),
        notes=[
            "Each round measures the three models alone first, then the Compare message, on "
            "the same stack; the ratio is taken per round, then its median.",
            "The summary is one more model call after the last answer (the same 100 words "
            "here), so it roughly doubles the exchange; it is not part of the target.",
            f"Runs not completed: {failed}.",
        ],
        checks=[
            (
                "3 parallel answers ≤ 1.3 x the slowest single answer (wall time)",
                f"{ratio:.2f}x",
                ratio <= 1.3,
            )
        ],
    )


def measure(env: BenchEnv, *, quick: bool = False, rounds: int = 5) -> Result:
    return asyncio.run(_measure(env, 1 if quick else rounds, warmup=not quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, rounds=args.rounds).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
