"""Benchmark 1: time to first token added by Tollgate.

Tollgate: a WebSocket client (logged in over HTTP) sends ``message.send`` on a
fresh conversation and times the first streamed-delta frame. Through the API, in
the same run: ``POST /v1/chat/completions`` with ``stream`` (a new conversation
each time, an API key of the user's), timed to the first SSE chunk with text.
Baseline, interleaved sample by sample: a direct ``litellm.acompletion(stream=True)``
to the same llmock server (no chunk delay), timed to the first chunk with text.
Added TTFT = Tollgate - direct, per percentile.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate \\
      uv run python bench/ttft.py [--runs 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    KEY_ENV,
    BenchEnv,
    Result,
    bench_stack,
    fmt,
    is_delta,
    p50,
    percentile,
    table,
    words,
)

MODEL = "bench-ttft"


async def direct_ttft(env: BenchEnv, *, model: str = MODEL) -> float:
    """Seconds from calling litellm to its first text chunk (same kwargs as the gateway)."""
    import litellm

    started = time.monotonic()
    response = await litellm.acompletion(
        model=f"openai/{model}",
        api_base=env.providers["fast"].base_url,
        api_key=os.environ[KEY_ENV],
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=8192,
        max_retries=0,
        num_retries=0,
    )
    first = None
    async for chunk in response:
        if first is None and chunk.choices and getattr(chunk.choices[0].delta, "content", None):
            first = time.monotonic() - started
    return first if first is not None else float("nan")


async def tollgate_ttft(env: BenchEnv, config) -> tuple[float, str]:
    """Seconds from ``message.send`` to the first delta frame; and the run's end status."""
    from asgiref.sync import sync_to_async

    conversation_id = await sync_to_async(env.conversation)("ttft", config)
    async with env.client("ttft", conversation_id) as client:
        sent = await client.send_message("hello")
        first, _ = await client.until(is_delta, wait=60)
        status = await client.until_done(wait=60)
    return first - sent, status


async def api_ttft(env: BenchEnv, config, key: str) -> tuple[float, str]:
    """Seconds from ``POST /v1/chat/completions`` (``stream``) to the first SSE chunk
    with text; and how the stream ended (``stop``, else what came instead)."""
    import httpx

    body = {"model": config.name, "messages": [{"role": "user", "content": "hello"}]}
    first = None
    end = "no end"
    async with httpx.AsyncClient(base_url=env.stack.base_url, timeout=60) as http:
        started = time.monotonic()
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={**body, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                choice = (chunk.get("choices") or [{}])[0]
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.monotonic() - started
                if choice.get("finish_reason") or "error" in chunk:
                    end = choice.get("finish_reason") or "error"
    return (first if first is not None else float("nan")), end


def api_key(env: BenchEnv, user_name: str) -> str:
    from accounts.services import api_key_create

    _, key = api_key_create(user=env.user(user_name), name="bench", scopes=["chat"])
    return key


async def _measure(env: BenchEnv, runs: int, warmup: int) -> Result:
    from asgiref.sync import sync_to_async

    env.providers["fast"].reply(model=MODEL, text=words(20))
    config = await sync_to_async(env.model)(MODEL, provider="fast")
    await sync_to_async(env.user)("ttft")
    key = await sync_to_async(api_key)(env, "ttft")
    direct: list[float] = []
    tollgate: list[float] = []
    through_api: list[float] = []
    errors = api_errors = 0
    for index in range(warmup + runs):
        d = await direct_ttft(env)
        t, status = await tollgate_ttft(env, config)
        a, end = await api_ttft(env, config, key)
        if index < warmup:
            continue
        direct.append(d * 1000)
        tollgate.append(t * 1000)
        through_api.append(a * 1000)
        errors += status != "completed"
        api_errors += end != "stop"
    added = [t - d for t, d in zip(tollgate, direct, strict=True)]
    added_api = [a - d for a, d in zip(through_api, direct, strict=True)]
    rows = []
    for name, values in (
        ("direct litellm (baseline)", direct),
        ("Tollgate over WebSocket", tollgate),
        ("Tollgate over the API (SSE)", through_api),
    ):
        rows.append(
            [
                name,
                fmt(p50(values)),
                fmt(percentile(values, 0.99)),
                fmt(p50(values) / p50(direct), 2) + "x",
            ]
        )
    added_p50 = p50(tollgate) - p50(direct)
    added_p99 = percentile(tollgate, 0.99) - percentile(direct, 0.99)
    rows.append(["added by Tollgate (difference)", fmt(added_p50), fmt(added_p99), ""])
    rows.append(["added, per sample pair", fmt(p50(added)), fmt(percentile(added, 0.99)), ""])
    rows.append(
        [
            "added by the API (difference)",
            fmt(p50(through_api) - p50(direct)),
            fmt(percentile(through_api, 0.99) - percentile(direct, 0.99)),
            "",
        ]
    )
    rows.append(
        [
            "added by the API, per sample pair",
            fmt(p50(added_api)),
            fmt(percentile(added_api, 0.99)),
            "",
        ]
    )
    result = Result(
        key="ttft",
        title=f"1. Time to first token ({runs} runs, {warmup} warm-up)",
        table=table(["path", "p50 ms", "p99 ms", "p50 / baseline"], rows),
        notes=[
            "Each Tollgate sample is a fresh conversation: message.send over the socket, the "
            "run dispatched to the Celery worker, rate limits and budget admission, the llmock "
            "call, then the first coalesced delta frame back through Redis and daphne.",
            "Each API sample is a new conversation too: POST /v1/chat/completions with stream, "
            "the same run, and its text read from the database each time the conversation's "
            "group carries a push (api.replies): the first chunk is the text as first saved "
            "(FIRST_PERSIST_SECONDS into the stream), or the whole answer when it is stored first.",
            f"Runs not completed: {errors} (WebSocket), {api_errors} (API).",
        ],
    )
    ratio = p50(tollgate) / p50(direct)
    result.checks = [
        ("TTFT ≤ 3.0x direct litellm (p50)", f"{ratio:.2f}x", ratio <= 3.0),
        ("added TTFT ≤ 40 ms p99", f"{fmt(added_p99)} ms", added_p99 <= 40),
    ]
    return result


def measure(env: BenchEnv, *, quick: bool = False, runs: int = 200) -> Result:
    return asyncio.run(_measure(env, 2 if quick else runs, 1 if quick else 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2 runs (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, runs=args.runs).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
