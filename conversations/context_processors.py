"""What every page's template reads of the signed-in user's settings (base.html)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from conversations.selectors import preferences_get


def preferences(request: HttpRequest) -> dict[str, Any]:
    """``preferences``: the user's ``UserPreferences`` (theme, send key), read on first
    use (one query), defaults for anonymous visitors."""
    return {"preferences": SimpleLazyObject(lambda: preferences_get(user=request.user))}
