"""README's first command, ``scripts/serve``: the embedded mode in a real browser.

The script runs as a person would run it from a shell (no virtualenv on PATH,
no DATABASE_URL or REDIS_URL), on a free port, with its data folder in a
temporary directory: SQLite, the in-memory channel layer, runs in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    ARTIFACTS,
    E2E_PASSWORD,
    ROOT,
    admin_sign_in,
    expect_run_completed,
    sign_up,
    unique_email,
)
from tests.topology import free_port, wait_for_http

pytestmark = pytest.mark.e2e

# What a shell in the checkout would not have: the test runner's virtualenv,
# the suite's servers and secrets.
DROPPED = {
    "DATABASE_URL",
    "REDIS_URL",
    "E2E_REDIS_URL",
    "SECRET_KEY",
    "DEBUG",
    "VIRTUAL_ENV",
    "UV_RUN_RECURSION_DEPTH",
    "DJANGO_SETTINGS_MODULE",
}


def shell_env(**extra: str) -> dict[str, str]:
    """The environment of a shell in the checkout (see ``DROPPED``), plus ``extra``."""
    venv_bin = str(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not part.startswith(venv_bin)
    )
    env.update(extra)
    return env


class Served:
    """``scripts/serve`` running in its own process group."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = ARTIFACTS / "embedded.log"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        env = shell_env(
            HOST="127.0.0.1",
            PORT=str(self.port),
            TOLLGATE_DATA_DIR=str(data_dir),
            TOLLGATE_DEMO_DELAY_MS="20",
        )
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [str(ROOT / "scripts" / "serve")],
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)

    def wait_for_log(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise AssertionError(f"scripts/serve did not log {text!r}\n" + self.log_tails())
            time.sleep(0.2)

    def log_tails(self, lines: int = 80) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"----- scripts/serve log ({self.log}) -----\n" + "\n".join(text) + "\n"


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path / "data")
    try:
        wait_for_http(server.base_url + "/healthz", timeout=240)
    except TimeoutError:
        server.stop()
        pytest.fail("scripts/serve did not come up\n" + server.log_tails())
    yield server
    server.stop()


def test_readme_serve_command_serves_sign_up_and_a_demo_chat(served, new_page):
    # The model gateway warms up at start-up, before any page asks for anything
    # (issue 22: the first reply waited 5.5 s for litellm's import).
    served.wait_for_log("model gateway warmed up", timeout=60)
    # ``served`` first: it stops after the browser pages closed (no open sockets to wait for).
    page = new_page(served.base_url, logs=served)
    page.goto("/accounts/signup/")
    expect(page.locator("input[name=email]")).to_be_visible()
    sign_up(page, unique_email("embedded"))

    page.goto("/")
    start = page.locator("form.composer.start")
    expect(start.locator("#start-model option:checked")).to_have_text("Demo (offline)")
    start.locator("textarea[name=content]").fill("calculate 17*23")
    start.get_by_role("button", name="Start").click()
    page.wait_for_url("**/c/*/")
    run = page.locator("#messages section.run").first
    expect(run).to_be_attached()
    run_id = int(run.get_attribute("data-run"))
    expect(run.locator(".invocation")).to_contain_text("calc.evaluate", timeout=60_000)
    expect(run.locator(".msg-assistant.msg-complete").last).to_contain_text(
        "Done — the tool said:", timeout=60_000
    )
    expect(run.locator(".msg-assistant.msg-complete").last).to_contain_text("391")
    expect_run_completed(page, run_id)

    # The embedded defaults kept their state in the data folder.
    assert (served.data_dir / "db.sqlite3").stat().st_size > 0
    assert (served.data_dir / "secret_key").read_text().strip()

    # README's command for an administrator, in a second terminal beside the running
    # serve (issue 22, defect 11: `uv run python manage.py createadmin` there said
    # "SECRET_KEY is not set", and ignored a custom data folder).
    readme = (ROOT / "README.md").read_text()
    assert "`scripts/manage createadmin`" in readme
    email = unique_email("embedded-admin")
    created = subprocess.run(
        [str(ROOT / "scripts" / "manage"), "createadmin", "--noinput"],
        cwd=ROOT,
        env=shell_env(
            TOLLGATE_DATA_DIR=str(served.data_dir),
            TOLLGATE_ADMIN_EMAIL=email,
            TOLLGATE_ADMIN_PASSWORD=E2E_PASSWORD,
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    admin = new_page(served.base_url, logs=served)
    admin_sign_in(admin, email)
