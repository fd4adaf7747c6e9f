"""The production topology on loopback, and a real Chromium driven by Playwright.

``stack`` starts daphne, a Celery worker and Celery beat against the real
PostgreSQL and Redis (a database of its own, made fresh per session), waits
for ``/healthz`` and stops every process it started, by process group, even
when a test fails. A failing test leaves a screenshot under
``test-artifacts/e2e/`` and prints the tail of each server log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.topology import ROOT, Stack, free_port, wait_for_http
from tests.topology import with_database as _with_database

ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
E2E_PASSWORD = "e2e-long-pass-phrase-42"

pytestmark = pytest.mark.e2e
__all__ = ["ARTIFACTS", "Stack", "free_port", "sign_up", "unique_email", "wait_for_http"]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
    db_name = f"tollgate_e2e_{os.getpid()}"
    admin_url = _with_database(base_db, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis_url = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/9")
    subprocess.run(
        ["redis-cli", "-u", redis_url, "FLUSHDB"], check=False, capture_output=True, timeout=10
    )
    topology = Stack(database_url=_with_database(base_db, db_name), redis_url=redis_url)
    for log in ARTIFACTS.glob("*.log"):
        log.unlink()
    try:
        topology.manage("migrate", "--noinput")
        topology.start_web()
        topology.start_worker()
        topology.start_beat()
        wait_for_http(topology.base_url + "/healthz", timeout=90)
        yield topology
    finally:
        topology.stop_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def new_page(request, browser, stack):
    """Open pages in fresh browser contexts; on failure save screenshots and print logs."""
    contexts = []

    def open_page():
        context = browser.new_context(
            base_url=stack.base_url, viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        for index, context in enumerate(contexts):
            for number, page in enumerate(context.pages):
                path = ARTIFACTS / f"{request.node.name}-{index}-{number}.png"
                try:
                    page.screenshot(path=str(path), full_page=True)
                    sys.stdout.write(f"screenshot: {path}\n")
                except Exception as exc:  # the page may be gone; the logs still help
                    sys.stdout.write(f"screenshot failed: {exc}\n")
        sys.stdout.write(stack.log_tails())
    for context in contexts:
        context.close()


def sign_up(page, email: str, password: str = E2E_PASSWORD) -> None:
    """Create an account through the real sign-up form; leaves the user signed in."""
    page.goto("/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", password)
    page.fill("input[name=password2]", password)
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/signup" not in url)


def unique_email(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}@example.com"
