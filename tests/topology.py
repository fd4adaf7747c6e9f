"""The production topology on loopback: daphne, a Celery worker, Celery beat.

Shared by the browser tests (``tests/e2e/conftest.py``) and the benchmarks
(``bench/``). ``Stack`` starts each process in its own process group against
a PostgreSQL database and a Redis database given by URL, writes each
process's output to ``<logs>/<name>.log`` and stops every process it started
(by process group). ``fresh_database`` creates a database for a stack and
drops it afterwards.

Every process started here dies with the process that started it
(``die_with_parent``): a benchmark or test run that is killed, even with
SIGKILL, leaves no daphne, worker, beat or provider holding ports and
database connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOGS = ROOT / "test-artifacts" / "e2e"


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when
    the thread that started it exits, however it exits (Linux
    ``prctl(PR_SET_PDEATHSIG)``, see prctl(2); kept across ``exec``).

    ``parent_pid``: the starting process's pid (``os.getpid()``), to catch a
    parent that died before the ``prctl`` took effect. Elsewhere than Linux,
    nothing is set. Raises ``OSError`` in the child (Popen re-raises it) if
    the ``prctl`` fails.
    """

    if not sys.platform.startswith("linux"):
        return lambda: None
    # Looked up here, in the parent: between fork and exec the child calls only
    # the function (the dynamic loader's lock may be held by another thread).
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # the parent is already gone
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


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


def with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _conninfo(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


@contextlib.contextmanager
def fresh_database(base_url: str, name: str) -> Iterator[str]:
    """Create database ``name`` next to ``base_url``'s (dropped first if left over),
    yield its URL, drop it (forcing connections closed) afterwards."""
    import psycopg

    admin_url = _conninfo(with_database(base_url, "postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(base_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Stack:
    """The processes of the production topology, each in its own process group.

    ``extra_env`` is added to every process's environment (after the defaults);
    ``logs`` is the folder of the per-process log files; ``data_dir`` (optional)
    becomes ``TOLLGATE_DATA_DIR``: sandbox workspaces and static files of this
    stack only (conversation ids restart with each fresh database, so an old
    run's workspaces must not match them).
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        logs: Path = DEFAULT_LOGS,
        extra_env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.redis_url = redis_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.log_offsets: dict[str, int] = {}
        self.log_dir = logs
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "DEBUG": "False",
            "SECRET_KEY": "e2e-secret-key-" + "x" * 40,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # The one origin its pages are opened at (browser tests, benchmarks' sockets).
            "TOLLGATE_WEBSOCKET_ORIGINS": self.base_url,
            "SESSION_COOKIE_SECURE": "False",
            "CSRF_COOKIE_SECURE": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "TOLLGATE_DEMO_DELAY_MS": os.environ.get("TOLLGATE_DEMO_DELAY_MS", "40"),
            "PYTHONUNBUFFERED": "1",
            **({"TOLLGATE_DATA_DIR": str(data_dir)} if data_dir is not None else {}),
            **(extra_env or {}),
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
        log = self.log_dir / f"{name}.log"
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
            preexec_fn=die_with_parent(os.getpid()),
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

    def start_worker(
        self, *extra_args: str, concurrency: int | None = None, name: str = "worker"
    ) -> None:
        """The README's worker (pool and concurrency from settings unless given).

        ``name`` keys the process in ``processes`` and names its log: a second
        worker (``"worker2"``) shares the broker with the first, as more workers
        of one deployment do.
        """
        pool = ["--concurrency", str(concurrency)] if concurrency is not None else []
        self.start_process(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-l",
                "info",
                *pool,
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"e2e-{time.time_ns()}@%h",
                *extra_args,
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
                str(self.log_dir / "celerybeat-schedule"),
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

    def redis_forget(self) -> None:
        """Delete every key of this stack's deployment from its Redis database.

        Only its own (``TOLLGATE_REDIS_PREFIX``, asked of its settings): other
        runs and checkouts may share the database number, and a ``FLUSHDB``
        would take their queued run steps too.
        """
        import redis

        prefix = self.manage(
            "shell", "-c", "from django.conf import settings; print(settings.TOLLGATE_REDIS_PREFIX)"
        ).stdout.split()[-1]
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def sql(self, query: str, params: tuple | dict = ()) -> list[tuple]:
        """Rows of a read-only query against the stack's database (autocommit)."""
        import psycopg

        with psycopg.connect(_conninfo(self.database_url), autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def log_tails(self, lines: int = 60) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"----- {name} log ({path}) -----\n" + "\n".join(text))
        return "\n".join(out)


@contextlib.contextmanager
def stack_running(
    *, name: str, logs: Path = DEFAULT_LOGS, redis_url: str | None = None
) -> Iterator[Stack]:
    """The whole topology (daphne, a Celery worker, Celery beat), started and healthy.

    Its database is ``name``, made fresh on ``DATABASE_URL``'s server and
    dropped afterwards; its Redis is ``redis_url``, else ``E2E_REDIS_URL`` (default
    database 9), shared with other runs: the stack's keys carry its deployment name, derived
    from the fresh database's name, and only they are deleted, before and after.
    ``logs``' old ``*.log`` files are deleted first; sandbox workspaces live in a
    throwaway data directory. Every process is stopped, even when the caller fails.
    """
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
    redis_url = redis_url or os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/9")
    data_dir = Path(tempfile.mkdtemp(prefix="tollgate-stack-"))
    data_dir.chmod(0o755)  # like var/: the sandbox's unprivileged uid passes through it
    logs.mkdir(parents=True, exist_ok=True)
    for log in logs.glob("*.log"):
        log.unlink()
    with fresh_database(base_db, name) as database_url:
        topology = Stack(
            database_url=database_url, redis_url=redis_url, logs=logs, data_dir=data_dir
        )
        try:
            topology.redis_forget()  # an earlier run's, should its database name recur
            topology.manage("migrate", "--noinput")
            topology.start_web()
            topology.start_worker()
            topology.start_beat()
            wait_for_http(topology.base_url + "/healthz", timeout=90)
            yield topology
        finally:
            topology.stop_all()
            shutil.rmtree(data_dir, ignore_errors=True)
            topology.redis_forget()
