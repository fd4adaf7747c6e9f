"""The production topology on loopback, and a real Chromium driven by Playwright.

``stack`` starts daphne, a Celery worker and Celery beat against the real
PostgreSQL and Redis (a database of its own, made fresh per test run), waits
for ``/healthz`` and stops every process it started, by process group, even
when a test fails. A failing test leaves a screenshot under
``test-artifacts/e2e/`` and prints the tail of each server log.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.topology import ROOT, Stack, stack_running

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


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    with stack_running(name=f"tollgate_e2e_{os.getpid()}", logs=ARTIFACTS) as topology:
        yield topology


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


class PageProblems:
    """What went wrong in a test's pages: console errors, uncaught exceptions and
    failed requests (no answer, or an answer of 400 or more), each as one line.

    Every browser test fails on any of them (``new_page``'s teardown), except
    those a test expects and says so with ``allow(pattern)`` (a regular
    expression searched in the line): a 404 for another user's conversation, a
    409 for a Stop that came too late.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def watch(self, context) -> None:
        context.on("console", self._console)
        context.on("weberror", lambda error: self.seen.append(f"page error: {error.error}"))
        context.on("requestfailed", self._request_failed)
        context.on("response", self._response)

    def _console(self, message) -> None:
        if message.type == "error":
            where = message.location.get("url", "") if message.location else ""
            page = message.page.url if message.page is not None else "?"
            self.seen.append(f"console error: {message.text} ({where}) on {page}")

    def _request_failed(self, request) -> None:
        failure = request.failure or ""
        # A request the page itself dropped by leaving (a navigation: a fetch, the
        # icon) is not a failure; the server answered nothing wrong.
        if "ERR_ABORTED" in failure:
            return
        self.seen.append(f"request failed: {request.method} {request.url} {failure}")

    def _response(self, response) -> None:
        if response.status >= 400:
            request = response.request
            self.seen.append(f"response {response.status}: {request.method} {response.url}")

    def unexpected(self) -> list[str]:
        return [
            line for line in self.seen if not any(pattern.search(line) for pattern in self.allowed)
        ]


@pytest.fixture
def page_problems() -> PageProblems:
    """The console errors and failed requests of the test's pages (see ``PageProblems``)."""
    return PageProblems()


@pytest.fixture
def new_page(request, browser, page_problems):
    """Open pages in fresh browser contexts; on failure save screenshots and print logs.

    ``new_page()`` opens a page on the session's ``stack`` (started on first
    use); ``new_page(base_url, logs=server)`` on another server whose
    ``log_tails()`` is printed on failure. ``viewport`` and ``color_scheme``
    set the context's; ``clipboard=True`` lets the page read and write the
    clipboard. A test that passed fails at teardown when its pages logged a
    console error, threw, or had a request fail (``page_problems``).
    """
    contexts = []
    sources: list = []

    def open_page(
        base_url: str | None = None,
        *,
        logs=None,
        viewport: dict | None = None,
        color_scheme: str | None = None,
        clipboard: bool = False,
    ):
        if base_url is None:
            logs = request.getfixturevalue("stack")
            base_url = logs.base_url
        if logs is not None and logs not in sources:
            sources.append(logs)
        options: dict = {
            "base_url": base_url,
            "viewport": viewport or {"width": 1280, "height": 900},
        }
        if color_scheme is not None:
            options["color_scheme"] = color_scheme
        if clipboard:
            options["permissions"] = ["clipboard-read", "clipboard-write"]
        context = browser.new_context(**options)
        context.set_default_timeout(20_000)
        page_problems.watch(context)
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
    problems = page_problems.unexpected()
    if problems and not failed:
        pytest.fail("The browser reported problems:\n" + "\n".join(problems[:40]), pytrace=False)


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
    if "/c/" in page.url or page.locator("form.new-chat").count() == 0:
        page.goto("/")  # a page without the new-chat form (settings, prompts) or a chat
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
