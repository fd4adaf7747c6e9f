"""The usage page (what the signed-in user spent, and what is left) and the API keys page."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.log import log_response
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.charts import bar_chart, column_chart
from accounts.forms import EXPIRY_CHOICES, ApiKeyCreateForm
from accounts.http import AuthenticatedHttpRequest, client_ip
from accounts.models import ApiKey
from accounts.selectors import (
    api_keys_for_user,
    budget_statuses,
    budget_warnings_recent,
    usage_summary,
)
from accounts.services import ApiKeyError, ApiKeyNotFound, api_key_create, api_key_revoke
from project.inbound import form_message

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


@login_required
@never_cache
def api_keys(request: AuthenticatedHttpRequest) -> HttpResponse:
    """``/settings/api-keys/``: the user's API keys, and a form to make one.

    ``POST`` makes a key (``accounts.services.api_key_create``) and draws the page
    with the key itself, shown this once (never cached); a refused form answers
    400 with the message and what was typed.
    """
    error, status, new_key = "", 200, ""
    form = ApiKeyCreateForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                _, new_key = api_key_create(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.expires_at(),
                    ip=client_ip(request),
                )
            except ApiKeyError as refused:
                error, status = str(refused), 400
            else:
                form = ApiKeyCreateForm()
        else:
            error, status = form_message(form), 400
    response = render(
        request,
        "accounts/api_keys.html",
        {
            "form": form,
            "keys": api_keys_for_user(user=request.user),
            "new_key": new_key,
            "error": error,
            "scope_choices": ApiKey.Scope.choices,
            "expiry_choices": EXPIRY_CHOICES,
        },
        status=status,
    )
    if error:
        log_response(
            "Refused %s for user %s: %s", request.path, request.user.pk, error,
            response=response, request=request,
        )  # fmt: skip
    return response


@login_required
@require_POST
def api_key_revoke_view(request: AuthenticatedHttpRequest, key_id: int) -> HttpResponse:
    """Revoke one of the user's keys (404 for another user's), back to the keys page."""
    try:
        key, revoked = api_key_revoke(actor=request.user, key_id=key_id, ip=client_ip(request))
    except ApiKeyNotFound as missing:
        raise Http404(str(missing)) from None
    if revoked:
        messages.success(request, f"The key {key.name} ({key.prefix}…) is revoked.")
    return redirect("accounts:api_keys")
