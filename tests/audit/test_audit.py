"""The audit trail: append-only, hash-chained, verified end to end, safe under concurrency."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import RequestFactory

from audit.models import AuditAppendOnlyError, AuditChainHead, AuditEvent
from audit.selectors import GENESIS_HASH, audit_verify
from audit.services import audit_deferred, audit_record
from tests.factories import UserFactory
from tests.race import race

ROOT = Path(__file__).resolve().parents[2]


def _fill(n=5, actor=None):
    return [
        audit_record(
            action="test.event",
            actor=actor,
            target_type="thing",
            target_id=i,
            data={"i": i, "nested": {"b": [1, 2.5, True, None], "a": "é"}, "big": 1e20},
            ip="2001:DB8::1" if i % 2 else "192.0.2.7",
        )
        for i in range(n)
    ]


def test_chain_links_and_verifies(user):
    events = _fill(5, actor=user)
    assert events[0].prev_hash == GENESIS_HASH
    for earlier, later in itertools.pairwise(events):
        assert later.prev_hash == earlier.hash
        assert later.sequence == earlier.sequence + 1
    assert events[1].ip == "2001:db8::1"
    result = audit_verify()
    assert (result.ok, result.checked, result.first_broken_id) == (True, 5, None)


def test_empty_chain_verifies(db):
    assert audit_verify().ok


def test_orm_cannot_change_or_delete_events(db):
    event = _fill(1)[0]
    event.data = {"i": 99}
    with pytest.raises(AuditAppendOnlyError):
        event.save()
    with pytest.raises(AuditAppendOnlyError):
        event.delete()
    with pytest.raises(AuditAppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(data={})
    with pytest.raises(AuditAppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AuditAppendOnlyError):
        AuditEvent.objects.bulk_update([event], ["data"])
    with pytest.raises(AuditAppendOnlyError):
        AuditEvent.objects.bulk_create([AuditEvent(action="x")])
    with pytest.raises(AuditAppendOnlyError):
        AuditEvent(action="forged", sequence=2, created_at=event.created_at).save()
    assert AuditEvent.objects.get(pk=event.pk).data["i"] == 0
    assert audit_verify().ok


def test_deleting_the_actor_keeps_history(db):
    person = UserFactory()
    event = audit_record(action="test.event", actor=person)
    person.delete()
    assert AuditEvent.objects.get(pk=event.pk).actor_id == event.actor_id
    assert audit_verify().ok


def _tamper(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE audit_auditevent SET data = %s::jsonb WHERE id = %s", "edited"),
        ("UPDATE audit_auditevent SET action = 'x' || %s WHERE id = %s", "edited"),
        ("DELETE FROM audit_auditevent WHERE %s = %s AND id = %s", "missing"),
    ],
)
def test_tampering_in_sql_is_found(db, sql, reason):
    events = _fill(6)
    target = events[3]
    if sql.startswith("DELETE"):
        _tamper(sql, ["1", "1", target.pk])
        broken = events[4]
    else:
        _tamper(sql, [json.dumps({"i": 1000}) if "data" in sql else "y", target.pk])
        broken = target
    result = audit_verify()
    assert not result.ok
    assert result.first_broken_id == broken.pk
    assert reason in result.reason
    assert result.checked == 3  # events 0-2 verified before the break


def test_removing_the_last_event_is_found(db):
    events = _fill(3)
    _tamper("DELETE FROM audit_auditevent WHERE id = %s", [events[-1].pk])
    result = audit_verify()
    assert not result.ok
    assert "end" in result.reason


def test_rehashed_forgery_is_found(db):
    """An attacker who recomputes the edited row's hash still breaks the next link."""
    from audit.selectors import audit_event_hash

    events = _fill(4)
    target = events[1]
    forged = audit_event_hash(
        sequence=target.sequence,
        created_at=target.created_at,
        actor_id=None,
        action=target.action,
        target_type=target.target_type,
        target_id=target.target_id,
        data={"i": "forged"},
        ip=target.ip,
        prev_hash=target.prev_hash,
    )
    _tamper(
        "UPDATE audit_auditevent SET data = %s::jsonb, hash = %s WHERE id = %s",
        [json.dumps({"i": "forged"}), forged, target.pk],
    )
    result = audit_verify()
    assert not result.ok
    assert result.first_broken_id == events[2].pk


def test_command_reports_ok_and_names_the_broken_row(db, capsys):
    events = _fill(4)
    call_command("audit_verify")
    assert "OK: 4 events" in capsys.readouterr().out
    _tamper(
        "UPDATE audit_auditevent SET data = %s::jsonb WHERE id = %s",
        [json.dumps({"i": "tampered"}), events[2].pk],
    )
    with pytest.raises(CommandError) as info:
        call_command("audit_verify")
    assert info.value.returncode == 1
    assert f"event id {events[2].pk}" in str(info.value)


