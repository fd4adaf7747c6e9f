"""The production topology on loopback, and a real Chromium driven by Playwright.

``stack`` starts daphne, a Celery worker and Celery beat against the real
PostgreSQL and Redis (a database of its own, made fresh per test run), waits
for ``/healthz`` and stops every process it started, by process group, even
when a test fails. A failing test leaves a screenshot under
``test-artifacts/e2e/`` and prints the tail of each server log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from playwright.sync_api import Locator, Page, expect

ROOT = Path(__file__).resolve().parents[2]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, timeout: float = 60.0, expect: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                if response.status == expect:
                    return
                last = f"status {response.status}"
        except Exception as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout:.0f}s: {last}")


class Stack:
    """The processes of the production topology, each in its own process group."""

    def __init__(self, *, database_url: str, redis_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.redis_url = redis_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.log_offsets: dict[str, int] = {}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "DEBUG": "False",
            "SECRET_KEY": "e2e-secret-key-" + "x" * 40,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SESSION_COOKIE_SECURE": "False",
            "CSRF_COOKIE_SECURE": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TOLLGATE_DEMO_DELAY_MS": os.environ.get("TOLLGATE_DEMO_DELAY_MS", "40"),
            "PYTHONUNBUFFERED": "1",
            # Sandbox workspaces and static files of this session only: conversation
            # ids restart with each fresh database, old workspaces must not match them.
            "TOLLGATE_DATA_DIR": str(data_dir),
        }

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    def start_process(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = ARTIFACTS / f"{name}.log"
        self.logs[name] = log
        self.log_offsets[name] = log.stat().st_size if log.exists() else 0
        handle = log.open("ab")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.processes[name] = process
        return process

    def start_web(self) -> None:
        self.start_process(
            "web",
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "project.asgi:application",
            ],
        )

    def start_worker(self) -> None:
        self.start_process(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-l",
                "info",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"e2e-{time.time_ns()}@%h",
            ],
        )

    def start_beat(self) -> None:
        self.start_process(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "beat",
                "-l",
                "info",
                "--schedule",
                str(ARTIFACTS / "celerybeat-schedule"),
            ],
        )

    def wait_for_log(self, name: str, text: str, *, timeout: float = 60.0) -> None:
        """Wait until the current ``name`` process (not an earlier one) logged ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                raise RuntimeError(f"{name} is not running\n{self.log_tails()}")
            with self.logs[name].open("rb") as handle:
                handle.seek(self.log_offsets[name])
                if text.encode() in handle.read():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not log {text!r} within {timeout:.0f}s")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def stop_all(self) -> None:
        """SIGTERM every process group at once, then wait (SIGKILL after 15 s)."""
        running = {name: p for name, p in self.processes.items() if p.poll() is None}
        for process in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        self.processes.clear()

    def sql(self, query: str, params: tuple | dict = ()) -> list[tuple]:
        """Rows of a read-only query against the stack's database (autocommit)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def log_tails(self, lines: int = 60) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"----- {name} log ({path}) -----\n" + "\n".join(text))
        return "\n".join(out)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="package")
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
    data_dir = Path(tempfile.mkdtemp(prefix="tollgate-e2e-"))
    data_dir.chmod(0o755)  # like var/: the sandbox's unprivileged uid passes through it
    topology = Stack(
        database_url=_with_database(base_db, db_name), redis_url=redis_url, data_dir=data_dir
    )
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
        shutil.rmtree(data_dir, ignore_errors=True)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture(scope="package")
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
def new_page(request, browser):
    """Open pages in fresh browser contexts; on failure save screenshots and print logs.

    ``new_page()`` opens a page on the session's ``stack`` (started on first
    use); ``new_page(base_url, logs=server)`` on another server whose
    ``log_tails()`` is printed on failure.
    """
    contexts = []
    sources: list = []

    def open_page(base_url: str | None = None, *, logs=None):
        if base_url is None:
            logs = request.getfixturevalue("stack")
            base_url = logs.base_url
        if logs is not None and logs not in sources:
            sources.append(logs)
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
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
        for source in sources:
            sys.stdout.write(source.log_tails())
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


@pytest.fixture(scope="package")
def admin_login(stack) -> tuple[str, str]:
    """An administrator made once per session with ``manage.py createadmin``: (email, password)."""
    email = unique_email("staff")
    env = {"TOLLGATE_ADMIN_EMAIL": email, "TOLLGATE_ADMIN_PASSWORD": E2E_PASSWORD}
    stack.env.update(env)
    try:
        stack.manage("createadmin", "--noinput")
    finally:
        for key in env:
            stack.env.pop(key)
    return email, E2E_PASSWORD


def admin_sign_in(page: Page, email: str, password: str = E2E_PASSWORD) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_contain_text("Tollgate")


# -- chat helpers ------------------------------------------------------------------

CONVERSATION_URL = re.compile(r"/c/(\d+)/$")


def chat_new(page: Page) -> int:
    """Open a new, empty conversation with the default (demo) model; returns its id."""
    page.goto("/")
    page.click("form.new-chat button[type=submit]")
    page.wait_for_url(CONVERSATION_URL)
    expect(page.locator("#composer textarea[name=content]")).to_be_editable()
    return conversation_id(page)


def conversation_id(page: Page) -> int:
    match = CONVERSATION_URL.search(page.url)
    assert match, page.url
    return int(match.group(1))


def chat_send(page: Page, text: str) -> tuple[int, Locator]:
    """Send ``text`` with the composer (over the WebSocket); returns the new run's id and block.

    The run block and the user's message appear by push; nothing reloads.
    """
    runs = page.locator("#messages section.run")
    before = runs.count()
    page.fill("#composer textarea[name=content]", text)
    page.click("#composer button[type=submit]")
    # The composer clears once the frame went out.
    expect(page.locator("#composer textarea[name=content]")).to_have_value("")
    expect(runs).to_have_count(before + 1)
    expect(page.locator("#messages > .msg-user").last).to_contain_text(text.split()[0])
    run_id = int(runs.nth(before).get_attribute("data-run"))
    return run_id, page.locator(f"#run-{run_id}")


def run_status(page: Page, run_id: int) -> Locator:
    return page.locator(f"#run-{run_id}-status")


def expect_run_completed(page: Page, run_id: int, *, timeout: float = 30_000) -> None:
    expect(run_status(page, run_id)).to_have_class(
        re.compile(r"\brun-completed\b"), timeout=timeout
    )


def approval_card(page: Page, run_id: int) -> Locator:
    """The (single) approval card of a run's tool call, as shown under the call."""
    return page.locator(f"#run-{run_id} .approval-slot article.approval-card")
