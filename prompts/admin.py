"""Admin: the prompt library, every write through ``prompts.services`` (audited).

A prompt's page edits its name, command, description and sharing, and saves a
changed template as a new version (the versions themselves are read-only, each
with a diff against the one before and a "restore" action); its labels inline
moves labels through ``prompt_label_move``.

Chains (and their steps, inline) are edited in place, each change audited
(``chain.changed``, ``chain_step.changed``), each step's templates and models
checked by ``services.chain_steps_check`` first: the deployment's built-in chains
(no owner) are changed here, such as the verifier's model of "Answer → verify".
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Max, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit.adminlog import AuditedAdmin, AuditedInlines
from project.admin import ReadOnlyAdminMixin
from prompts import services
from prompts.diffs import diff_table
from prompts.errors import PromptError
from prompts.models import (
    DEFAULT_LABEL,
    Chain,
    ChainStep,
    Evaluation,
    EvaluationOutput,
    Prompt,
    PromptLabel,
    PromptVersion,
)


class PromptAdminForm(forms.ModelForm):
    """The prompt's own fields, and its text: on a new prompt, version 1; on a
    prompt that has versions, a changed template is saved as the next version."""

    template = forms.CharField(widget=forms.Textarea(attrs={"rows": 12, "cols": 100}))
    model_name = forms.CharField(label="Model", required=False, max_length=100)
    temperature = forms.DecimalField(
        required=False, min_value=0, max_value=2, decimal_places=2, max_digits=3
    )
    max_output_tokens = forms.IntegerField(required=False, min_value=1)
    change_note = forms.CharField(required=False, max_length=300)
    move_labels = forms.CharField(
        label="Point these labels at a new version",
        required=False,
        initial=DEFAULT_LABEL,
        help_text="Comma-separated (empty: none).",
    )

    class Meta:
        model = Prompt
        fields = ("name", "command", "description", "kind", "owner", "visibility", "groups")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            latest = self.instance.versions.order_by("-number").first()
            if latest is not None:
                self.fields["template"].initial = latest.template
                self.fields["model_name"].initial = latest.model_name
                self.fields["temperature"].initial = latest.temperature
                self.fields["max_output_tokens"].initial = latest.max_output_tokens
            self.fields[
                "template"
            ].help_text = "Changing it saves version n + 1; versions are never changed."
            self.fields["kind"].disabled = True

    #: Set by ``PromptAdmin.get_form``: the administrator saving the form.
    request_user: Any = None

    def validate_unique(self) -> None:
        """The services check the command (per owner, reserved ones) with their message."""

    def labels(self) -> list[str]:
        return [
            x.strip() for x in (self.cleaned_data.get("move_labels") or "").split(",") if x.strip()
        ]

    def clean(self) -> dict[str, Any]:
        """The services' own checks, so a refusal is shown on the form, not after it."""
        data = super().clean() or {}
        if self.errors:
            return data
        owner = data.get("owner")
        try:
            services.prompt_input_check(
                user=self.request_user, admin=True, prompt_id=self.instance.pk,
                owner_id=owner.pk if owner else None, name=data.get("name", ""),
                command=data.get("command", ""), template=data.get("template", ""),
                model_name=data.get("model_name") or "", temperature=data.get("temperature"),
                max_output_tokens=data.get("max_output_tokens"),
                change_note=data.get("change_note") or "", visibility=data.get("visibility"),
                group_ids=[g.pk for g in data.get("groups") or []], labels=self.labels(),
            )  # fmt: skip
        except PromptError as error:
            raise ValidationError(str(error)) from None
        return data


class PromptLabelForm(forms.ModelForm):
    class Meta:
        model = PromptLabel
        fields = ("name", "version")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        try:
            services.prompt_input_check(user=None, labels=[name])
        except PromptError as error:
            raise ValidationError(str(error)) from None
        return name


