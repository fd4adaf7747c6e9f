"""Benchmark 7: a 1,000-message conversation page.

In this process, with Django's test client against the stack's PostgreSQL:
the chat page (``/c/<id>/``) of a conversation of 1,000 messages (500
exchanges: a user message and a run with its Markdown answer) is requested
N times; server time (the whole request through middleware, selectors and
the template, Markdown included) and the query count
(``CaptureQueriesContext``). Baseline, same run: a 10-message conversation.

    DATABASE_URL=... uv run python bench/page.py [--requests 20] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BenchEnv, Result, bench_stack, fmt, p50, percentile, table
from tests.pages import button_url

ANSWER = (
    "Here is a **short** answer with a list:\n\n- one item with `code`\n- another item\n\n"
    "```python\nprint('hello')\n```\n\nAnd a [link](https://example.com) at the end."
)


def _conversation(user, config, messages: int) -> int:
    from django.utils import timezone

    from conversations.models import Conversation, Message, Run

    conversation = Conversation.objects.create(owner=user, model_config=config, title="page")
    for i in range(messages // 2):
        question = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=f"Question {i}?"
        )
        run = Run.objects.create(
            conversation=conversation,
            user_message=question,
            status=Run.Status.COMPLETED,
            step=1,
            started_at=timezone.now(),
            finished_at=timezone.now(),
        )
        Message.objects.create(
            conversation=conversation,
            run=run,
            run_step=1,
            role=Message.Role.ASSISTANT,
            content=ANSWER,
            model=config.litellm_model,
            prompt_tokens=100,
            completion_tokens=50,
            latency_ms=900,
        )
    return conversation.pk


def measure(env: BenchEnv, *, quick: bool = False, requests: int = 20) -> Result:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from conversations.models import ModelConfig

    requests = 1 if quick else requests
    large = 100 if quick else 1000
    user = env.user("page", http=False)
    config = ModelConfig.objects.get(litellm_model="demo/tollgate")
    sizes = {10: _conversation(user, config, 10), large: _conversation(user, config, large)}
    client = Client()
    client.force_login(user)

    def timed(url: str) -> tuple[list[float], int, bytes]:
        assert client.get(url).status_code == 200  # warm-up
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        return times, len(queries), response.content

    figures = {}
    for size, conversation_id in sizes.items():
        times, count, content = timed(f"/c/{conversation_id}/")
        figures[f"{size} messages" + (" (baseline)" if size == 10 else "")] = (
            times,
            count,
            len(content),
        )
    # The page draws the last TOLLGATE_TIMELINE_PAGE exchanges; its "Earlier
    # messages" button loads the ones before, a page at a time.
    earlier = button_url(content.decode(), "Earlier messages")
    if earlier is not None:
        times, count, more = timed(earlier)
        figures[f"{large} messages: one 'Earlier messages' page"] = (times, count, len(more))
    base = p50(figures["10 messages (baseline)"][0])
    counts = [count for _, count, _ in list(figures.values())[:2]]  # 10 and the long one
    rows = []
    for label, (times, count, length) in figures.items():
        rows.append(
            [
                label,
                fmt(p50(times)),
                fmt(percentile(times, 0.99)),
                f"{p50(times) / base:.1f}x",
                str(count),
                f"{length / 1024:.0f}",
            ]
        )
    return Result(
        key="page",
        title=f"7. Conversation page ({requests} requests each)",
        table=table(["page", "p50 ms", "p99 ms", "p50 / baseline", "queries", "KiB"], rows),
        notes=[
            "Server time only (Django test client in-process: middleware, session, selectors, "
            "template with Markdown rendering); no network, no browser.",
            "A page draws the conversation's last TOLLGATE_TIMELINE_PAGE exchanges (20; a "
            "user message and the runs answering it); 'Earlier messages' loads the ones "
            "before, a page at a time.",
        ],
        checks=[
            (
                "query count independent of length",
                f"{counts[0]} vs {counts[1]} queries",
                counts[0] == counts[1],
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument(
        "--quick", action="store_true", help="1 request of a 100-message page (a smoke run)"
    )
    args = parser.parse_args(argv)
    with bench_stack() as env:
        print(measure(env, quick=args.quick, requests=args.requests).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
