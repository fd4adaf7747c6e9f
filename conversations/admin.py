"""Admin: model configs are managed here; conversations, messages and runs are read-mostly."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from audit.adminlog import AuditedAdmin
from conversations.gateway import price_source
from conversations.models import AgentProfile, Conversation, Message, ModelConfig, Run
from conversations.services import conversation_rows_delete
from project.admin import ReadOnlyAdminMixin

#: What an admin reads about where a model's prices come from (``gateway.price_source``).
PRICE_STATUS = {
    "confirmed": "Confirmed here",
    "litellm": "From litellm's price list",
    "unknown": "UNKNOWN: refused under dollar budgets until you set its prices",
}


class ModelConfigForm(forms.ModelForm):
    """A model config, its fallbacks typed as names in order (stored as ids)."""

    # Explicit: a base URL typed without a scheme is http (local servers such as
    # Ollama), as Django's default before 6.0, and no deprecation warning.
    api_base = forms.URLField(
        required=False,
        assume_scheme="http",
        help_text="Provider base URL; blank for the default.",
    )
    fallback_names = forms.CharField(
        label="fallbacks",
        required=False,
        help_text="Names of other model configs to try, in order, comma-separated, when "
        "this one fails before its first token (429, 5xx, timeouts, broken streams) or "
        "its circuit breaker is open.",
    )

    class Meta:
        model = ModelConfig
        fields = (
            "name", "litellm_model", "kind", "enabled", "is_default", "supports_tools",
            "accepts_images", "api_base",
            "api_key_env", "context_window", "max_output_tokens", "input_cost_per_token",
            "output_cost_per_token", "cached_input_cost_per_token", "temperature",
            "cache_replies", "kind",
        )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kind"].required = False
        ids = list(self.instance.fallbacks or [])
        names = dict(ModelConfig.objects.filter(pk__in=ids).values_list("pk", "name"))
        self.initial["fallback_names"] = ", ".join(names[i] for i in ids if i in names)

    def clean_kind(self) -> str:
        """Blank keeps the model's kind (a chat model unless set)."""
        return self.cleaned_data.get("kind") or self.instance.kind or ModelConfig.Kind.CHAT

    def clean_fallback_names(self) -> list[int]:
        names = [n.strip() for n in self.cleaned_data["fallback_names"].split(",") if n.strip()]
        found = dict(ModelConfig.objects.filter(name__in=names).values_list("name", "pk"))
        unknown = [n for n in names if n not in found]
        if unknown:
            raise forms.ValidationError(f"No model config named {', '.join(unknown)}.")
        embedding = ModelConfig.objects.filter(name__in=names, kind=ModelConfig.Kind.EMBEDDING)
        if embedding.exists():
            listed = ", ".join(embedding.values_list("name", flat=True))
            raise forms.ValidationError(f"{listed}: an embedding model cannot answer a chat.")
        if self.instance.pk is not None and self.instance.pk in found.values():
            raise forms.ValidationError("A model cannot be its own fallback.")
        if len(set(names)) != len(names):
            raise forms.ValidationError("Each fallback may be named once.")
        return [found[n] for n in names]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("kind") == ModelConfig.Kind.EMBEDDING and cleaned.get("is_default"):
            self.add_error(
                "is_default", "An embedding model cannot be the default model for chats."
            )
        return cleaned

    def save(self, commit: bool = True) -> ModelConfig:
        self.instance.fallbacks = self.cleaned_data["fallback_names"]
        return super().save(commit=commit)


@admin.register(AgentProfile)
class AgentProfileAdmin(AuditedAdmin, admin.ModelAdmin):
    """Agents of every user and the deployment's (owner empty); changes are audited
    (``agent.changed``)."""

    audit_name = "agent"
    list_display = ("name", "owner", "visibility", "model_config", "max_handoffs", "transfer")
    list_filter = ("visibility", "transfer")
    search_fields = ("name", "description", "owner__email")
    autocomplete_fields = ("owner",)
    filter_horizontal = ("groups", "handoff_targets", "agent_tools")


@admin.register(ModelConfig)
class ModelConfigAdmin(AuditedAdmin, admin.ModelAdmin):
    """Every change is audited (``model_config.changed``)."""

    audit_name = "model_config"
    form = ModelConfigForm
    list_display = (
        "name", "litellm_model", "kind", "enabled", "is_default", "context_window",
        "input_cost_per_token", "output_cost_per_token", "price_status", "supports_tools",
        "accepts_images", "kind",
    )  # fmt: skip
    list_filter = ("enabled", "is_default", "supports_tools", "accepts_images", "kind")
    search_fields = ("name", "litellm_model")
    readonly_fields = ("price_status",)
    fieldsets = (
        (None, {"fields": ("name", "litellm_model", "kind", "enabled", "is_default")}),
        ("Abilities", {"fields": ("supports_tools", "accepts_images")}),
        ("Provider", {"fields": ("api_base", "api_key_env")}),
        ("Resilience", {"fields": ("fallback_names", "temperature", "cache_replies")}),
        ("Limits", {"fields": ("context_window", "max_output_tokens")}),
        (
            "Prices (USD per token; blank = litellm's price map)",
            {
                "fields": (
                    "price_status",
                    "input_cost_per_token",
                    "output_cost_per_token",
                    "cached_input_cost_per_token",
                ),
                "description": "A model litellm's price list does not know, or prices at "
                "$0, cannot be used by anyone a dollar budget applies to until its prices "
                "are set here (0 is a price: set it for a model that really is free).",
            },
        ),
    )

    @admin.display(description="prices")
    def price_status(self, obj: ModelConfig) -> str:
        if obj.pk is None and not obj.litellm_model:
            return "-"
        return PRICE_STATUS[price_source(obj)]


class DeletesToolCalls(admin.ModelAdmin):
    """Deletes through ``conversation_rows_delete``, so the tool invocations of the
    runs and messages deleted (ids in ``tools``, not foreign keys) go with them."""

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        conversation_rows_delete(rows=type(obj).objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        conversation_rows_delete(rows=queryset)


class ReadOnlyAdmin(ReadOnlyAdminMixin, DeletesToolCalls):
    """Rows written by the product only; admins look, and may delete."""

    deletable = True


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("id", "role", "status", "short_content", "model", "prompt_tokens",
              "completion_tokens", "cost_usd", "created_at")  # fmt: skip
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:120]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(DeletesToolCalls):
    list_display = ("id", "title", "owner", "model_config", "archived", "updated_at")
    list_filter = ("archived", "model_config")
    search_fields = ("title", "owner__email")
    list_select_related = ("owner", "model_config")
    readonly_fields = ("owner", "model_config", "created_at", "updated_at")
    fields = ("title", "owner", "model_config", "archived", "created_at", "updated_at")
    inlines = (MessageInline,)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation", "role", "status", "model", "prompt_tokens",
                    "completion_tokens", "cost_usd", "latency_ms", "created_at")  # fmt: skip
    list_filter = ("role", "status")
    search_fields = ("content", "conversation__owner__email")
    list_select_related = ("conversation",)
    raw_id_fields = ("conversation", "run")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation", "status", "step", "max_steps", "lease_owner",
                    "created_at", "finished_at")  # fmt: skip
    list_filter = ("status",)
    search_fields = ("conversation__owner__email", "error")
    list_select_related = ("conversation",)
    raw_id_fields = ("conversation", "user_message")


# Celery beat's schedules mean nothing where beat does not run (the embedded mode
# runs its periodic work in-process): they are not shown there.
if settings.TOLLGATE_DISPATCHER != "celery":
    for model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
        if admin.site.is_registered(model):
            admin.site.unregister(model)
