"""WebSocket URL patterns gathered from each app's ``routing.py``."""

from __future__ import annotations

websocket_urlpatterns: list = []
