"""System checks of the chat's WebSocket configuration, registered by
``ConversationsConfig.ready`` for ``manage.py check --deploy``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning


def websocket_origins_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when no origin may open the page WebSocket (every socket is refused, so
    pages load but nothing arrives live: no streaming, no approval cards)."""
    if settings.TOLLGATE_WEBSOCKET_ORIGINS:
        return []
    return [
        Warning(
            "No origin may open the WebSocket: pages load, but replies and approval "
            "requests never arrive live.",
            hint="Set CSRF_TRUSTED_ORIGINS to the origin users open "
            "(https://tollgate.example.com), or TOLLGATE_WEBSOCKET_ORIGINS.",
            id="tollgate.W001",
        )
    ]
