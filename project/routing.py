"""WebSocket URL patterns gathered from each app's ``routing.py``."""

from __future__ import annotations

from conversations.routing import websocket_urlpatterns as conversations_ws

websocket_urlpatterns: list = [*conversations_ws]
