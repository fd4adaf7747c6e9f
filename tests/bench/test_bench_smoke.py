"""The budget benchmark runs end to end with tiny counts (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, *args: str, timeout: float, **env: str) -> str:
    """Run ``bench/<script>`` with ``args``; its standard output (fails on a non-zero exit)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_budget_check_prints_a_table():
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("the benchmark needs PostgreSQL (DATABASE_URL)")
    out = _bench("budget_check.py", "--quick", timeout=240)
    assert "| step" in out and "median µs" in out and "p99 µs" in out
    for row in ("baseline: SELECT 1", "baseline: Redis INCR", "llm_call_admit", "admit + settle"):
        assert f"| {row}" in out


@pytest.mark.slow
def test_main_job_benchmarks_print_their_tables():
    """bench/run_all.py --quick runs benchmarks 1-12 once against a real stack."""
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("the benchmarks need PostgreSQL (DATABASE_URL)")
    out = _bench(
        "run_all.py",
        "--quick",
        "--no-write",
        "--no-budget",
        timeout=900,
        BENCH_REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    )
    for title in (
        "1. Time to first token",
        "2. Streaming cost",
        "3. Concurrent streaming",
        "4. Approval round trip",
        "5. Parallel tools",
        "6. Agent-loop overhead",
        "7. Conversation page",
        "8. Markdown rendering per stream frame",
        "9. Guardrails per message",
        "12. Streams per core",
        "13. Knowledge",
    ):
        assert f"### {title}" in out, out[-3000:]
    assert "FAILED" not in out
    for row in (
        "direct litellm (baseline)",
        "WebSocket round trip (baseline)",
        "slowest single call (baseline)",
        "one state transition (baseline)",
        "10 messages (baseline)",
        "200 tokens rendered whole, once (baseline)",
        "no guardrails (baseline)",
        "plain full text (baseline)",
    ):
        assert f"| {row}" in out


def test_markdown_frames_benchmark_prints_its_table():
    """bench/markdown_frames.py --quick (no stack: Markdown in its own process)."""
    out = _bench("markdown_frames.py", "--quick", timeout=120)
    assert "### 8. Markdown rendering per stream frame" in out
    assert "| old ms/frame" in out and "| new ms/frame" in out
    for row in ("200 tokens rendered whole, once (baseline)", "60 tokens", "120 tokens"):
        assert f"| {row}" in out
    assert "Target new per-frame cost flat as the reply grows" in out


@pytest.mark.slow
def test_scale_benchmark_prints_its_ramps_and_cpu_table():
    """bench/scale.py --quick: both ramps (1 and 2 workers) at 2 and 3 streams, pinned
    to their CPUs, with the CPU table; no errors (no timing asserted)."""
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("the benchmark needs PostgreSQL (DATABASE_URL)")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the benchmark pins its two sides to two CPUs")
    out = _bench(
        "scale.py",
        "--quick",
        timeout=600,
        BENCH_REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    )
    assert "### 12. Streams per core, load generator isolated" in out
    assert "one worker: web on CPU 0, worker on CPU 0" in out
    assert "worker2 on CPU 1, clients on CPU 1" in out
    for workers in ("1 worker ", "2 workers"):
        for level in ("2", "3"):
            row = next(
                (
                    line
                    for line in out.splitlines()
                    if line.startswith(f"| {workers}") and line.split("|")[2].strip() == level
                ),
                None,
            )
            assert row is not None, out[-3000:]
            assert row.split("|")[8].strip() == "0", row  # errors
    for row in (
        "httpx, one json.loads per chunk (baseline)",
        "OpenAI SDK (what litellm calls)",
        "Tollgate's gateway (stream_chat, what the worker calls)",
        "litellm.acompletion, through its stream wrapper",
        "Tollgate end to end: web + worker CPU per reply",
    ):
        assert f"| {row}" in out
    assert "Errors:" not in out
