from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from accounts.models import User

pytestmark = pytest.mark.django_db


def test_create_user_normalises_email_and_hashes_password():
    user = User.objects.create_user(email="Alice@Example.COM", password="s3cret-pass-phrase")
    assert user.email == "alice@example.com"
    assert user.password != "s3cret-pass-phrase"
    assert user.check_password("s3cret-pass-phrase")
    assert not user.is_staff
    assert not user.is_superuser
    assert User.USERNAME_FIELD == "email"
    assert not hasattr(User, "username") or User.username is None


def test_create_user_requires_email():
    with pytest.raises(ValueError, match="email"):
        User.objects.create_user(email="", password="x")


def test_create_superuser_sets_flags_and_rejects_non_staff():
    admin = User.objects.create_superuser(email="root@example.com", password="pw-long-enough-1")
    assert admin.is_staff
    assert admin.is_superuser
    with pytest.raises(ValueError, match="is_staff"):
        User.objects.create_superuser(email="x@example.com", password="p", is_staff=False)


def test_email_is_unique_ignoring_case():
    User.objects.create_user(email="bob@example.com", password="pw-long-enough-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create(email="BOB@example.com")


def test_display_names_fall_back_to_email():
    user = User(email="carol@example.com")
    assert user.get_full_name() == "carol@example.com"
    assert user.get_short_name() == "carol"
    user.name = "Carol C."
    assert user.get_short_name() == "Carol C."
    assert str(user) == "carol@example.com"
