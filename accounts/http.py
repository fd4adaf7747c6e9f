"""Request types for views' annotations (django-stubs' and django-htmx's documented pattern).

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


class HtmxHttpRequest(HttpRequest):
    """A request that passed django-htmx's middleware."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """A request from a signed-in user (a view behind ``login_required``)."""

    user: User
