"""``time.now``: the current date and time in an IANA time zone."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from tools.registry import ToolError, tool


@tool(name="time.now", read_only=True, idempotent=True, open_world=False, timeout_seconds=5)
def time_now(
    timezone: Annotated[
        str,
        Field(
            description="IANA time zone name, for example 'Asia/Tokyo', 'Europe/Paris' or 'UTC'.",
            min_length=1,
            max_length=64,
        ),
    ] = "UTC",
) -> dict[str, Any]:
    """Return the current date and time in a time zone (IANA name, default UTC)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        # ValueError: keys that are not names (absolute paths, "..").
        raise ToolError(
            f"Unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'."
        ) from exc
    now = dt.datetime.now(tz=zone)
    offset = now.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return {
        "timezone": timezone,
        "iso": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.time().isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
        "utc_offset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
        "abbreviation": now.tzname(),
    }
