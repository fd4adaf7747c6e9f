"""The run state machine (``conversations.runs``): its table, its one transition
function, and the rule that nothing else assigns a run's status."""

from __future__ import annotations

import ast
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from conversations import runs
from conversations.models import Message, Run
from tests.factories import MessageFactory, RunFactory

pytestmark = pytest.mark.django_db

S = Run.Status
ROOT = Path(__file__).resolve().parents[2]
APPS = ("accounts", "approvals", "audit", "conversations", "tools", "project", "api")


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S.values, S.values)))
def test_exactly_the_tables_transitions_are_allowed(
    current, target, django_capture_on_commit_callbacks
):
    run = RunFactory(status=current, step=1, max_steps=8)
    allowed = target in runs.TRANSITIONS[current]
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        if not allowed:
            with pytest.raises(runs.IllegalTransition):
                runs.run_transition(run=locked, to=target)
        else:
            assert runs.run_transition(run=locked, to=target) == target
    run.refresh_from_db()
    assert run.status == (target if allowed else current)
    audited = AuditEvent.objects.filter(action=f"run.{target}", target_id=str(run.pk))
    assert audited.exists() == (allowed and target in runs.AUDITED)
    if not allowed:
        assert callbacks == []


def test_the_table_covers_every_status_and_terminal_ones_lead_nowhere():
    assert set(runs.TRANSITIONS) == set(S.values)
    for status in Run.TERMINAL:
        assert runs.TRANSITIONS[status] == frozenset()
    for status in set(S.values) - Run.TERMINAL:
        assert {S.CANCELLED, S.FAILED} <= runs.TRANSITIONS[status]


def test_calling_the_model_counts_the_step_and_fails_past_the_limit():
    run = RunFactory(status=S.GATING, step=2, max_steps=3)
    with transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        assert runs.run_transition(run=locked, to=S.CALLING_LLM) == S.CALLING_LLM
    run.refresh_from_db()
    assert (run.status, run.step) == (S.CALLING_LLM, 3)
    run = RunFactory(status=S.AWAITING_APPROVAL, step=3, max_steps=3)
    with transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        assert runs.run_transition(run=locked, to=S.CALLING_LLM) == S.FAILED
    run.refresh_from_db()
    assert run.status == S.FAILED
    assert "Stopped after 3 model calls" in run.error
    assert run.finished_at is not None


def test_a_write_that_lost_a_race_raises_and_changes_nothing():
    run = RunFactory(status=S.CALLING_LLM, step=1)
    stale = Run.objects.get(pk=run.pk)  # read without the lock
    Run.objects.filter(pk=run.pk).update(status=S.CANCELLED)  # another writer got there
    with pytest.raises(runs.RunChanged), transaction.atomic():
        runs.run_transition(run=stale, to=S.COMPLETED)
    run.refresh_from_db()
    assert run.status == S.CANCELLED
    assert not AuditEvent.objects.filter(action="run.completed").exists()


def test_the_lease_is_kept_for_the_caller_or_released_with_the_next_step_scheduled(
    django_capture_on_commit_callbacks, monkeypatch
):
    due: list[int] = []
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", due.append)
    run = RunFactory(status=S.CALLING_LLM, step=1, lease_owner="me")
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        runs.run_transition(run=locked, to=S.GATING, worker="me")
    run.refresh_from_db()
    assert (run.lease_owner, due) == ("me", [])
    assert run.lease_expires_at > timezone.now()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        runs.run_transition(run=locked, to=S.EXECUTING_TOOLS)
    run.refresh_from_db()
    assert (run.lease_owner, run.lease_expires_at, due) == ("", None, [run.pk])
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        locked = runs.run_lock(run_id=run.pk)
        runs.run_transition(run=locked, to=S.CANCELLED, worker="me")  # no lease on an end
    run.refresh_from_db()
    assert (run.lease_owner, due) == ("", [run.pk])


@pytest.mark.parametrize(
    ("target", "message_status"), [(S.CANCELLED, "stopped"), (S.FAILED, "failed")]
)
def test_an_end_marks_the_streaming_reply(target, message_status):
    run = RunFactory(status=S.CALLING_LLM, step=1)
    reply = MessageFactory(
        conversation=run.conversation, run=run, run_step=1, role="assistant", status="streaming"
    )
    with transaction.atomic():
        runs.run_transition(run=runs.run_lock(run_id=run.pk), to=target, error="why")
    reply.refresh_from_db()
    assert reply.status == message_status
    run.refresh_from_db()
    assert run.finished_at is not None
    assert run.error == "why"
    assert Message.objects.filter(run=run, status="streaming").count() == 0


