"""App configs of third-party apps, as Tollgate names them."""

from __future__ import annotations

from allauth.account.apps import AccountConfig


class SignInConfig(AccountConfig):
    """django-allauth's ``account`` app (its email addresses), named so that admin's
    index does not show two "Accounts" sections (``accounts`` is Tollgate's users)."""

    verbose_name = "Sign-in email addresses"
