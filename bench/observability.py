"""Benchmark 11: what tracing and metrics add to a step, on vs off, in one run.

In this process (Django on the stack's PostgreSQL and Redis), steps of runs answering
a user message with the offline demo model (``TOLLGATE_DEMO_DELAY_MS=0``) are timed
around ``conversations.engine.run_advance``, alternating two modes step by step so
that the machine's drift falls on both alike:

- off (the baseline): no subscriber to the loop events, no tracer provider;
- on: the metrics and the run's spans subscribed (``conversations.metrics``,
  ``conversations.tracing``) with an SDK tracer provider whose batch processor exports
  to a sink that drops the spans (the export itself happens on the processor's thread).

Figures: time to the first token (from ``run_advance`` to the first delta the engine
receives) and the whole step, p50 and p99 in milliseconds, and on / off.

    DATABASE_URL=... uv run python bench/observability.py [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table
from bench.loop import _new_run


class _Sink:
    """A span exporter that drops what it is given (the cost measured is ours)."""

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self):
        return None

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


async def _measure(env: BenchEnv, steps: int, warmup: int) -> Result:
    from asgiref.sync import sync_to_async

    import conversations.engine as engine
    import project.pushes as pushes
    from conversations import metrics, tracing
    from conversations.loopevents import loop_event
    from conversations.models import ModelConfig
    from project.telemetry import telemetry_provider

    user = await sync_to_async(env.user)("observability", http=False)
    config = await ModelConfig.objects.aget(litellm_model="demo/tollgate")
    provider = telemetry_provider(_Sink(), service="bench")  # type: ignore[arg-type]
    # The app subscribes both at start; the benchmark decides per step instead.
    saved = list(loop_event.receivers)
    loop_event.receivers.clear()
    loop_event.sender_receivers_cache.clear()

    def observe(event, **_signal):
        metrics.metrics_observe(event)
        tracing.tracing_observe(event, provider=provider)

    original = engine.stream_chat
    first: list[float] = []

    async def timed_stream_chat(*, on_delta=None, **kwargs):
        async def first_delta(piece: str) -> None:
            if not first:
                first.append(time.perf_counter())
            await on_delta(piece)

        return await original(on_delta=first_delta if on_delta else None, **kwargs)

    engine.stream_chat = timed_stream_chat
    figures: dict[str, dict[str, list[float]]] = {
        mode: {"ttft": [], "step": []} for mode in ("off", "on")
    }
    try:
        for index in range(2 * (warmup + steps)):
            mode = "on" if index % 2 else "off"
            if mode == "on":
                loop_event.connect(observe, weak=False, dispatch_uid="bench")
            run_id = await sync_to_async(_new_run)(user, config)
            first.clear()
            started = time.perf_counter()
            await engine.run_advance(run_id=run_id, worker=f"bench-{index}")
            total = time.perf_counter() - started
            await pushes.pushes_drain()
            loop_event.disconnect(dispatch_uid="bench")
            if index < 2 * warmup or not first:
                continue
            figures[mode]["ttft"].append((first[0] - started) * 1000)
            figures[mode]["step"].append(total * 1000)
    finally:
        engine.stream_chat = original
        loop_event.receivers[:] = saved
        loop_event.sender_receivers_cache.clear()
        provider.shutdown()
    rows = []
    ratios = {}
    for what, key in (("time to first token", "ttft"), ("whole step", "step")):
        off, on = figures["off"][key], figures["on"][key]
        ratios[key] = p50(on) / p50(off)
        rows.append(
            [f"{what}, off (baseline)", fmt(p50(off), 2), fmt(percentile(off, 0.99), 2), "1.0x"]
        )
        rows.append([f"{what}, tracing + metrics on", fmt(p50(on), 2), fmt(percentile(on, 0.99), 2),
                     fmt(ratios[key], 2) + "x"])  # fmt: skip
    return Result(
        key="observability",
        title=f"11. Tracing and metrics, on vs off ({steps} steps each, interleaved)",
        table=table(["what", "p50 ms", "p99 ms", "on / off"], rows),
        notes=[
            "Each step is a model call answered with text by the offline demo model, so the "
            "step is mostly Tollgate's own work: the ratio is an upper bound of what tracing "
            "and metrics add in front of a real model.",
            "On: the loop events of a step feed the Prometheus counters and record its spans "
            "(a model call, and the run's root at the end); spans are exported in batches on "
            "the SDK's thread to a sink.",
        ],
        checks=[
            (
                "time to first token, on ≤ 1.1x off (p50)",
                fmt(ratios["ttft"], 2) + "x",
                ratios["ttft"] <= 1.1,
            ),
            (
                "whole step (loop overhead included), on ≤ 1.1x off (p50)",
                fmt(ratios["step"], 2) + "x",
                ratios["step"] <= 1.1,
            ),
        ],
    )


def measure(env: BenchEnv, *, quick: bool = False, steps: int = 200) -> Result:
    return asyncio.run(_measure(env, 3 if quick else steps, 1 if quick else 20))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="3 steps each (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, steps=args.steps).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