def test_a_claim_takes_only_a_free_run_with_work_to_do():
    queued = RunFactory(status=S.QUEUED)
    with transaction.atomic():
        claimed, resumed = runs.run_claim(run_id=queued.pk, worker="w1")
    assert (claimed.status, claimed.step, claimed.lease_owner) == (S.CALLING_LLM, 1, "w1")
    assert not resumed
    with transaction.atomic():
        assert runs.run_claim(run_id=queued.pk, worker="w2") is None  # w1's lease is live
    waiting = RunFactory(status=S.AWAITING_APPROVAL)
    with transaction.atomic():
        assert runs.run_claim(run_id=waiting.pk, worker="w1") is None
    # A step whose worker died (its lease ran out) is resumed by the next claim.
    Run.objects.filter(pk=queued.pk).update(lease_expires_at=timezone.now())
    with transaction.atomic():
        claimed, resumed = runs.run_claim(run_id=queued.pk, worker="w2")
    assert (claimed.status, claimed.step, claimed.lease_owner, resumed) == (
        S.CALLING_LLM,
        1,
        "w2",
        True,
    )


def _status_writes(path: Path) -> list[int]:
    """Lines of ``path`` that write a run's status: ``<…run…>.status = …``, or
    ``status=`` (or ``**fields``) in an ``update``/``create`` on ``Run.objects``."""
    tree = ast.parse(path.read_text())
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "status"
                    and "run" in ast.unparse(target.value).lower()
                ):
                    lines.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"update", "create", "update_or_create"}
            and "Run.objects" in ast.unparse(node.func)
            # status=…, or **fields that may hold it
            and any(keyword.arg in {"status", None} for keyword in node.keywords)
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_state_machine_assigns_a_runs_status():
    found = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py") if (ROOT / app).is_dir() else []:
            if "migrations" in path.parts:
                continue
            lines = _status_writes(path)
            if lines:
                found[str(path.relative_to(ROOT))] = lines
    assert list(found) == ["conversations/runs.py"], found


def test_the_status_check_finds_a_write_outside_the_state_machine(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "def f(run):\n"
        "    run.status = 'completed'\n"
        "    Run.objects.filter(pk=run.pk).update(status='failed')\n"
        "    Run.objects.filter(pk=run.pk).update(**{'status': 'failed'})\n"
        "    Run.objects.filter(pk=run.pk).update(metadata={})\n"
    )
    assert _status_writes(sneaky) == [2, 3, 4]


def _received(signal):
    seen: list[dict] = []

    def receiver(**kwargs):
        seen.append({k: kwargs[k] for k in ("orchestrator_id", "kind", "part_id")})

    signal.connect(receiver, weak=False)
    return seen, receiver


def test_a_parts_end_is_sent_on_commit_to_its_orchestrators_kind(
    django_capture_on_commit_callbacks,
):
    orchestrator = RunFactory(kind=Run.Kind.COMPARE, status=S.AWAITING_PARTS)
    part = RunFactory(
        conversation=orchestrator.conversation,
        user_message=orchestrator.user_message,
        orchestrator=orchestrator,
        status=S.CALLING_LLM,
        step=1,
    )
    alone = RunFactory(status=S.CALLING_LLM, step=1)
    seen, receiver = _received(runs.run_part_ended)
    try:
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            runs.run_transition(run=runs.run_lock(run_id=alone.pk), to=S.COMPLETED)
            runs.run_transition(run=runs.run_lock(run_id=part.pk), to=S.FAILED, error="x")
            assert seen == []  # not before the commit
    finally:
        runs.run_part_ended.disconnect(receiver)
    assert seen == [{"orchestrator_id": orchestrator.pk, "kind": "compare", "part_id": part.pk}]


def test_recovery_tells_again_of_an_orchestrator_whose_parts_all_ended():
    old = timezone.now() - timedelta(minutes=5)
    waiting = RunFactory(kind=Run.Kind.CHAIN, status=S.AWAITING_PARTS)
    busy = RunFactory(kind=Run.Kind.CHAIN, status=S.AWAITING_PARTS)
    for orchestrator, statuses in (
        (waiting, (S.COMPLETED, S.COMPLETED)),
        (busy, (S.COMPLETED, S.QUEUED)),
    ):
        for position, status in enumerate(statuses):
            RunFactory(
                conversation=orchestrator.conversation,
                user_message=orchestrator.user_message,
                orchestrator=orchestrator,
                position=position,
                status=status,
            )
    Run.objects.filter(pk__in=[waiting.pk, busy.pk]).update(updated_at=old)
    Run.objects.filter(orchestrator=busy, status=S.QUEUED).update(
        lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    last = Run.objects.get(orchestrator=waiting, position=1)
    seen, receiver = _received(runs.run_part_ended)
    try:
        recovered = runs.runs_recover_stale()
    finally:
        runs.run_part_ended.disconnect(receiver)
    assert seen == [{"orchestrator_id": waiting.pk, "kind": "chain", "part_id": last.pk}]
    assert waiting.pk in recovered and busy.pk not in recovered
