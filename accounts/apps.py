from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, groups, budgets, the usage ledger and rate limits."""

    name = "accounts"
    verbose_name = "Users, budgets and usage"
    default_auto_field = "django.db.models.BigAutoField"
