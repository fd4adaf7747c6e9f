"""Benchmark 6: agent-loop overhead per step, without LLM time, on PostgreSQL.

In this process (Django on the stack's PostgreSQL and Redis), one step of a
run answering a user message is timed around ``run_advance``: lease claim,
history, tools offered, context fit, rate limits and budget admission, the
assistant message, the streamed frames (persisted text, channel-layer sends),
storing the answer, settling usage, the audit event, the transition. The
model is the built-in offline demo (``TOLLGATE_DEMO_DELAY_MS=0``).

Method: ``conversations.engine.stream_chat`` is wrapped to time the gateway
call; the time spent inside its ``on_delta`` callbacks (the engine's own
frame work) is added back, and so is the time the outbox spends rendering the
step's pushes on the loop while the model streams: overhead = step - (gateway
- callbacks - pushes rendered meanwhile), i.e. everything but litellm and the
model. The pushes' render time per step is also reported on its own. Baseline,
same run: one minimal state transition — ``SELECT … FOR UPDATE`` of the run
row, ``UPDATE``, ``COMMIT``.

    DATABASE_URL=... uv run python bench/loop.py [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table

PHASES = (
    "_step_begin",
    "_persist_partial",
    "_store_answer",
)


def _instrument(engine, spent: dict[str, float]) -> dict:
    """Wrap the engine's phases with timers (``spent[name]`` seconds); return originals."""
    import functools
    import inspect

    originals = {name: getattr(engine, name) for name in PHASES}
    for name, fn in originals.items():
        if inspect.iscoroutinefunction(fn) or hasattr(fn, "func"):  # SyncToAsync wrapper

            async def timed_async(*args, __fn=fn, __name=name, **kwargs):
                started = time.perf_counter()
                try:
                    return await __fn(*args, **kwargs)
                finally:
                    spent[__name] = spent.get(__name, 0.0) + time.perf_counter() - started

            setattr(engine, name, timed_async)
        else:

            @functools.wraps(fn)
            def timed_sync(*args, __fn=fn, __name=name, **kwargs):
                started = time.perf_counter()
                try:
                    return __fn(*args, **kwargs)
                finally:
                    spent[__name] = spent.get(__name, 0.0) + time.perf_counter() - started

            setattr(engine, name, timed_sync)
    return originals


def _new_run(user, config):
    from conversations.models import Conversation, Message, Run

    conversation = Conversation.objects.create(owner=user, model_config=config, title="loop")
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="Say something short."
    )
    return Run.objects.create(conversation=conversation, user_message=message).pk


def _transition(run_id: int) -> None:
    from django.db import transaction

    from conversations.models import Run

    with transaction.atomic():
        run = Run.objects.select_for_update(no_key=True).get(pk=run_id)
        run.lease_owner = "bench"
        run.save(update_fields=["lease_owner"])


