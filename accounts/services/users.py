"""Writes for users: creating the first administrator."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.validators import validate_email
from django.db import transaction

from accounts.models import User


@transaction.atomic
def admin_create_or_promote(*, email: str, password: str) -> tuple[User, bool]:
    """Create a superuser, or make an existing user with that email a superuser.

    Args:
        email: the admin's login; normalised to lower case.
        password: checked against ``AUTH_PASSWORD_VALIDATORS``.

    Returns:
        ``(user, created)``; ``created`` is False when the email already existed
        (its password is then replaced).

    Raises:
        django.core.exceptions.ValidationError: bad email or a weak password.
    """
    email = User.objects.normalize_email(email.strip()).lower()
    validate_email(email)
    user = User.objects.select_for_update().filter(email__iexact=email).first()
    validate_password(password, user=user or User(email=email))
    if user is None:
        return User.objects.create_superuser(email=email, password=password), True
    user.is_staff = True
    user.is_superuser = True
    user.is_active = True
    user.set_password(password)
    user.save(update_fields=["is_staff", "is_superuser", "is_active", "password"])
    return user, False