class PromptLabelInline(admin.TabularInline):
    model = PromptLabel
    form = PromptLabelForm
    fields = ("name", "version", "updated_by", "updated_at")
    readonly_fields = ("updated_by", "updated_at")
    extra = 0

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "version":
            prompt_id = (
                request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            )
            kwargs["queryset"] = PromptVersion.objects.filter(prompt_id=prompt_id or 0)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class PromptVersionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PromptVersion
    fields = ("link", "change_note", "variables", "model_name", "temperature",
              "max_output_tokens", "author", "created_at")  # fmt: skip
    readonly_fields = fields
    extra = 0
    ordering = ("-number",)

    @admin.display(description="version")
    def link(self, obj: PromptVersion) -> str:
        url = reverse("admin:prompts_promptversion_change", args=[obj.pk])
        return format_html('<a href="{}">v{}</a>', url, obj.number)


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    form = PromptAdminForm
    list_display = ("name", "command", "kind", "owner", "visibility", "latest", "updated_at")
    list_filter = ("kind", "visibility")
    search_fields = ("name", "command", "description", "owner__email")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    filter_horizontal = ("groups",)
    inlines = (PromptLabelInline, PromptVersionInline)
    fieldsets = (
        (None, {"fields": ("name", "command", "description", "kind", "owner")}),
        ("Sharing", {"fields": ("visibility", "groups")}),
        (
            "Text (a change is saved as a new version)",
            {
                "fields": (
                    "template",
                    "model_name",
                    "temperature",
                    "max_output_tokens",
                    "change_note",
                    "move_labels",
                )
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Prompt]:
        return super().get_queryset(request).annotate(latest_number=Max("versions__number"))

    @admin.display(description="latest", ordering="latest_number")
    def latest(self, obj: Prompt) -> str:
        latest = getattr(obj, "latest_number", None)
        return f"v{latest}" if latest else "—"

    def get_inlines(self, request: HttpRequest, obj: Prompt | None) -> Any:
        return self.inlines if obj is not None else ()

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.request_user = request.user  # type: ignore[attr-defined]
        return form

    def save_model(self, request: HttpRequest, obj: Prompt, form: Any, change: bool) -> None:
        data = form.cleaned_data
        groups = [g.pk for g in data.get("groups") or []]
        text = {
            "model_name": data.get("model_name") or "",
            "temperature": data.get("temperature"),
            "max_output_tokens": data.get("max_output_tokens"),
            "change_note": data.get("change_note") or "",
        }
        if not change:
            created = services.prompt_create(
                user=request.user, admin=True, owner=data.get("owner"), name=data["name"],
                command=data["command"], kind=data["kind"],
                description=data.get("description") or "", template=data["template"],
                visibility=data["visibility"], group_ids=groups, **text,
            )  # fmt: skip
            obj.pk = created.pk
            return
        services.prompt_update(
            user=request.user, admin=True, prompt_id=obj.pk, name=data["name"],
            command=data["command"], description=data.get("description") or "",
        )  # fmt: skip
        if {"visibility", "groups"} & set(form.changed_data):
            services.prompt_share(
                user=request.user, admin=True, prompt_id=obj.pk,
                visibility=data["visibility"], group_ids=groups,
            )  # fmt: skip
        if {"template", "model_name", "temperature", "max_output_tokens"} & set(form.changed_data):
            version = services.prompt_version_create(
                user=request.user, admin=True, prompt_id=obj.pk, template=data["template"],
                labels=form.labels(), **text,
            )  # fmt: skip
            messages.info(request, f"Saved as version {version.number}.")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Groups were set by the services; only the labels inline is left.
        for formset in formsets:
            self.save_formset(request, form, formset, change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # Written by the services, not the formset: admin's change message finds nothing.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        if formset.model is not PromptLabel:
            return
        prompt = form.instance
        for item in formset.forms:
            if not item.has_changed() or not item.cleaned_data:
                continue
            label = item.cleaned_data
            renamed = item.instance.pk and "name" in item.changed_data
            try:
                if item.instance.pk and (label.get("DELETE") or renamed):
                    old = PromptLabel.objects.get(pk=item.instance.pk).name
                    services.prompt_label_delete(
                        user=request.user, admin=True, prompt_id=prompt.pk, label=old
                    )
                if not label.get("DELETE") and label.get("name") and label.get("version"):
                    services.prompt_label_move(
                        user=request.user, admin=True, prompt_id=prompt.pk, label=label["name"],
                        number=label["version"].number,
                    )  # fmt: skip
            except PromptError as error:  # the production label kept: said, the rest saved
                messages.error(request, str(error))


@admin.register(PromptVersion)
class PromptVersionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Versions are never changed: they are looked at, compared, and restored."""

    list_display = ("prompt", "number", "change_note", "author", "created_at")
    list_filter = ("prompt__kind",)
    search_fields = ("prompt__name", "prompt__command", "template", "change_note")
    list_select_related = ("prompt", "author")
    readonly_fields = ("prompt", "number", "template", "variables", "model_name", "temperature",
                       "max_output_tokens", "change_note", "author", "created_at",
                       "diff_with_previous")  # fmt: skip
    fields = readonly_fields
    actions = ("restore",)

    @admin.display(description="changes from the version before")
    def diff_with_previous(self, obj: PromptVersion) -> SafeString | str:
        before = PromptVersion.objects.filter(prompt=obj.prompt_id, number=obj.number - 1).first()
        if before is None:
            return "—"
        return diff_table(
            before.template, obj.template,
            before_title=f"v{before.number}", after_title=f"v{obj.number}",
        )  # fmt: skip

    @admin.action(description="Restore as the newest version (moves production to it)")
    def restore(self, request: HttpRequest, queryset: QuerySet[PromptVersion]) -> None:
        for version in queryset.select_related("prompt"):
            try:
                new = services.prompt_version_restore(
                    user=request.user, admin=True, prompt_id=version.prompt_id,
                    number=version.number,
                )  # fmt: skip
            except PromptError as error:
                messages.error(request, str(error))
                continue
            messages.success(
                request, f"{version.prompt.name}: v{version.number} restored as v{new.number}."
            )


class EvaluationOutputInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = EvaluationOutput
    fields = (
        "row",
        "variant",
        "status",
        "text",
        "error",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "judge_score",
        "judge_error",
    )
    readonly_fields = fields
    extra = 0


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """A/B evaluations, to look at: the product runs them (``conversations.evaluations``);
    an admin may delete one (its rows and outputs go with it; its spend stays in the
    usage ledger and the audit trail)."""

    deletable = True
    list_display = (
        "id",
        "prompt",
        "owner",
        "model_a",
        "model_b",
        "status",
        "calls_done",
        "calls_total",
        "estimate_usd",
        "created_at",
    )
    list_filter = ("status",)
    list_select_related = ("prompt", "owner")
    search_fields = ("prompt__name", "owner__email")
    inlines = (EvaluationOutputInline,)


class ChainStepAdminForm(forms.ModelForm):
    class Meta:
        model = ChainStep
        fields = ("position", "name", "model_name", "template", "tools_allowed",
                  "judge_template", "judge_model_name", "max_rounds")  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors or data.get("DELETE"):
            return data
        step = services.ChainStepInput(
            name=data.get("name") or "",
            template=data.get("template") or "",
            model_name=data.get("model_name") or "",
            tools_allowed=bool(data.get("tools_allowed")),
            judge_template=data.get("judge_template") or "",
            judge_model_name=data.get("judge_model_name") or "",
            max_rounds=data.get("max_rounds") or 1,
        )
        try:
            services.chain_steps_check(steps=[step])
        except PromptError as error:
            raise ValidationError(str(error).removeprefix("Step 1: ")) from None
        return data


class ChainStepInline(admin.StackedInline):
    model = ChainStep
    form = ChainStepAdminForm
    extra = 0
    ordering = ("position",)


@admin.register(Chain)
class ChainAdmin(AuditedAdmin, AuditedInlines, admin.ModelAdmin):
    """Chains of every user and the deployment's; steps inline."""

    audit_name = "chain"
    inline_audit_names = {ChainStep: "chain_step"}
    inlines = (ChainStepInline,)
    list_display = ("name", "owner", "visibility", "updated_at")
    list_filter = ("visibility",)
    search_fields = ("name", "description", "owner__email")
    raw_id_fields = ("owner",)
    filter_horizontal = ("groups",)