@pytest.mark.django_db(transaction=True)
def test_command_process_exits_1_after_tampering():
    """The real ``manage.py audit_verify`` process against the test database."""
    events = _fill(3)
    db_name = connection.settings_dict["NAME"]
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    env = {**os.environ, "DATABASE_URL": f"{base}/{db_name}", "SECRET_KEY": "x" * 50}
    command = [sys.executable, "manage.py", "audit_verify"]
    clean = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "OK: 3 events" in clean.stdout
    _tamper("UPDATE audit_auditevent SET ip = %s WHERE id = %s", ["198.51.100.1", events[1].pk])
    broken = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    assert f"event id {events[1].pk}" in broken.stderr


def test_deferred_events_are_appended_together_when_the_block_ends(user, django_assert_num_queries):
    _fill(1)
    # The block's savepoint, the check below, then the head locked, one INSERT of all
    # six events and the head's move: not three statements per event.
    with django_assert_num_queries(6), transaction.atomic(), audit_deferred():
        for i in range(3):
            assert audit_record(action="test.deferred", actor=user, target_id=i) is None
            with audit_deferred():  # nested: the outer block appends
                audit_record(action="test.nested", target_id=i)
        assert not AuditEvent.objects.filter(sequence__gt=1).exists()  # nothing yet
    events = list(AuditEvent.objects.filter(sequence__gt=1).order_by("sequence"))
    assert [(e.action, e.target_id) for e in events] == [
        (action, str(i)) for i in range(3) for action in ("test.deferred", "test.nested")
    ]
    assert [e.sequence for e in events] == [2, 3, 4, 5, 6, 7]
    assert events[0].actor_id == user.pk
    assert AuditChainHead.objects.get(pk=1).last_sequence == 7
    result = audit_verify()
    assert (result.ok, result.checked) == (True, 7)


def test_an_exception_caught_inside_the_transaction_keeps_the_deferred_events(db):
    with transaction.atomic(), pytest.raises(RuntimeError), audit_deferred():
        audit_record(action="test.kept")
        raise RuntimeError("the caller catches this and commits")
    assert AuditEvent.objects.filter(action="test.kept").count() == 1
    assert audit_verify().ok


def test_a_failed_transaction_rolls_back_with_its_deferred_events(db):
    with pytest.raises(RuntimeError), transaction.atomic(), audit_deferred():
        audit_record(action="test.gone")
        raise RuntimeError
    assert not AuditEvent.objects.filter(action="test.gone").exists()
    audit_record(action="test.after")
    assert audit_verify().ok


@pytest.mark.django_db(transaction=True)
def test_deferred_blocks_and_single_appends_at_once_keep_one_chain():
    writers, rounds = 6, 6

    def write(n):
        for i in range(rounds):
            if (n + i) % 2:
                with transaction.atomic(), audit_deferred():
                    for j in range(3):
                        audit_record(action="test.batch", target_id=f"{n}-{i}-{j}")
            else:
                audit_record(action="test.single", target_id=f"{n}-{i}")

    assert race(writers, write) == [None] * writers
    _assert_one_chain(writers * rounds // 2 * (1 + 3))
    # A block's events are consecutive in the chain.
    for n in range(writers):
        for i in range(rounds):
            if (n + i) % 2:
                batch = AuditEvent.objects.filter(target_id__startswith=f"{n}-{i}-")
                sequences = sorted(batch.values_list("sequence", flat=True))
                assert sequences == list(range(sequences[0], sequences[0] + 3))


def _assert_one_chain(total: int) -> None:
    assert sorted(AuditEvent.objects.values_list("sequence", flat=True)) == list(
        range(1, total + 1)
    )
    result = audit_verify()
    assert (result.ok, result.checked) == (True, total)
    assert AuditChainHead.objects.get(pk=1).last_sequence == total


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_chain():
    writers, per_writer = 6, 8

    def write(n):
        for i in range(per_writer):
            audit_record(action="test.concurrent", target_id=f"{n}-{i}", data={"n": n})

    assert race(writers, write) == [None] * writers
    _assert_one_chain(writers * per_writer)


def test_sign_in_is_audited(client, user, password):
    assert client.login(email=user.email, password=password)
    event = AuditEvent.objects.get(action="auth.signed_in")
    assert event.actor_id == user.pk


def test_allauth_sign_in_is_audited(client, user, password):
    response = client.post("/accounts/login/", {"login": user.email, "password": password})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="auth.signed_in")
    assert (event.actor_id, event.ip) == (user.pk, "127.0.0.1")


def test_admin_is_read_only_for_events(admin_user):
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    model_admin = next(a for m, a in site._registry.items() if m is AuditEvent)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request)


def test_sign_out_is_audited(client, user, password):
    assert client.login(email=user.email, password=password)
    client.logout()
    event = AuditEvent.objects.get(action="auth.signed_out")
    assert (event.actor_id, event.target_type, event.target_id) == (user.pk, "user", str(user.pk))
    assert audit_verify().ok
