"""ASGI entry point: Django over HTTP, Channels consumers over WebSocket.

Routing follows the Channels docs: an origin validator around
``AuthMiddlewareStack`` around a ``URLRouter`` of each app's
``websocket_urlpatterns``. The validator is Channels' ``OriginValidator`` over
the exact origins in ``settings.TOLLGATE_WEBSOCKET_ORIGINS`` (scheme, host and
port), not ``AllowedHostsOriginValidator``, which compares the host only: a
page on the same host with another scheme or port carries the user's cookie too.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import ParseResult

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Django must be set up before consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from conversations.dispatch import gateway_warm  # noqa: E402
from project.routing import websocket_urlpatterns  # noqa: E402
from project.telemetry import telemetry_setup  # noqa: E402

telemetry_setup(service="tollgate-web")

logger = logging.getLogger(__name__)


class ConfiguredOriginValidator(OriginValidator):
    """``OriginValidator`` over ``settings.TOLLGATE_WEBSOCKET_ORIGINS``, read per
    connection (so a test's settings apply): a socket opens only from one of those
    origins exactly; one without an Origin header never does."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins=[])

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        allowed = parsed_origin is not None and any(
            self.match_allowed_origin(parsed_origin, origin)
            for origin in settings.TOLLGATE_WEBSOCKET_ORIGINS
        )
        if not allowed:
            origin = parsed_origin.geturl() if parsed_origin is not None else None
            logger.warning(
                "WebSocket refused: origin %r is not in TOLLGATE_WEBSOCKET_ORIGINS", origin
            )
        return allowed


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ConfiguredOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Where this process runs the replies itself (the embedded mode), warm the model
# gateway now, in the background: importing litellm takes seconds, which the first
# reply after a start waited for. A Celery worker warms its own (worker_init).
if settings.TOLLGATE_DISPATCHER != "celery":
    gateway_warm()
