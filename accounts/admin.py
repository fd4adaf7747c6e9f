"""Admin for users, groups, budgets, the usage ledger, rate limits and API keys.

``UserAdmin`` is the email-keyed variant of Django's, plus the current period
spend against each user's tightest cost budget (a bar) and their budgets and
rate limits inline. ``Group`` is re-registered with its budgets and rate limits
inline. Usage records are read-only, filterable, totalled and exportable. API
keys are read-only (users make them on their settings page); admins revoke them
with an action, audited as the user's own revocation is.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from typing import cast

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.contrib.auth.models import Group
from django.db.models import Avg, Count, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html

from accounts.models import (
    ApiKey,
    Budget,
    BudgetReservation,
    BudgetWarning,
    RateLimit,
    UsageRecord,
    User,
)
from accounts.selectors import budget_tightest_cost_for_users
from accounts.services.apikeys import api_key_revoke
from accounts.services.budgets import format_usd
from audit.adminlog import AuditedAdmin, AuditedInlines
from project.admin import ReadOnlyAdminMixin

#: Budgets and rate limits edited inline on a user or group: audited as on their own pages.
INLINE_AUDIT = {Budget: "budget", RateLimit: "rate_limit"}


class UserCreateForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = ("email", "name")


BUDGET_FIELDS = ("period", "cost_limit_usd", "token_limit", "warn_at_fraction", "enabled")
RATELIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "enabled")


class UserBudgetInline(admin.TabularInline):
    model = Budget
    fk_name = "user"
    fields = BUDGET_FIELDS
    extra = 0
    verbose_name_plural = "Budgets (this user's own; group and default budgets apply too)"


class GroupBudgetInline(admin.TabularInline):
    model = Budget
    fk_name = "group"
    fields = BUDGET_FIELDS
    extra = 0
    verbose_name_plural = "Budgets (shared by all members of this group)"


class UserRateLimitInline(admin.TabularInline):
    model = RateLimit
    fk_name = "user"
    fields = RATELIMIT_FIELDS
    extra = 0


class GroupRateLimitInline(admin.TabularInline):
    model = RateLimit
    fk_name = "group"
    fields = RATELIMIT_FIELDS
    extra = 0
    verbose_name_plural = "Rate limits (shared by all members of this group)"


class SpendChangeList(ChangeList):
    """Attaches each listed user's tightest cost budget status (constant queries)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = list(self.result_list)
        statuses = budget_tightest_cost_for_users(user_ids=[u.pk for u in self.result_list])
        for user in self.result_list:
            user.budget_status = statuses.get(user.pk)


def spend_bar(status) -> str:
    """``<meter>`` plus "$1.20 / $5.00 monthly" for a ``BudgetStatus`` (or a dash)."""
    if status is None:
        return "—"
    budget = status.budget
    return format_html(
        '<meter min="0" max="100" low="{}" high="99" optimum="0" value="{}" '
        'title="{}% used">{}%</meter> {} / {} {}',
        int(budget.warn_at_fraction * 100),
        status.percent,
        status.percent,
        status.percent,
        format_usd(status.spent_usd.quantize(Decimal("0.0001"))),
        format_usd(budget.cost_limit_usd),
        budget.period,
    )


@admin.register(User)
class UserAdmin(AuditedInlines, DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreateForm
    ordering = ("email",)
    list_display = (
        "email",
        "name",
        "period_spend",
        "is_staff",
        "is_active",
        "last_login",
        "date_joined",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "groups")
    search_fields = ("email", "name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name",)}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    inlines = (UserBudgetInline, UserRateLimitInline)
    inline_audit_names = INLINE_AUDIT

    def get_changelist(self, request: HttpRequest, **kwargs):
        return SpendChangeList

    def get_inlines(self, request: HttpRequest, obj):
        # The add page stays Django's two-step form; budgets come on the edit page.
        return self.inlines if obj is not None else ()

    @admin.display(description="Spend this period (tightest cost budget)")
    def period_spend(self, obj: User) -> str:
        return spend_bar(getattr(obj, "budget_status", None))


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(AuditedInlines, DjangoGroupAdmin):
    inlines = (GroupBudgetInline, GroupRateLimitInline)
    inline_audit_names = INLINE_AUDIT


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin, admin.ModelAdmin):
    """All budgets, including the defaults (no user, no group) that apply to everyone.
    Every change is audited (``budget.changed``)."""

    audit_name = "budget"

    list_display = (
        "id",
        "scope",
        "period",
        "cost_limit_usd",
        "token_limit",
        "warn_at_fraction",
        "enabled",
    )
    list_filter = ("period", "enabled")
    list_select_related = ("user", "group")
    autocomplete_fields = ("user",)
    fields = ("user", "group", *BUDGET_FIELDS)
    search_fields = ("user__email", "group__name")

    @admin.display(description="applies to")
    def scope(self, obj: Budget) -> str:
        return obj.scope_label


