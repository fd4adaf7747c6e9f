"""django-allauth adapter: whether sign-up is open comes from settings."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.http import HttpRequest


class AccountAdapter(DefaultAccountAdapter):
    """Closes sign-up when ``ACCOUNT_ALLOW_REGISTRATION`` is false."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return bool(getattr(settings, "ACCOUNT_ALLOW_REGISTRATION", True))
