"""A real Celery worker process completes runs end to end with the demo model.

The worker is started against this test session's PostgreSQL database (the
``test_`` database pytest-django created) and its Redis broker, and stopped at
teardown. Tests use ``transactional_db`` so the worker sees committed rows.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from conversations import runs, services
from conversations.models import Message, Run
from tests.fresh import fresh_process

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"
    )


@contextlib.contextmanager
def worker_running(tmp_path: Path, *, demo_delay_ms: int = 0) -> Iterator[subprocess.Popen]:
    """A Celery worker process on this session's test database and broker, its demo
    model streaming a word every ``demo_delay_ms`` (ms); stopped afterwards."""
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        # The test database's name would give the worker a deployment name of its
        # own (queues and groups this process never uses): it is this process's peer.
        "TOLLGATE_DEPLOYMENT": django_settings.TOLLGATE_DEPLOYMENT,
        "TOLLGATE_DISPATCHER": "celery",
        "TOLLGATE_DEMO_DELAY_MS": str(demo_delay_ms),
        "CONN_MAX_AGE": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    celery = [sys.executable, "-m", "celery", "-A", "project"]
    # Stale messages from an earlier, interrupted session would run against this database.
    subprocess.run([*celery, "purge", "-f"], cwd=ROOT, env=env, check=True, capture_output=True)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*celery, "worker", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "-l", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Celery worker did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path):
    with worker_running(tmp_path) as proc:
        yield proc


def wait_for(run: Run, worker, *, timeout: float = 60) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_terminal:
            return run
        assert worker.poll() is None, "worker died"
        time.sleep(0.1)
    raise AssertionError(f"run {run.pk} still {run.status} after {timeout}s")


def test_worker_completes_a_run(celery_worker_process, conversation):
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="Hello worker"
    )
    run = wait_for(run, celery_worker_process)
    assert run.status == Run.Status.COMPLETED, run.error
    assert run.lease_owner == ""
    [answer] = Message.objects.filter(run=run)
    assert answer.status == Message.Status.COMPLETE
    assert "Hello worker" in answer.content
    assert answer.completion_tokens > 0
    assert answer.cost_usd == 0


def test_duplicate_delivery_answers_once(celery_worker_process, conversation):
    from conversations.dispatch import dispatch_run_step

    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="Twice"
    )
    dispatch_run_step(run.pk)  # a redelivered task
    run = wait_for(run, celery_worker_process)
    assert run.status == Run.Status.COMPLETED
    assert Message.objects.filter(run=run).count() == 1


def test_recovery_hands_a_dead_workers_run_to_a_live_worker(celery_worker_process, conversation):
    # Dispatched once only: a duplicate task still in flight could take the
    # stale run itself and leave nothing for the recovery job to find.
    run = services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content="Once"
    )
    run = wait_for(run, celery_worker_process)
    assert run.status == Run.Status.COMPLETED

    # A run whose worker died mid-step: the recovery job hands it to a live worker.
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.CALLING_LLM,
        finished_at=None,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=5),
    )
    Message.objects.filter(run=run).update(status=Message.Status.STREAMING, content="cut")
    assert runs.runs_recover_stale() == [run.pk]
    run = wait_for(run, celery_worker_process)
    assert run.status == Run.Status.COMPLETED
    [answer] = Message.objects.filter(run=run)
    assert answer.status == Message.Status.COMPLETE
    assert answer.content != "cut"


def test_a_warmed_web_process_sends_its_first_step_without_declaring_the_queue():
    """In a fresh process: the first ``run_step.delay`` connects to the broker and
    declares the queue (~60 ms of the first reply); ``broker_warm``, which the
    first page's connect starts, does that before. A broker of its own (a
    separate Redis database, shared with benchmarks and other checkouts' runs)
    receives the one task each process sends, under this deployment's prefix."""
    import redis

    broker = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1").rsplit("/", 1)[0] + "/14"
    client = redis.Redis.from_url(broker)
    prefix = django_settings.TOLLGATE_REDIS_PREFIX

    def forget() -> None:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)

    code = (
        "import os\n"
        "from kombu import Queue\n"
        "declared = []\n"
        "original = Queue.declare\n"
        "def counted(self, *args, **kwargs):\n"
        "    declared.append(self.name)\n"
        "    return original(self, *args, **kwargs)\n"
        "Queue.declare = counted\n"
        "from conversations import dispatch\n"
        "from conversations.tasks import run_step\n"
        "if os.environ.get('WARM'):\n"
        "    dispatch.broker_warm()\n"
        "before = len(declared)\n"
        "run_step.delay(0)\n"
        "print(before, len(declared) - before)\n"
    )

    def declares(**extra: str) -> list[str]:
        return fresh_process(code, CELERY_BROKER_URL=broker, **extra).split()

    forget()
    try:
        assert declares() == ["0", "1"]  # the first send declares the queue
        assert declares(WARM="1") == ["1", "0"]
        assert client.llen(f"{prefix}celery") == 2  # both steps were sent
    finally:
        forget()
        client.close()
