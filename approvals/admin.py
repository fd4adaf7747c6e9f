"""Admin: policies (every save and delete is audited); approval requests and their
votes read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse

from approvals.models import ApprovalPolicy, ApprovalRequest, ApprovalVote, Guardrail
from approvals.selectors import guardrail_preview
from approvals.services import (
    guardrail_changed_record,
    guardrail_snapshot,
    policy_changed_record,
    policy_snapshot,
)
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


class GuardrailForm(forms.ModelForm):
    """The guardrail's fields plus a sample text for "Test on the sample text"
    (never saved)."""

    sample_text = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Press “Test on the sample text” to see what this guardrail does to it "
        "before saving.",
    )

    class Meta:
        model = Guardrail
        fields = (
            "name", "stage", "kind", "action", "config", "order", "enabled", "description",
            "user", "group",
        )  # fmt: skip


@admin.register(Guardrail)
class GuardrailAdmin(admin.ModelAdmin):
    """Guardrails (every save and delete is audited), with a "test this
    guardrail" button that shows its effect on a sample text without saving."""

    form = GuardrailForm
    change_form_template = "admin/approvals/guardrail/change_form.html"
    list_display = ("id", "name", "stage", "kind", "action", "subject", "order", "enabled")
    list_filter = ("stage", "kind", "action", "enabled", "group")
    search_fields = ("name", "description", "user__email", "group__name")
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "stage", "kind", "action", "config", "order", "enabled")}),
        ("Shown to the user when it acts", {"fields": ("description",)}),
        (
            "Who",
            {"fields": ("user", "group"), "description": "A user, or a group, or neither."},
        ),
        ("Test", {"fields": ("sample_text",)}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="who")
    def subject(self, obj: Guardrail) -> str:
        return obj.subject_label

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST" and "_test" in request.POST:
            return self._test_view(request, object_id, form_url)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _test_view(
        self, request: HttpRequest, object_id: str | None, form_url: str
    ) -> HttpResponse:
        """The change form again, bound to what was typed, with the guardrail's
        effect on the sample text (or the form's errors); nothing is saved."""
        obj = self.get_object(request, object_id) if object_id else None
        if object_id and obj is None:
            raise Http404("No such guardrail.")
        allowed = (
            self.has_change_permission(request, obj) if obj else self.has_add_permission(request)
        )
        if not allowed:
            raise PermissionDenied
        form_class = self.get_form(request, obj, change=obj is not None)
        form = form_class(request.POST, instance=obj or Guardrail())
        preview = None
        if form.is_valid():
            preview = guardrail_preview(
                guardrail=form.instance, text=form.cleaned_data.get("sample_text") or ""
            )
        fieldsets = self.get_fieldsets(request, obj)
        admin_form = helpers.AdminForm(
            form,
            cast(Any, list(fieldsets)),
            self.get_prepopulated_fields(request, obj),
            self.get_readonly_fields(request, obj),
            model_admin=self,
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Test guardrail",
            "subtitle": str(obj) if obj else None,
            "adminform": admin_form,
            "object_id": object_id,
            "original": obj,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "guardrail_preview": preview,
        }
        return self.render_change_form(
            request, context, add=obj is None, change=obj is not None, obj=obj, form_url=form_url
        )

    def save_model(self, request: HttpRequest, obj: Guardrail, form: Any, change: bool) -> None:
        before = None
        if change and obj.pk:
            old = Guardrail.objects.filter(pk=obj.pk).first()
            before = guardrail_snapshot(old) if old else None
        super().save_model(request, obj, form, change)
        guardrail_changed_record(
            guardrail=obj,
            operation="updated" if change else "created",
            actor=request.user,
            ip=_ip(request),
            before=before,
        )

    def delete_model(self, request: HttpRequest, obj: Guardrail) -> None:
        before = guardrail_snapshot(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        guardrail_changed_record(
            guardrail=obj, operation="deleted", actor=request.user, ip=_ip(request), before=before
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Guardrail]) -> None:
        for obj in list(queryset):
            self.delete_model(request, obj)
