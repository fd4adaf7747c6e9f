"""Admin: model configs are managed here; conversations, messages and runs are read-mostly."""

from __future__ import annotations

from typing import Any

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
from conversations.models import Conversation, Message, ModelConfig, Run
from conversations.services import conversation_rows_delete
from project.admin import ReadOnlyAdminMixin


@admin.register(ModelConfig)
class ModelConfigAdmin(AuditedAdmin, admin.ModelAdmin):
    """Every change is audited (``model_config.changed``)."""

    audit_name = "model_config"
    list_display = (
        "name", "litellm_model", "enabled", "is_default", "context_window",
        "input_cost_per_token", "output_cost_per_token", "supports_tools",
    )  # fmt: skip
    list_filter = ("enabled", "is_default", "supports_tools")
    search_fields = ("name", "litellm_model")
    fieldsets = (
        (None, {"fields": ("name", "litellm_model", "enabled", "is_default", "supports_tools")}),
        ("Provider", {"fields": ("api_base", "api_key_env")}),
        ("Limits", {"fields": ("context_window", "max_output_tokens")}),
        (
            "Prices (USD per token; blank = litellm's price map)",
            {"fields": ("input_cost_per_token", "output_cost_per_token")},
        ),
    )


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
