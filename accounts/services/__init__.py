"""Writes for accounts (users, budgets, the usage ledger, rate limits, API keys).

Import from here: ``from accounts.services import llm_call_admit``.
"""

from __future__ import annotations

from accounts.errors import BudgetExceeded, RateLimited
from accounts.selectors import budget_requires_prices, budgets_applicable
from accounts.services.apikeys import (
    ApiKeyError,
    ApiKeyNotFound,
    ApiKeyRefused,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
)
from accounts.services.budgets import (
    budget_hold_approved,
    budget_release,
    budget_release_approved,
    budget_reservations_expire,
    budget_reserve,
    format_usd,
    usage_record,
)
from accounts.services.llm import (
    Admission,
    llm_call_abort,
    llm_call_admit,
    llm_call_settle,
)
from accounts.services.ratelimits import ratelimit_add_tokens, ratelimit_check
from accounts.services.users import admin_create_or_promote

__all__ = [
    "Admission",
    "ApiKeyError",
    "ApiKeyNotFound",
    "ApiKeyRefused",
    "BudgetExceeded",
    "RateLimited",
    "admin_create_or_promote",
    "api_key_authenticate",
    "api_key_create",
    "api_key_revoke",
    "budget_hold_approved",
    "budget_release",
    "budget_release_approved",
    "budget_requires_prices",
    "budget_reservations_expire",
    "budget_reserve",
    "budgets_applicable",
    "format_usd",
    "llm_call_abort",
    "llm_call_admit",
    "llm_call_settle",
    "ratelimit_add_tokens",
    "ratelimit_check",
    "usage_record",
]
