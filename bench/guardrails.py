"""Benchmark 9: the time guardrails add per message, 5 active against none, same run.

In this process (Django on the stack's PostgreSQL and Redis), one step of a run
answering a user message is timed around ``run_advance``, as benchmark 6 does,
with the offline demo model (``TOLLGATE_DEMO_DELAY_MS=0``). Two users send the
same message, about 400 characters with an e-mail address and a phone number;
their steps alternate, so both see the same machine load:

- "none": no guardrail applies to this user;
- "5 guardrails": personal data (redact), a keyword list (warn) and a length
  limit (warn) on the user's input; personal data (redact) and the injection
  screen (warn) on the model's answer. The input's redaction rewrites the
  message and both stages write a ``guardrail.acted`` audit event: the cost of
  guardrails that act, not only of guardrails that look.

Added time = p50(5 guardrails) - p50(none). A second table times the checks
alone (``guardrails_run``, no database) on the same message.

    DATABASE_URL=... uv run python bench/guardrails.py [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table

MESSAGE = (
    "Hello, please draft a short reply to the supplier about invoice 48213. They asked "
    "whether we can pay by the end of the month and who to contact about the delivery. "
    "Tell them to write to jane.doe@example.com or call +44 20 7946 0958 during office "
    "hours, and that the order should ship within five business days after payment. "
    "Keep it polite and under one hundred words, please."
)

GUARDRAILS = (
    ("user_input", "pii", "redact", {}),
    ("user_input", "keywords", "warn", {"words": ["confidential", "password", "secret"]}),
    ("user_input", "length", "warn", {"max_chars": 2000}),
    ("model_output", "pii", "redact", {}),
    ("model_output", "injection", "warn", {}),
)


def _guard(user) -> None:
    from approvals.models import Guardrail

    for index, (stage, kind, action, config) in enumerate(GUARDRAILS):
        Guardrail.objects.create(
            name=f"bench {index}",
            user=user,
            stage=stage,
            kind=kind,
            action=action,
            config=config,
            order=index,
            description="benchmark",
        )


def _new_run(user, config) -> int:
    from conversations.models import Conversation, Message, Run

    conversation = Conversation.objects.create(owner=user, model_config=config, title="guard")
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=MESSAGE
    )
    return Run.objects.create(conversation=conversation, user_message=message).pk


def _checks_alone(rounds: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``guardrails_run`` on the message: input stage, output stage."""
    from approvals.guardrails import GuardrailRule, guardrails_run

    rules = [
        GuardrailRule(
            id=i, name=f"g{i}", stage=s, kind=k, action=a, config=c, order=i, description=""
        )
        for i, (s, k, a, c) in enumerate(GUARDRAILS)
    ]
    inputs, outputs = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        guardrails_run(rules=[r for r in rules if r.stage == "user_input"], text=MESSAGE)
        inputs.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        guardrails_run(rules=[r for r in rules if r.stage == "model_output"], text=MESSAGE * 3)
        outputs.append((time.perf_counter() - started) * 1000)
    return inputs, outputs


async def _measure(env: BenchEnv, steps: int, warmup: int) -> Result:
    from asgiref.sync import sync_to_async

    import conversations.engine as engine
    import project.pushes as pushes
    from conversations.models import Message, ModelConfig, Run

    plain = await sync_to_async(env.user)("guard-none", http=False)
    guarded = await sync_to_async(env.user)("guard-five", http=False)
    await sync_to_async(_guard)(guarded)
    config = await ModelConfig.objects.aget(litellm_model="demo/tollgate")
    times: dict[str, list[float]] = {"none": [], "five": []}
    failed = 0
    for index in range(warmup + steps):
        for key, user in (("none", plain), ("five", guarded)):
            run_id = await sync_to_async(_new_run)(user, config)
            started = time.perf_counter()
            await engine.run_advance(run_id=run_id, worker=f"bench-{key}-{index}")
            took = (time.perf_counter() - started) * 1000
            await pushes.pushes_drain()
            run = await Run.objects.aget(pk=run_id)
            if index < warmup:
                continue
            failed += run.status != Run.Status.COMPLETED
            times[key].append(took)
    redacted = await Message.objects.filter(
        conversation__owner=guarded, role=Message.Role.USER, content__contains="[EMAIL]"
    ).acount()
    inputs, outputs = await sync_to_async(_checks_alone)(200 if steps > 10 else 5)
    none, five = times["none"], times["five"]
    added = p50(five) - p50(none)
    rows = [
        ["no guardrails (baseline)", fmt(p50(none), 2), fmt(percentile(none, 0.99), 2), ""],
        [
            "5 guardrails",
            fmt(p50(five), 2),
            fmt(percentile(five, 0.99), 2),
            fmt(p50(five) / p50(none), 2) + "x",
        ],
        ["added per message (p50 difference)", fmt(added, 2), "", ""],
    ]
    checks_rows = [
        [
            "3 input checks on the message (CPU)",
            fmt(p50(inputs), 3),
            fmt(percentile(inputs, 0.99), 3),
        ],
        [
            "2 output checks on 3x the message (CPU)",
            fmt(p50(outputs), 3),
            fmt(percentile(outputs, 0.99), 3),
        ],
    ]
    return Result(
        key="guardrails",
        title=f"9. Guardrails per message ({steps} steps each, alternating, PostgreSQL)",
        table=table(["step (run_advance, demo model)", "p50 ms", "p99 ms", "p50 / none"], rows)
        + "\n\n"
        + table(["checks alone", "p50 ms", "p99 ms"], checks_rows),
        notes=[
            "Both users send the same message; their steps alternate. The guarded user's input "
            "is redacted (the message rewritten), and both stages audit what acted.",
            f"Guarded messages stored redacted: {redacted}; steps not completed: {failed}.",
        ],
        checks=[],
    )


def measure(env: BenchEnv, *, quick: bool = False, steps: int = 100) -> Result:
    return asyncio.run(_measure(env, 3 if quick else steps, 1 if quick else 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="3 steps each (a smoke run)")
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, steps=args.steps).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
