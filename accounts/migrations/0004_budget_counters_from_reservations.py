"""Build the budget counters from the existing held and settled reservations."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import migrations
from django.db.models import Sum


def build_counters(apps, schema_editor):
    Budget = apps.get_model("accounts", "Budget")
    BudgetCounter = apps.get_model("accounts", "BudgetCounter")
    BudgetReservation = apps.get_model("accounts", "BudgetReservation")
    defaults = set(
        Budget.objects.filter(user__isnull=True, group__isnull=True).values_list("id", flat=True)
    )
    totals: dict[tuple[int, int, datetime], dict[str, Decimal | int]] = {}
    rows = (
        BudgetReservation.objects.filter(status__in=["held", "settled"])
        .order_by()
        .values("budget_id", "user_id", "period_start", "status")
        .annotate(cost=Sum("cost_usd"), tokens=Sum("tokens"))
    )
    for row in rows:
        # A default budget counts each user alone; user and group budgets are one pool.
        scope = row["user_id"] if row["budget_id"] in defaults else 0
        key = (row["budget_id"], scope, row["period_start"])
        counter = totals.setdefault(
            key,
            {"spent_usd": Decimal(0), "spent_tokens": 0, "held_usd": Decimal(0), "held_tokens": 0},
        )
        kind = "held" if row["status"] == "held" else "spent"
        counter[f"{kind}_usd"] += Decimal(str(row["cost"] or 0))
        counter[f"{kind}_tokens"] += int(row["tokens"] or 0)
    for (budget_id, scope, period_start), values in totals.items():
        counter = BudgetCounter.objects.create(
            budget_id=budget_id, scope_user_id=scope, period_start=period_start, **values
        )
        mine = BudgetReservation.objects.filter(budget_id=budget_id, period_start=period_start)
        if budget_id in defaults:
            mine = mine.filter(user_id=scope)
        mine.update(counter=counter)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_budget_counters")]

    operations = [migrations.RunPython(build_counters, migrations.RunPython.noop)]
