"""Admin: policies (every save and delete is audited); approval requests and their
votes read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from approvals.models import ApprovalPolicy, ApprovalRequest, ApprovalVote
from approvals.services import policy_changed_record, policy_snapshot
from project.admin import ReadOnlyAdminMixin

if TYPE_CHECKING:
    from accounts.models import User


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "tool_pattern",
        "action",
        "subject",
        "conversation_id",
        "condition",
        "approvers_group",
        "four_eyes",
        "approvals_required",
        "expires_after_seconds",
        "enabled",
    )
    list_filter = ("action", "enabled", "four_eyes", "group", "approvers_group")
    search_fields = ("tool_pattern", "description", "user__email", "group__name")
    raw_id_fields = ("user",)
    readonly_fields = ("created_by", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("tool_pattern", "action", "enabled", "description")}),
        (
            "Who",
            {
                "fields": ("user", "group", "conversation_id"),
                "description": "A user, or a group, or neither for everyone.",
            },
        ),
        (
            "Only when an argument matches",
            {"fields": ("condition_path", "condition_operator", "condition_value")},
        ),
        (
            "Asking",
            {
                "fields": (
                    "approvers_group",
                    "four_eyes",
                    "approvals_required",
                    "expires_after_seconds",
                ),
                "description": (
                    "For rules that ask. Four eyes and more than one approval need an "
                    "approvers group; one denial always denies."
                ),
            },
        ),
        ("History", {"fields": ("created_by", "created_at", "updated_at")}),
    )

    @admin.display(description="who")
    def subject(self, obj: ApprovalPolicy) -> str:
        return obj.subject_label

    @admin.display(description="condition")
    def condition(self, obj: ApprovalPolicy) -> str:
        return obj.condition_label

    def save_model(
        self, request: HttpRequest, obj: ApprovalPolicy, form: Any, change: bool
    ) -> None:
        before = None
        if change and obj.pk:
            old = ApprovalPolicy.objects.filter(pk=obj.pk).first()
            before = policy_snapshot(old) if old else None
        else:
            # The admin site lets in signed-in staff only: never an AnonymousUser.
            obj.created_by = cast("User", request.user)
        super().save_model(request, obj, form, change)
        policy_changed_record(
            policy=obj,
            operation="updated" if change else "created",
            actor=request.user,
            ip=_ip(request),
            before=before,
        )

    def delete_model(self, request: HttpRequest, obj: ApprovalPolicy) -> None:
        before = policy_snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        policy_changed_record(
            policy=obj, operation="deleted", actor=request.user, ip=_ip(request), before=before
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApprovalPolicy]) -> None:
        for obj in list(queryset):
            self.delete_model(request, obj)


class ApprovalVoteInline(ReadOnlyAdminMixin, admin.TabularInline):
    """The votes of one request, oldest first, read-only (written only by
    ``approval_decide``)."""

    model = ApprovalVote
    extra = 0
    can_delete = False
    fields = ("created_at", "voter", "decision", "reason", "edited", "arguments_hash")
    readonly_fields = fields
    ordering = ("created_at", "id")


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "tool_name",
        "requester",
        "status",
        "approver_group",
        "four_eyes",
        "approvals_required",
        "estimated_cost_usd",
        "decided_by",
        "created_at",
        "decided_at",
    )
    list_filter = ("status", "four_eyes", "tool_name", "approver_group")
    inlines = (ApprovalVoteInline,)
    search_fields = ("tool_name", "requester__email", "reason")
    list_select_related = ("requester", "approver_group", "decided_by")