async def _measure(
    env: BenchEnv, steps: int, warmup: int, profile: bool = False, breakdown: bool = False
) -> Result:
    from asgiref.sync import sync_to_async

    import conversations.engine as engine
    import project.pushes as pushes
    from conversations.models import ModelConfig, Run

    user = await sync_to_async(env.user)("loop", http=False)
    config = await ModelConfig.objects.aget(litellm_model="demo/tollgate")
    original = engine.stream_chat
    original_build_all = pushes._build_all
    spent = {"gateway": 0.0, "callbacks": 0.0, "pushes": 0.0, "pushes_in_gateway": 0.0}
    in_gateway = in_callback = False

    def timed_build_all(builds):
        # The outbox renders pushes on this loop while the step awaits (here, mostly
        # while the demo model streams): that time is the engine's, not the model's.
        started = time.perf_counter()
        try:
            return original_build_all(builds)
        finally:
            took = time.perf_counter() - started
            spent["pushes"] += took
            if in_gateway and not in_callback:  # (in a callback: counted there)
                spent["pushes_in_gateway"] += took

    async def timed_stream_chat(*, on_delta=None, **kwargs):
        nonlocal in_gateway

        async def timed_delta(piece: str) -> None:
            nonlocal in_callback
            started = time.perf_counter()
            in_callback = True
            try:
                await on_delta(piece)
            finally:
                in_callback = False
                spent["callbacks"] += time.perf_counter() - started

        started = time.perf_counter()
        in_gateway = True
        try:
            return await original(on_delta=timed_delta if on_delta else None, **kwargs)
        finally:
            in_gateway = in_callback = False
            spent["gateway"] += time.perf_counter() - started

    engine.stream_chat = timed_stream_chat
    pushes._build_all = timed_build_all
    phases: dict[str, float] = {}
    originals = _instrument(engine, phases) if breakdown else {}
    profiler = None
    overhead, totals, gateway, baseline, rendered, failed = [], [], [], [], [], 0
    try:
        for index in range(warmup + steps):
            run_id = await sync_to_async(_new_run)(user, config)
            spent.update(gateway=0.0, callbacks=0.0, pushes=0.0, pushes_in_gateway=0.0)
            if profile and index == warmup:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled")
                profiler.start()
            started = time.perf_counter()
            await engine.run_advance(run_id=run_id, worker=f"bench-{index}")
            total = time.perf_counter() - started
            await pushes.pushes_drain()  # the step's pushes, rendered and sent
            t0 = time.perf_counter()
            await sync_to_async(_transition)(run_id)
            transition = time.perf_counter() - t0
            status = (await Run.objects.aget(pk=run_id)).status
            if index < warmup:
                phases.clear()
                continue
            for key in ("callbacks", "pushes_in_gateway"):
                phases[key] = phases.get(key, 0.0) + spent[key]
            failed += status != Run.Status.COMPLETED
            llm = spent["gateway"] - spent["callbacks"] - spent["pushes_in_gateway"]
            overhead.append((total - llm) * 1000)
            rendered.append(spent["pushes"] * 1000)
            totals.append(total * 1000)
            gateway.append(llm * 1000)
            baseline.append(transition * 1000)
    finally:
        engine.stream_chat = original
        pushes._build_all = original_build_all
        for name, fn in originals.items():
            setattr(engine, name, fn)
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=True, show_all=False))
    base = p50(baseline)
    rows = [
        [
            "one state transition (baseline)",
            fmt(base, 2),
            fmt(percentile(baseline, 0.99), 2),
            "1.0x",
        ],
        [
            "whole step (run_advance)",
            fmt(p50(totals), 2),
            fmt(percentile(totals, 0.99), 2),
            fmt(p50(totals) / base, 1) + "x",
        ],
        [
            "of which litellm + demo model",
            fmt(p50(gateway), 2),
            fmt(percentile(gateway, 0.99), 2),
            "",
        ],
        [
            "loop overhead per step",
            fmt(p50(overhead), 2),
            fmt(percentile(overhead, 0.99), 2),
            fmt(p50(overhead) / base, 1) + "x",
        ],
        [
            "pushes rendered for the browser (CPU, per step)",
            fmt(p50(rendered), 2),
            fmt(percentile(rendered, 0.99), 2),
            "",
        ],
    ]
    if breakdown:
        timed = ", ".join(f"{k} {v / steps * 1000:.1f}" for k, v in phases.items())
        print(f"mean ms per step by phase: {timed}")
    return Result(
        key="loop",
        title=f"6. Agent-loop overhead per step ({steps} steps, PostgreSQL)",
        table=table(["what", "p50 ms", "p99 ms", "p50 / baseline"], rows),
        notes=[
            "A step here is the common one: a model call answering with text, then completed. "
            "Tool phases (gate, execute) are timed end to end in benchmarks 4 and 5.",
            "The outbox renders a step's pushes (its run status and messages, as HTML) on "
            "the same loop once the step awaits something: the model's reply, a database "
            "call. Rendering inside the step's time counts as overhead (not as the model's "
            "time); the claim's pushes render while the model streams, the stored "
            "answer's after the step.",
            f"Steps not completed: {failed}.",
        ],
        checks=[
            (
                "loop overhead ≤ 5x one baseline transaction (p50)",
                f"{fmt(p50(overhead), 2)} ms = {fmt(p50(overhead) / base, 1)}x",
                p50(overhead) <= 5 * base,
            )
        ],
    )


def measure(
    env: BenchEnv,
    *,
    quick: bool = False,
    steps: int = 200,
    profile: bool = False,
    breakdown: bool = False,
) -> Result:
    return asyncio.run(_measure(env, 3 if quick else steps, 1 if quick else 20, profile, breakdown))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="3 steps (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile")
    parser.add_argument("--breakdown", action="store_true", help="print time per engine phase")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        result = measure(
            env, quick=args.quick, steps=args.steps, profile=args.profile, breakdown=args.breakdown
        )
        print(result.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
