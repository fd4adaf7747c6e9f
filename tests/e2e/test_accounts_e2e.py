"""Accounts in a real browser against daphne + Celery + PostgreSQL + Redis."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import E2E_PASSWORD, sign_up, unique_email

pytestmark = pytest.mark.e2e


def test_sign_up_log_out_and_log_in(new_page):
    page = new_page()
    email = unique_email("signup")
    sign_up(page, email)
    assert email in page.content()

    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/**")

    page.fill("input[name=login]", email)
    page.fill("input[name=password]", E2E_PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login" not in url)
    assert email in page.content()


def test_admin_created_by_command_opens_admin(new_page, admin_login):
    # ``admin_login`` made the administrator with ``manage.py createadmin --noinput``.
    email, password = admin_login
    page = new_page()
    page.goto("/admin/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    page.wait_for_selector("text=Tollgate administration")
    assert page.locator("a", has_text="Users").count() >= 1
