"""The budget benchmark runs end to end with tiny counts (no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_budget_check_prints_a_table():
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("the benchmark needs PostgreSQL (DATABASE_URL)")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "budget_check.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| step" in out and "median µs" in out and "p99 µs" in out
    for row in ("baseline: SELECT 1", "baseline: Redis INCR", "llm_call_admit", "admit + settle"):
        assert f"| {row}" in out
