"""Sign-up, sign-in and sign-out through django-allauth's real views."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import User

pytestmark = pytest.mark.django_db


def test_signup_page_renders_in_product_layout(client):
    response = client.get(reverse("account_signup"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Tollgate" in body
    assert 'name="email"' in body
    assert "htmx" in body  # the base layout loads the vendored htmx


def test_signup_creates_user_and_logs_in(client):
    response = client.post(
        reverse("account_signup"),
        {
            "email": "New.Person@example.com",
            "password1": "a-long-pass-phrase-9",
            "password2": "a-long-pass-phrase-9",
        },
    )
    assert response.status_code == 302
    user = User.objects.get()
    assert user.email == "new.person@example.com"
    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert "new.person@example.com" in home.content.decode()


def test_signup_rejects_duplicate_email_case_insensitively(client, user):
    response = client.post(
        reverse("account_signup"),
        {
            "email": user.email.upper(),
            "password1": "a-long-pass-phrase-9",
            "password2": "a-long-pass-phrase-9",
        },
    )
    assert response.status_code == 200
    assert "already registered" in response.content.decode()
    assert User.objects.count() == 1


def test_signup_rejects_mismatched_passwords(client):
    response = client.post(
        reverse("account_signup"),
        {
            "email": "x@example.com",
            "password1": "a-long-pass-phrase-9",
            "password2": "different-phrase-9",
        },
    )
    assert response.status_code == 200
    assert not User.objects.exists()


def test_login_with_email_and_logout(client, user, password):
    response = client.post(reverse("account_login"), {"login": user.email, "password": password})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200
    response = client.post(reverse("account_logout"))
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 302  # back to sign-in


def test_login_with_wrong_password_fails_with_message(client, user):
    response = client.post(reverse("account_login"), {"login": user.email, "password": "wrong"})
    assert response.status_code == 200
    assert "not correct" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_anonymous_home_redirects_to_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
