"""Budget periods, always in UTC.

A day starts at 00:00 UTC, a week on Monday 00:00 UTC (ISO 8601 week), a month
on the 1st at 00:00 UTC; a "total" period started at the Unix epoch and never
resets. UTC is fixed on purpose: everyone's limits reset at the same instant,
whatever ``TIME_ZONE`` or the user's browser says, and messages say "UTC".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PERIOD_NAMES = ("daily", "weekly", "monthly", "total")


def period_bounds(period: str, *, now: datetime | None = None) -> tuple[datetime, datetime | None]:
    """Return ``(start, resets_at)`` of the period containing ``now`` (UTC).

    Args:
        period: ``"daily"``, ``"weekly"``, ``"monthly"`` or ``"total"``.
        now: an aware datetime; defaults to ``timezone.now()``.

    Returns:
        The inclusive start and the exclusive end (when the budget resets) as
        aware UTC datetimes; the end is ``None`` for ``"total"``.

    Raises:
        ValueError: unknown period, or a naive ``now``.
    """
    if now is None:
        now = timezone.now()
    if timezone.is_naive(now):
        raise ValueError("period_bounds needs an aware datetime")
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return midnight, midnight + timedelta(days=1)
    if period == "weekly":
        start = midnight - timedelta(days=midnight.weekday())
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = midnight.replace(day=1)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)
    if period == "total":
        return EPOCH, None
    raise ValueError(f"unknown budget period {period!r}; use one of {', '.join(PERIOD_NAMES)}")


def format_reset(resets_at: datetime | None) -> str:
    """``"resets on 2026-12-01 00:00 UTC"``, or ``"it does not reset"``."""
    if resets_at is None:
        return "it does not reset"
    return f"resets on {resets_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
