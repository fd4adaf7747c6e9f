"""Benchmark 3: many simultaneous streaming conversations.

For each level (50, 100, 200): that many users, each with one conversation
and one WebSocket, send ``message.send`` at the same moment to a paced
provider (llmock, 20 ms between chunks = 50 tokens/s, 60 tokens per answer).
Measured: the gap between consecutive delta frames of each stream (p50,
p99), time to first token under load, wall time until every run ended,
errors (runs not completed, socket errors, timeouts), and the peak RSS of
each process (web, worker, beat, provider), sampled
every 100 ms. Baseline: the provider's own chunk gap (20 ms) and one stream
alone.

    DATABASE_URL=... uv run python bench/concurrency.py [--levels 50,100,200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
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

MODEL = "bench-chat"
TOKENS = 60
CPU_COLUMNS = ("web", "worker", "provider", "client")


def machine_busy() -> float:
    """CPU seconds all CPUs of the machine have spent busy (not idle, not waiting)."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


class RssSampler(threading.Thread):
    """Peak RSS (MiB) per named process tree, sampled every ``interval`` seconds,
    and the CPU seconds each tree used between creation and ``stop()`` (``cpu``), and
    the whole machine's (``busy``, over ``wall`` seconds)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.stopping = threading.Event()
        self.cpu_start = self._cpu()
        self.cpu: dict[str, float] = {}
        # The whole machine's busy CPU seconds over the same window (bench/scale.py).
        self.busy_start, self.began = machine_busy(), time.monotonic()
        self.busy = self.wall = 0.0

    def _cpu(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, pid in self.pids.items():
            try:
                root = psutil.Process(pid)
                # The clients' process started the stack: its children are not its own.
                children = [] if name == "client" else root.children(recursive=True)
                procs = [root, *children]
                out[name] = sum(sum(p.cpu_times()[:2]) for p in procs)
            except psutil.NoSuchProcess:
                out[name] = 0.0
        return out

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        end = self._cpu()
        self.cpu = {name: end[name] - self.cpu_start.get(name, 0.0) for name in end}
        self.busy = machine_busy() - self.busy_start
        self.wall = time.monotonic() - self.began

    def run(self) -> None:
        import psutil

        while not self.stopping.is_set():
            for name, pid in self.pids.items():
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in procs) / 2**20
                except psutil.NoSuchProcess:
                    continue
                self.peak[name] = max(self.peak[name], rss)
            self.stopping.wait(self.interval)


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (first delta → run ended) open at one moment."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


async def one_stream(
    env: BenchEnv, name: str, conversation_id: int, start: asyncio.Event, wait: float
) -> dict:
    out: dict = {"gaps": [], "ttft": None, "status": "error", "end": None, "first": None}
    try:
        async with env.client(name, conversation_id) as client:
            await start.wait()
            sent = await client.send_message("hello")
            out["status"] = await client.until_done(wait=wait)
            out["end"] = time.monotonic()
            deltas = [t for t, text in client.frames if is_delta(text)]
            if deltas:
                out["ttft"] = deltas[0] - sent
                out["first"] = deltas[0]
                out["gaps"] = [b - a for a, b in itertools.pairwise(deltas)]
    except Exception as exc:  # counted as an error, named in the notes
        out["status"] = f"error: {type(exc).__name__}"
    return out


def coalesced(arrivals: list[float], interval: float = 0.05) -> list[float]:
    """Frame times if chunks arriving at ``arrivals`` were coalesced as Tollgate does:
    a frame at the first chunk, then at the first chunk ``interval`` s after the last."""
    frames: list[float] = []
    for t in arrivals:
        if not frames or t - frames[-1] >= interval:
            frames.append(t)
    return frames


async def direct_stream(http: Any, base_url: str, start: asyncio.Event) -> dict:
    """One stream straight from the provider (SSE over httpx, no Tollgate)."""
    out: dict = {"gaps": [], "ttft": None, "status": "error", "end": None, "first": None}
    await start.wait()
    sent = time.monotonic()
    arrivals: list[float] = []
    try:
        async with http.stream(
            "POST",
            base_url + "/chat/completions",
            json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer bench-key"},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line:
                    arrivals.append(time.monotonic())
        out["status"] = "completed" if arrivals else "error: no text"
    except Exception as exc:
        out["status"] = f"error: {type(exc).__name__}"
    if arrivals:
        frames = coalesced(arrivals)
        out.update(ttft=frames[0] - sent, first=frames[0], end=arrivals[-1])
        out["gaps"] = [b - a for a, b in itertools.pairwise(frames)]
    return out


GATEWAY_MODEL = "bench-gateway-cpu"


async def _gateway_cpu(env: BenchEnv, streams: int) -> tuple[list[list[str]], float]:
    """CPU milliseconds per stream of ``TOKENS`` chunks, read in this process from
    the unpaced provider four ways: plain httpx with one ``json.loads`` per chunk
    (the least any relay must do), the OpenAI SDK (what litellm calls for
    ``openai/`` models), Tollgate's gateway (``stream_chat``: litellm builds the
    request, the SDK's stream is read directly), and litellm's own streaming
    wrapper. Rows for the table, and the SDK's CPU ms per stream."""
    import json

    import httpx
    import litellm
    from asgiref.sync import sync_to_async
    from openai import AsyncOpenAI

    from conversations.gateway import stream_chat

    config = await sync_to_async(env.model)(GATEWAY_MODEL, provider="fast")
    provider = env.providers["fast"]
    provider.reply(model=GATEWAY_MODEL, text=words(TOKENS))
    messages = [{"role": "user", "content": "hi"}]

    async def via_litellm() -> None:
        response = await litellm.acompletion(
            model=f"openai/{GATEWAY_MODEL}", api_base=provider.base_url, api_key="bench-key",
            messages=messages, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        async for _ in response:
            pass

    sdk = AsyncOpenAI(base_url=provider.base_url, api_key="bench-key")

    async def via_sdk() -> None:
        response = await sdk.chat.completions.create(
            model=GATEWAY_MODEL, messages=messages, stream=True
        )
        async for _ in response:
            pass

    async def via_gateway() -> None:
        async def on_delta(_: str) -> None:
            pass

        await stream_chat(config=config, messages=messages, on_delta=on_delta)

    http = httpx.AsyncClient()

    async def via_httpx() -> None:
        async with http.stream(
            "POST",
            provider.base_url + "/chat/completions",
            json={"model": GATEWAY_MODEL, "stream": True, "messages": messages},
            headers={"Authorization": "Bearer bench-key"},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    json.loads(line[6:])

    rows, base, sdk_ms = [], None, 0.0
    try:
        for label, read in [
            ("httpx, one json.loads per chunk (baseline)", via_httpx),
            ("OpenAI SDK (what litellm calls)", via_sdk),
            ("Tollgate's gateway (stream_chat, what the worker calls)", via_gateway),
            ("litellm.acompletion, through its stream wrapper", via_litellm),
        ]:
            for _ in range(3):
                await read()
            started = time.process_time()
            for _ in range(streams):
                await read()
            per_stream = (time.process_time() - started) / streams * 1000
            base = base or per_stream
            if read is via_sdk:
                sdk_ms = per_stream
            rows.append([label, fmt(per_stream, 2), fmt(per_stream / base, 1) + "x"])
    finally:
        await http.aclose()
        await sdk.close()
    return rows, sdk_ms


def _failure_causes(conversation_ids: list[int]) -> dict[int, str]:
    """The stored error of each conversation's failed run (what the page shows)."""
    from conversations.models import Run

    rows = Run.objects.filter(conversation_id__in=conversation_ids, status=Run.Status.FAILED)
    return {run.conversation_id: run.error[:120] for run in rows}


async def _level(env: BenchEnv, config, level: int, wait: float, direct: bool = False) -> dict:
    """``level`` streams at once through Tollgate, or with ``direct`` straight from
    the provider (the same-run baseline of what llmock and this machine deliver)."""
    import httpx
    from asgiref.sync import sync_to_async

    def setup() -> list[tuple[str, int]]:
        pairs = []
        for i in range(level):
            name = f"c{level}-{i}"
            env.user(name, http=False)
            pairs.append((name, env.conversation(name, config)))
        return pairs

    start = asyncio.Event()
    http = httpx.AsyncClient(
        timeout=wait, limits=httpx.Limits(max_connections=level + 10, max_keepalive_connections=0)
    )
    if direct:
        pairs = []
        base_url = env.providers["chat"].base_url
        tasks = [asyncio.create_task(direct_stream(http, base_url, start)) for _ in range(level)]
    else:
        pairs = await sync_to_async(setup)()
        tasks = [asyncio.create_task(one_stream(env, n, c, start, wait)) for n, c in pairs]
    await asyncio.sleep(1.0)  # let every socket connect first
    # Every process of the stack by name (web, worker, beat, and a second worker
    # when bench/scale.py started one), the provider, and this process (the clients).
    sampler = RssSampler(
        {
            **{name: process.pid for name, process in env.stack.processes.items()},
            "provider": env.providers["chat"].process.pid,
            "client": os.getpid(),
        }
    )
    sampler.start()
    began = time.monotonic()
    start.set()
    results = await asyncio.gather(*tasks)
    sampler.stop()
    await http.aclose()
    failed = (
        []
        if direct
        else [c for (_, c), r in zip(pairs, results, strict=True) if r["status"] == "failed"]
    )
    if failed:
        causes = await sync_to_async(_failure_causes)(failed)
        for (_, conversation_id), result in zip(pairs, results, strict=True):
            if conversation_id in causes:
                result["status"] = f"failed ({causes[conversation_id]})"
    ends = [r["end"] for r in results if r["end"] is not None]
    return {
        "began": began,
        "peak": peak_overlap([(r["first"], r["end"]) for r in results if r["first"] and r["end"]]),
        "gaps": [g * 1000 for r in results for g in r["gaps"]],
        "ttft": [r["ttft"] * 1000 for r in results if r["ttft"] is not None],
        "errors": [r["status"] for r in results if r["status"] != "completed"],
        "wall": (max(ends) - began) if ends else float("nan"),
        "rss": sampler.peak,
        "cpu": sampler.cpu,
        "busy": sampler.busy,
        "busy_wall": sampler.wall,
    }


async def _measure(env: BenchEnv, levels: list[int], wait: float) -> Result:
    from asgiref.sync import sync_to_async

    env.providers["chat"].reply(model=MODEL, text=words(TOKENS))
    config = await sync_to_async(env.model)(MODEL, provider="chat")
    rows = []
    checks = []
    errors_seen = []
    top = max(levels)
    for level, direct in [(1, False), (top, True), *((level, False) for level in levels)]:
        data = await _level(env, config, level, wait, direct=direct)
        gaps, ttft, rss, cpu = data["gaps"], data["ttft"], data["rss"], data["cpu"]
        if level == top and not direct:
            # The provider and the benchmark's WebSocket clients at the top level, and
            # Tollgate's two processes (web, worker) beside them.
            others_cpu = cpu.get("provider", 0.0) + cpu.get("client", 0.0)
            tollgate_cpu = cpu.get("web", 0.0) + cpu.get("worker", 0.0)
        label = (
            f"{level} straight from llmock (baseline: no Tollgate)"
            if direct
            else "1 (baseline: one stream alone)"
            if level == 1
            else str(level)
        )
        rows.append(
            [
                label,
                str(data["peak"]),
                fmt(p50(gaps), 0),
                fmt(percentile(gaps, 0.99), 0),
                fmt(p50(ttft), 0),
                fmt(percentile(ttft, 0.99), 0),
                fmt(data["wall"], 1),
                str(len(data["errors"])),
                *(fmt(rss[k], 0) for k in ("web", "worker", "beat", "provider")),
                " / ".join(fmt(cpu.get(k, 0.0), 1) for k in CPU_COLUMNS),
            ]
        )
        if data["errors"]:
            errors_seen.append(f"{level}: " + ", ".join(sorted(set(data["errors"]))))
        if level == top and not direct:
            gap99 = percentile(gaps, 0.99)
            checks.append(
                (
                    f"{level} concurrent streams: p99 frame gap ≤ 250 ms and no errors",
                    f"{fmt(gap99, 0)} ms, {len(data['errors'])} errors, but at most "
                    f"{data['peak']} streams were streaming at once",
                    gap99 <= 250 and not data["errors"] and data["peak"] >= 0.9 * level,
                )
            )
    gateway, sdk_ms = await _gateway_cpu(env, streams=5 if wait < 100 else 50)
    # What is left for Tollgate per stream if every frame of the top level is to
    # arrive within 250 ms of its chunk: the machine's cores over the stream's length
    # plus 250 ms, less what the provider and the clients used at that level.
    cores = os.cpu_count() or 1
    headroom_ms = (cores * (TOKENS * 0.02 + 0.25) - others_cpu) / top * 1000
    return Result(
        key="concurrency",
        title=f"3. Concurrent streaming conversations ({TOKENS} tokens each at 50 tokens/s)",
        table=table(
            [
                "streams",
                "streaming at once (peak)",
                "frame gap p50 ms",
                "frame gap p99 ms",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "wall s",
                "errors",
                "web RSS MiB",
                "worker RSS MiB",
                "beat RSS MiB",
                "llmock RSS MiB",
                "CPU s: web / worker / llmock / clients",
            ],
            rows,
        )
        + f"\n\nCPU to read one {TOKENS}-chunk stream, in one process (unpaced llmock):\n\n"
        + table(["read with", "CPU ms per stream", "/ baseline"], gateway),
        notes=[
            "Baseline gap: the provider sends a chunk every 20 ms; Tollgate coalesces to at "
            "most one frame per 50 ms, so 50 ms is the floor of the frame gap. A stream alone "
            f"takes {TOKENS} x 20 ms = {TOKENS * 0.02:.1f} s.",
            f"Second baseline: {top} clients reading llmock's SSE directly (httpx, no Tollgate; "
            "the Tollgate stack idle), their chunks coalesced into 50 ms frames the same way: "
            "what the provider and this machine deliver at that level with nothing in between. "
            "Its TTFT is from the request, not from a message.send.",
            "Worker RSS is the Celery worker process (with any pool processes). 'Streaming at "
            "once' counts streams between their first delta and their end at the busiest "
            "moment: a stream waiting for the worker to start it is not streaming, so the "
            "frame-gap target alone says nothing about concurrency.",
            f"What the machine leaves for Tollgate at {top} streams: {cores} cores x "
            f"({TOKENS * 0.02:.1f} s + 0.25 s) less the {others_cpu:.1f} CPU s llmock and the "
            f"clients used at that level = "
            + (
                f"{headroom_ms:.1f} ms of CPU per stream"
                if headroom_ms > 0
                else "nothing (they alone used more than the cores give in that time)"
            )
            + " for the web and the worker together, which used "
            f"{tollgate_cpu / top * 1000:.1f} ms per stream; the OpenAI SDK alone needs "
            f"{sdk_ms:.1f} ms to read one reply (CPU table).",
            *(["Errors: " + "; ".join(errors_seen)] if errors_seen else []),
        ],
        checks=checks,
    )


def measure(env: BenchEnv, *, quick: bool = False, levels: list[int] | None = None) -> Result:
    levels = [2] if quick else (levels or [50, 100, 200])
    return asyncio.run(_measure(env, levels, wait=60 if quick else 180))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="50,100,200")
    parser.add_argument("--quick", action="store_true", help="2 streams (a smoke run)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]
    with bench_stack() as env:
        print(measure(env, quick=args.quick, levels=levels).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
