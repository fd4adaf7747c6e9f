"""What every end-to-end benchmark shares: the stack, the provider, a WebSocket client.

``bench_stack()`` starts the production topology on loopback (daphne, a
Celery worker, Celery beat — ``tests/topology.py``'s ``Stack``) against a
fresh PostgreSQL database (``<DATABASE_URL name>_stack``, dropped at the end)
and a Redis database (``BENCH_REDIS_URL``, default db 14; the stack's keys,
under its deployment's prefix, are deleted at the start and the end), plus
three ``llmock`` servers (an OpenAI-compatible server from PyPI) as
providers: ``fast`` (no delay between chunks), ``paced`` (2 ms between
chunks: 500 tokens/s) and ``chat`` (20 ms: 50 tokens/s). The benchmark
process itself is a Django process on the same database (``django.setup``),
so it can create users and model configs and read timestamps.

``WsClient`` is a real WebSocket client (the ``websockets`` library) holding
a session cookie got by logging in over HTTP, as a browser does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.topology import (  # noqa: E402
    Stack,
    die_with_parent,
    free_port,
    fresh_database,
    wait_for_http,
)

LOGS = ROOT / "test-artifacts" / "bench"
KEY_ENV = "TOLLGATE_BENCH_LLM_KEY"
PASSWORD = "bench-long-pass-phrase-42"  # noqa: S105 - bench users only
EXTRA_ENV = {
    "TOLLGATE_EXTRA_TOOL_MODULES": "bench.benchtools",
    KEY_ENV: "bench-key",
    "TOLLGATE_DEMO_DELAY_MS": "0",
    "TOLLGATE_LLM_MAX_RETRIES": "0",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
}

# Frames as the chat page receives them (conversations/events.py partials): a
# stream frame replaces the streaming message's tail, or its whole body (a keyframe).
DELTA_MARKS = (
    'class="msg-tail" hx-swap-oob="outerHTML"',
    'class="msg-body" hx-swap-oob="outerHTML"',
)
CARD_MARK = 'hx-swap-oob="innerHTML:#approval-slot-'
RUN_DONE_RE = re.compile(r'class="run-status run-(completed|failed|cancelled)"')
CARD_RE = re.compile(r'id="approval-(\d+)"[^>]*data-arguments-hash="([0-9a-f]{64})"')


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, columns padded, numbers formatted by the caller."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        padded = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("| " + " | ".join(padded) + " |")
    return "\n".join(out)


# -- the provider ------------------------------------------------------------------


class Provider:
    """One ``llmock serve`` subprocess on a loopback port (``--tool-mode off``).

    ``chunk_delay_ms`` is llmock's pause between streamed chunks; one text
    chunk is one word-sized token. Replies are scripted per model name with
    ``reply()`` (llmock's scenario API).
    """

    def __init__(self, name: str, *, chunk_delay_ms: int) -> None:
        self.name = name
        self.chunk_delay_ms = chunk_delay_ms
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + "/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        llmock = Path(sys.executable).with_name("llmock")
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / f"llmock-{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(llmock),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--stream-chunk-delay-ms",
                    str(self.chunk_delay_ms),
                    "--tool-mode",
                    "off",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        wait_for_http(self.root + "/health", timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def _post(self, path: str, payload: dict) -> None:
        request = urllib.request.Request(  # noqa: S310 - loopback URL we built
            self.root + path,
            data=json.dumps(payload).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def reply(
        self,
        *,
        model: str,
        text: str | None = None,
        tool_calls: list | None = None,
        times: int | None = None,
    ) -> None:
        """Script the answer to requests for ``model`` (``times=None``: every one)."""
        behavior: dict[str, Any] = {"type": "reply", "times": times, "match": {"model": model}}
        if text is not None:
            behavior["text"] = text
        if tool_calls:
            behavior["tool_calls"] = tool_calls
        self._post("/_llmock/scenario", {"behaviors": [behavior]})

    def reset(self) -> None:
        self._post("/_llmock/reset", {})

    def requests(self) -> list[dict]:
        """llmock's journal: every request served (times are ``time.monotonic()``)."""
        with urllib.request.urlopen(self.root + "/_llmock/requests", timeout=30) as response:  # noqa: S310
            return json.loads(response.read())["requests"]

    def forget_requests(self) -> None:
        request = urllib.request.Request(self.root + "/_llmock/requests", method="DELETE")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()


def words(n: int, end: str = "ZEND") -> str:
    """``n`` word-sized tokens (llmock streams one per chunk), the last one ``end``."""
    return " ".join(f"w{i}" for i in range(n - 1)) + f" {end}"


# -- the stack ------------------------------------------------------------------------


@dataclass
class BenchEnv:
    """A running stack, its providers, and the benchmark process's Django setup."""

    stack: Stack
    providers: dict[str, Provider]
    redis_url: str
    database_url: str
    users: dict[str, Any] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.stack.base_url.replace("http://", "ws://")

    def pid(self, name: str) -> int:
        return self.stack.processes[name].pid

    def model(self, name: str, *, provider: str, tools: bool = False) -> Any:
        """A ModelConfig ``openai/<name>`` on ``provider``'s llmock (free, made once)."""
        from decimal import Decimal

        from conversations.models import ModelConfig

        config, _ = ModelConfig.objects.update_or_create(
            name=f"bench {name}",
            defaults={
                "litellm_model": f"openai/{name}",
                "api_base": self.providers[provider].base_url,
                "api_key_env": KEY_ENV,
                "context_window": 128_000,
                "max_output_tokens": 8192,
                "input_cost_per_token": Decimal(0),
                "output_cost_per_token": Decimal(0),
                "supports_tools": tools,
                "enabled": True,
            },
        )
        return config

    def user(self, name: str, *, http: bool = True) -> Any:
        """A user ``<name>@bench.invalid`` with a session (cookie in ``cookies``):
        logged in over HTTP, or with ``http=False`` straight in the session store
        (then with no usable password: hashing one costs ~0.3 s of CPU, which for
        hundreds of users would be most of a benchmark's setup)."""
        if name in self.users:
            return self.users[name]
        from accounts.models import User

        user = User.objects.create_user(
            email=f"{name}@bench.invalid", password=PASSWORD if http else None
        )
        if http:
            self.cookies[name] = http_login(self.stack.base_url, user.email, PASSWORD)
        else:
            self.cookies[name] = session_cookie(user)
        self.users[name] = user
        return user

    def conversation(self, user_name: str, config: Any) -> int:
        from conversations.models import Conversation

        return Conversation.objects.create(
            owner=self.user(user_name), model_config=config, title="bench"
        ).pk

    def client(self, user_name: str, conversation_id: int) -> WsClient:
        self.user(user_name)
        return WsClient(self.ws_url, self.stack.base_url, self.cookies[user_name], conversation_id)


def http_login(base_url: str, email: str, password: str) -> str:
    """Log in through allauth's form over HTTP; return the session cookie value."""
    import httpx

    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as http:
        page = http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if token is None:
            raise RuntimeError("no CSRF token on the login page")
        answer = http.post(
            "/accounts/login/",
            data={"login": email, "password": password, "csrfmiddlewaretoken": token.group(1)},
            headers={"Referer": base_url + "/accounts/login/"},
        )
        session = http.cookies.get("sessionid")
        if answer.status_code != 302 or not session:
            raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:300]}")
        return session


