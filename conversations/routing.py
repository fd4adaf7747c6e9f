"""WebSocket routes of the conversations app (one socket per page)."""

from __future__ import annotations

from django.urls import path

from conversations.consumers import PageConsumer

websocket_urlpatterns = [path("ws/", PageConsumer.as_asgi())]
