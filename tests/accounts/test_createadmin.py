from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import User

pytestmark = pytest.mark.django_db


def test_createadmin_from_environment_then_admin_opens(client, monkeypatch):
    monkeypatch.setenv("TOLLGATE_ADMIN_EMAIL", "Admin@Example.com")
    monkeypatch.setenv("TOLLGATE_ADMIN_PASSWORD", "a-long-admin-phrase-7")
    call_command("createadmin", "--noinput")
    admin = User.objects.get(email="admin@example.com")
    assert admin.is_superuser
    assert admin.is_staff
    response = client.post(
        reverse("account_login"),
        {"login": "admin@example.com", "password": "a-long-admin-phrase-7"},
    )
    assert response.status_code == 302
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "Tollgate administration" in page.content.decode()


def test_createadmin_promotes_existing_user(user, monkeypatch):
    monkeypatch.setenv("TOLLGATE_ADMIN_EMAIL", user.email)
    monkeypatch.setenv("TOLLGATE_ADMIN_PASSWORD", "another-long-phrase-8")
    call_command("createadmin", "--noinput")
    user.refresh_from_db()
    assert user.is_superuser
    assert user.check_password("another-long-phrase-8")
    assert User.objects.count() == 1


def test_createadmin_refuses_weak_password(monkeypatch):
    monkeypatch.setenv("TOLLGATE_ADMIN_EMAIL", "a@example.com")
    monkeypatch.setenv("TOLLGATE_ADMIN_PASSWORD", "123")
    with pytest.raises(CommandError, match="too short"):
        call_command("createadmin", "--noinput")
    assert not User.objects.exists()


def test_createadmin_without_input_names_missing_variable(monkeypatch):
    monkeypatch.delenv("TOLLGATE_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("TOLLGATE_ADMIN_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="TOLLGATE_ADMIN_EMAIL"):
        call_command("createadmin", "--noinput")


def test_non_staff_user_cannot_open_admin(user_client):
    response = user_client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