def _django_setup(database_url: str, redis_url: str, extra_env: dict[str, str]) -> None:
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": "e2e-secret-key-" + "x" * 40,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            **extra_env,
        }
    )
    import django

    django.setup()


def _redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextlib.contextmanager
def bench_stack(
    *, worker_args: tuple[str, ...] = (), concurrency: int | None = None
) -> Iterator[BenchEnv]:
    """Start everything (see the module docstring); stop and drop it all afterwards."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
    if not base.startswith(("postgres://", "postgresql://")):
        raise SystemExit("DATABASE_URL must be a PostgreSQL URL (the stack needs PostgreSQL)")
    name = base.rsplit("/", 1)[-1].split("?")[0] + "_stack"
    redis_url = _redis_url()
    providers = {
        "fast": Provider("fast", chunk_delay_ms=0),
        "paced": Provider("paced", chunk_delay_ms=2),
        "chat": Provider("chat", chunk_delay_ms=20),
    }
    LOGS.mkdir(parents=True, exist_ok=True)
    for log in LOGS.glob("*.log"):
        log.unlink()
    with fresh_database(base, name) as url, tempfile.TemporaryDirectory() as media:
        # Uploads go to the stack's own media folder, which its web, its worker and
        # this process share: a file one of them writes, the others read.
        extra_env = {**EXTRA_ENV, "MEDIA_ROOT": media}
        stack = Stack(database_url=url, redis_url=redis_url, logs=LOGS, extra_env=extra_env)
        try:
            # Only this stack's keys: others may share the Redis database number.
            stack.redis_forget()
            for provider in providers.values():
                provider.start()
            stack.manage("migrate", "--noinput")
            stack.start_web()
            stack.start_worker(*worker_args, concurrency=concurrency)
            stack.start_beat()
            wait_for_http(stack.base_url + "/healthz", timeout=120)
            _django_setup(url, redis_url, extra_env)
            yield BenchEnv(stack=stack, providers=providers, redis_url=redis_url, database_url=url)
        finally:
            stack.stop_all()
            stack.redis_forget()
            for provider in providers.values():
                provider.stop()
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()


# -- the WebSocket client -----------------------------------------------------------


class WsClient:
    """The chat page's socket for one conversation: send frames, read pushed HTML.

    ``frames`` collects ``(time.monotonic() seconds, text)`` for every frame received.
    """

    def __init__(self, ws_url: str, origin: str, session: str, conversation_id: int) -> None:
        self.url = f"{ws_url}/ws/?conversation={conversation_id}"
        self.origin = origin
        self.session = session
        self.conversation_id = conversation_id
        self.ws: Any = None
        self.frames: list[tuple[float, str]] = []
        self.read_before_send = 0

    async def __aenter__(self) -> WsClient:
        import websockets

        self.ws = await websockets.connect(
            self.url,
            additional_headers={"Cookie": f"sessionid={self.session}"},
            origin=self.origin,
            max_size=None,
            open_timeout=60,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(self, payload: dict) -> float:
        """Send a JSON frame; return ``time.monotonic()`` just before sending."""
        started = time.monotonic()
        await self.ws.send(json.dumps(payload))
        self.read_before_send = len(self.frames)
        return started

    async def send_message(self, content: str) -> float:
        return await self.send(
            {"type": "message.send", "conversation_id": self.conversation_id, "content": content}
        )

    async def until(self, predicate: Any, *, wait: float = 120.0) -> tuple[float, str]:
        """Read frames until one satisfies ``predicate(text)``; return (time, text)."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {wait:.0f}s")
            async with asyncio.timeout(remaining):  # no task per frame, unlike wait_for
                text = await self.ws.recv()
            now = time.monotonic()
            self.frames.append((now, text))
            if predicate(text):
                return now, text

    async def until_done(self, *, wait: float = 120.0) -> str:
        """Read until the run's status frame says completed/failed/cancelled; return it.

        A frame already read counts: the outbox sends a run's final message and
        its status together, so the frame that ended an earlier ``until`` may hold it.
        """
        for _, text in self.frames[self.read_before_send :]:
            match = RUN_DONE_RE.search(text)
            if match:
                return match.group(1)
        _, text = await self.until(lambda t: RUN_DONE_RE.search(t) is not None, wait=wait)
        match = RUN_DONE_RE.search(text)
        return match.group(1) if match else "?"