@admin.register(RateLimit)
class RateLimitAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "rate_limit"
    list_display = ("id", "__str__", "requests_per_minute", "tokens_per_minute", "enabled")
    list_filter = ("enabled",)
    list_select_related = ("user", "group")
    autocomplete_fields = ("user",)
    fields = ("user", "group", *RATELIMIT_FIELDS)


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The ledger is written by services only; admins read and export it."""


def _csv_cell(value) -> str:
    """Stringify, defusing spreadsheet formulas (a leading = + - @ gets a quote)."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


CSV_COLUMNS = (
    "id",
    "created_at",
    "user_email",
    "conversation_id",
    "run_id",
    "evaluation_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "conversation_id",
        "run_id",
        "evaluation_id",
    )
    list_filter = (
        ("user", admin.RelatedOnlyFieldListFilter),
        "model",
        ("created_at", admin.DateFieldListFilter),
    )
    list_select_related = ("user",)
    search_fields = ("user__email", "model")
    date_hierarchy = "created_at"
    change_list_template = "accounts/admin/usagerecord_change_list.html"
    actions = ("export_csv",)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            # Totals over every row the filters select, not just this page.
            context["totals"] = context["cl"].queryset.aggregate(
                calls=Count("id"),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                cost_usd=Sum("cost_usd"),
                latency_ms=Avg("latency_ms"),
            )
        return response

    @admin.action(description="Export selected usage records as CSV")
    def export_csv(self, request: HttpRequest, queryset) -> HttpResponse:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
        writer = csv.writer(response)
        writer.writerow(CSV_COLUMNS)
        for r in queryset.select_related("user").order_by("created_at", "id").iterator():
            writer.writerow(
                [
                    _csv_cell(v)
                    for v in (
                        r.pk,
                        r.created_at.isoformat(),
                        r.user.email,
                        r.conversation_id,
                        r.run_id,
                        r.evaluation_id,
                        r.model,
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.cost_usd,
                        r.latency_ms,
                    )
                ]
            )
        return response


@admin.register(BudgetReservation)
class BudgetReservationAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "budget",
        "user",
        "status",
        "kind",
        "cost_usd",
        "tokens",
        "run_id",
        "usage",
    )
    list_filter = ("status", "kind", "budget")
    list_select_related = ("budget", "budget__user", "budget__group", "user")


@admin.register(BudgetWarning)
class BudgetWarningAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "budget", "message")
    list_select_related = ("user", "budget", "budget__user", "budget__group")


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    """Every user's API keys (never the keys themselves: only their prefix is kept);
    the "Revoke" action revokes the selected ones (``api_key_revoke``, audited)."""

    list_display = (
        "name",
        "prefix",
        "user",
        "scopes",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    list_select_related = ("user",)
    search_fields = ("user__email", "name", "prefix")
    exclude = ("key_hash",)
    actions = ("revoke",)

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset) -> None:
        ip = request.META.get("REMOTE_ADDR") or None
        admin_user = cast(User, request.user)  # the admin site lets staff in only
        revoked = 0
        for key_id in queryset.values_list("pk", flat=True):
            _, done = api_key_revoke(actor=admin_user, key_id=key_id, as_admin=True, ip=ip)
            revoked += done
        self.message_user(request, f"{revoked} key(s) revoked.", messages.SUCCESS)
