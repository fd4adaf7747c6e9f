"""Benchmark: the budget + rate-limit check around one LLM call.

Measures ``llm_call_admit`` (rate-limit check + budget reservation) and
``llm_call_settle`` (usage ledger row + settlement + tokens per minute) on
PostgreSQL and Redis, per call, over N calls: median and p99 in microseconds,
against a baseline measured in the same run (one bare ``SELECT 1`` round trip
plus one bare Redis ``INCR``), and prints a table. A reference row shows one
durable ``INSERT`` + ``COMMIT`` (the disk's WAL flush), which ``llm_call_settle``
pays once for the usage ledger.

Safe to run on a developer machine: it creates its own database, named after
``DATABASE_URL``'s with ``_bench`` appended, migrates it, and drops it at the
end; rate-limit keys go under their own Redis prefix and are deleted.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate \\
    REDIS_URL=redis://127.0.0.1:6379/1 uv run python bench/budget_check.py [--calls 2000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_PREFIX = "tollgate-rl-bench"


def bench_database_url(url: str) -> tuple[str, str, str]:
    """Return (bench url, bench db name, maintenance url) for a postgres URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"DATABASE_URL must be a PostgreSQL URL, got {parts.scheme}://")
    name = (parts.path.lstrip("/") or "tollgate") + "_bench"
    bench = urlunsplit(parts._replace(path=f"/{name}"))
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    return bench, name, maintenance


def _pg_conninfo(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1).replace("pgsql://", "postgresql://", 1)


def create_database(maintenance: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_conninfo(maintenance), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(maintenance: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_conninfo(maintenance), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def timed(fn, n: int) -> list[float]:
    """Run ``fn`` n times, return each duration in microseconds."""
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls (default 2000)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured calls first")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup = 20, 3
    if args.calls < 1:
        parser.error("--calls must be at least 1")

    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")
    bench_url, bench_name, maintenance = bench_database_url(database_url)
    create_database(maintenance, bench_name)
    try:
        return run(args, bench_url, redis_url)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - Django may not have been set up
            pass
        drop_database(maintenance, bench_name)


def run(args: argparse.Namespace, bench_url: str, redis_url: str) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ["DATABASE_URL"] = bench_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["TOLLGATE_RATELIMIT_KEY_PREFIX"] = BENCH_PREFIX
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"

    import django

    django.setup()

    import redis
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import Budget, RateLimit, User
    from accounts.services import llm_call_admit, llm_call_settle

    call_command("migrate", verbosity=0)
    user = User.objects.create_user(email="bench@example.invalid", password=None)
    team = Group.objects.create(name="bench")
    user.groups.add(team)
    # A realistic set: own, group and default budgets, own and default rate limits.
    Budget.objects.create(user=user, period="monthly", cost_limit_usd=Decimal(10**6))
    Budget.objects.create(group=team, period="daily", cost_limit_usd=Decimal(10**6))
    Budget.objects.create(period="total", token_limit=10**15)
    RateLimit.objects.create(user=user, requests_per_minute=10**7, tokens_per_minute=10**9)
    RateLimit.objects.create(requests_per_minute=10**7)

    client = redis.Redis.from_url(redis_url)

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_baseline (x integer)")

    def insert_commit() -> None:
        # Autocommit: one durable commit, i.e. one WAL flush to disk.
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_baseline VALUES (1)")

    def redis_incr() -> None:
        client.incr(f"{BENCH_PREFIX}:baseline")

    admissions = []

    def admit() -> None:
        admissions.append(
            llm_call_admit(
                user=user,
                run_id=1,
                estimated_cost_usd=Decimal("0.0123"),
                estimated_tokens=4096,
            )
        )

    def settle() -> None:
        llm_call_settle(
            admission=admissions.pop(),
            conversation_id=1,
            model="openai/gpt-4o-mini",
            prompt_tokens=1200,
            completion_tokens=300,
            cost_usd=Decimal("0.00036"),
            latency_ms=900,
        )

    def both() -> None:
        admit()
        settle()

    try:
        for fn in (select_one, insert_commit, redis_incr, both):
            timed(fn, args.warmup)
        base_sql = timed(select_one, args.calls)
        base_commit = timed(insert_commit, args.calls)
        base_redis = timed(redis_incr, args.calls)
        admit_us, settle_us, both_us = [], [], []
        for _ in range(args.calls):
            t0 = time.perf_counter_ns()
            admit()
            t1 = time.perf_counter_ns()
            settle()
            t2 = time.perf_counter_ns()
            admit_us.append((t1 - t0) / 1000)
            settle_us.append((t2 - t1) / 1000)
            both_us.append((t2 - t0) / 1000)
        base_both = [a + b for a, b in zip(base_sql, base_redis, strict=True)]
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]
        redis_version = client.info("server")["redis_version"]
    finally:
        keys = list(client.scan_iter(match=f"{BENCH_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    baseline = statistics.median(base_both)
    rows = [
        ("baseline: SELECT 1", base_sql),
        ("baseline: Redis INCR", base_redis),
        ("baseline: both", base_both),
        ("ref: INSERT + COMMIT", base_commit),
        ("llm_call_admit", admit_us),
        ("llm_call_settle", settle_us),
        ("admit + settle", both_us),
    ]
    print(
        f"Budget and rate-limit check per LLM call: {args.calls} calls, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"PostgreSQL {pg_version}, Redis {redis_version}, {os.cpu_count()} CPUs"
    )
    print(f"| {'step':<22} | {'median µs':>10} | {'p99 µs':>10} | {'median / baseline':>17} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 19}|")
    for name, values in rows:
        median = statistics.median(values)
        p99 = percentile(values, 0.99)
        print(f"| {name:<22} | {median:>10.0f} | {p99:>10.0f} | {median / baseline:>16.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
