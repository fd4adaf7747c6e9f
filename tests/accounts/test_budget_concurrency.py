"""Concurrent reservations from real threads (own connections) never pass a limit."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.db.models import Sum

from accounts.models import Budget, BudgetReservation, UsageRecord
from accounts.services import BudgetExceeded, llm_call_admit, llm_call_settle
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

N = 12


def _run_concurrently(work, args_list):
    barrier = threading.Barrier(len(args_list))
    results: list = [None] * len(args_list)

    def target(i, args):
        try:
            barrier.wait(timeout=30)
            results[i] = work(*args)
        except BaseException as exc:  # the test inspects every outcome
            results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def _one_call(user_id, run_id, estimate, actual):
    admission = llm_call_admit(
        user=user_id, run_id=run_id, estimated_cost_usd=estimate, estimated_tokens=100
    )
    return llm_call_settle(
        admission=admission,
        conversation_id=1,
        model="demo/tollgate",
        prompt_tokens=60,
        completion_tokens=40,
        cost_usd=actual,
        latency_ms=5,
    )


def test_concurrent_calls_never_pass_a_user_budget():
    assert connection.vendor == "postgresql"
    user = UserFactory()
    budget = Budget.objects.create(user=user, cost_limit_usd=Decimal("1.00"))
    # Each call may cost up to $0.30 and really costs $0.25: a budget of $1.00
    # admits at most 3 concurrent worst cases, 4 once settled amounts are known.
    results = _run_concurrently(
        _one_call, [(user.pk, i, Decimal("0.30"), Decimal("0.25")) for i in range(N)]
    )
    ok = [r for r in results if isinstance(r, UsageRecord)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(ok) + len(refused) == N, results
    assert 3 <= len(ok) <= 4
    assert all("monthly budget of $1.00 reached" in r.message for r in refused)
    # The ledger: what was charged never passes the limit.
    charged = BudgetReservation.objects.filter(budget=budget, status__in=["held", "settled"])
    assert charged.filter(status="held").count() == 0
    assert charged.aggregate(s=Sum("cost_usd"))["s"] <= Decimal("1.00")
    assert UsageRecord.objects.filter(user=user).aggregate(s=Sum("cost_usd"))["s"] == (
        Decimal("0.25") * len(ok)
    )


def test_concurrent_members_never_pass_a_shared_group_budget():
    team = Group.objects.create(name="pool")
    members = [UserFactory() for _ in range(4)]
    for m in members:
        m.groups.add(team)
    budget = Budget.objects.create(group=team, token_limit=1000, period="daily")
    # Every call reserves 100 tokens; 1000 tokens admit exactly 10 of the 16.
    results = _run_concurrently(
        lambda uid, run: _reserve_only(uid, run),
        [(members[i % 4].pk, i) for i in range(16)],
    )
    ok = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(ok) == 10, results
    assert len(refused) == 6
    total = BudgetReservation.objects.filter(budget=budget).aggregate(t=Sum("tokens"))["t"]
    assert total == 1000


def _reserve_only(user_id, run_id):
    from accounts.services import budget_reserve

    return budget_reserve(user=user_id, cost_usd=Decimal(0), tokens=100, run_id=run_id)
