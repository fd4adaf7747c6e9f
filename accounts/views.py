"""The usage page: what the signed-in user spent, and what is left."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from accounts.charts import bar_chart, column_chart
from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import budget_statuses, budget_warnings_recent, usage_summary

PERIODS = {"daily": "Today", "weekly": "This week", "monthly": "This month"}


@login_required
def usage(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Spend this period per model and per day (SVG), budgets left, warnings.

    ``?period=daily|weekly|monthly`` (default monthly; anything else falls back
    to monthly). Only the signed-in user's own rows are read.
    """
    period = request.GET.get("period", "monthly")
    if period not in PERIODS:
        period = "monthly"
    summary = usage_summary(user=request.user, period=period)
    per_day = column_chart(
        [(d["day"].strftime("%d %b"), d["cost"]) for d in summary.per_day],
        label_every=1 if len(summary.per_day) <= 10 else 5,
    )
    # Decimal(0), not the int 0: bar_chart takes Decimal rows (a zero renders the same).
    per_model = bar_chart([(m["model"], m["cost"] or Decimal(0)) for m in summary.per_model])
    return render(
        request,
        "accounts/usage.html",
        {
            "summary": summary,
            "periods": PERIODS,
            "period": period,
            "per_day_chart": per_day,
            "per_model_chart": per_model,
            "statuses": budget_statuses(user=request.user),
            "warnings": budget_warnings_recent(user=request.user),
        },
    )
