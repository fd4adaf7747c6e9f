"""Request types for views' annotations (django-stubs' and django-htmx's documented pattern),
and the client's address as the audit trail records it.

In ``accounts``, the app of ``User``, so that the apps whose views use them
(all above ``accounts``) import down the layers (docs/architecture.md).

Views behind ``login_required`` take an :class:`AuthenticatedHttpRequest`:
``request.user`` is a ``User`` there, and ``request.htmx`` (django-htmx's
middleware, ``django_htmx.middleware.HtmxDetails``) says whether htmx sent it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from accounts.models import User


def client_ip(request: HttpRequest) -> str | None:
    """The peer address as daphne/Django saw it (a proxy's, behind one), for the audit
    trail; ``None`` when there is none."""
    return request.META.get("REMOTE_ADDR") or None


class HtmxHttpRequest(HttpRequest):
    """A request that passed django-htmx's middleware."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """A request from a signed-in user (a view behind ``login_required``)."""

    user: User
