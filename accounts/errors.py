"""Errors raised by the budget and rate-limit services.

Both carry a message written for the person in the chat; the engine shows it
as is and makes no LLM call.
"""

from __future__ import annotations

from datetime import datetime


class BudgetExceeded(Exception):
    """A call would take a budget past its limit (or the limit is already reached).

    Attributes:
        message: e.g. ``"monthly budget of $5.00 reached; resets on 2026-12-01 00:00 UTC"``.
        budget_id: the ``Budget`` that refused.
        resets_at: when its period ends (aware UTC datetime), ``None`` for "total".
    """

    def __init__(self, message: str, *, budget_id: int, resets_at: datetime | None) -> None:
        super().__init__(message)
        self.message = message
        self.budget_id = budget_id
        self.resets_at = resets_at


class RateLimited(Exception):
    """Too many requests or tokens per minute.

    Attributes:
        retry_after_seconds: seconds until a request may pass again (float, > 0).
        message: e.g. ``"rate limit of 20 requests per minute reached; try again in 12 s"``.
    """

    def __init__(self, retry_after_seconds: float, message: str) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.message = message