def is_delta(text: str) -> bool:
    """Whether a pushed frame is a stream frame (a delta or a keyframe)."""
    return any(mark in text for mark in DELTA_MARKS)


# -- reporting ------------------------------------------------------------------------


def machine() -> str:
    """One line: CPU, cores, memory, Python, PostgreSQL, Redis, key packages."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        kib = int(handle.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    versions = ", ".join(
        f"{pkg} {md.version(pkg)}"
        for pkg in (
            "django",
            "channels",
            "daphne",
            "channels-redis",
            "celery",
            "litellm",
            "psycopg",
            "llmock",
            "websockets",
        )
    )
    return f"{cpu}, {os.cpu_count()} CPUs{mem}; Python {platform.python_version()}; {versions}"


def server_versions() -> str:
    import redis
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    client = redis.Redis.from_url(_redis_url())
    try:
        rv = client.info("server")["redis_version"]
    finally:
        client.close()
    return f"PostgreSQL {pg}, Redis {rv}"


@dataclass
class Result:
    """One benchmark's output: a Markdown table, notes, and target checks.

    ``checks`` rows are ``(target text, measured text, met: bool | None)``.
    """

    key: str
    title: str
    table: str
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def render(self) -> str:
        out = [f"### {self.title}", "", self.table, ""]
        out += [f"- {note}" for note in self.notes]
        for target, figure, met in self.checks:
            verdict = {True: "met", False: "**not met**", None: "n/a"}[met]
            out.append(f"- Target {target}: {figure} — {verdict}")
        return "\n".join(out) + "\n"


def session_cookie(user: Any) -> str:
    """A logged-in session for ``user`` made directly in the session store (what
    ``django.contrib.auth.login`` writes); used where logging in hundreds of users
    over HTTP would only measure password hashing."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check
