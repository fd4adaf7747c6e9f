"""Budgets in a real browser: an admin sets $0.00 in Django admin; the next message is refused."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    ROOT,
    admin_sign_in,
    chat_new,
    chat_send,
    expect_run_completed,
    run_status,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_zero_budget_set_in_admin_refuses_the_next_message(new_page, stack, admin_login):
    page = new_page()
    email = unique_email("budget")
    sign_up(page, email)
    chat_new(page)
    first_run, _ = chat_send(page, "hello")
    expect_run_completed(page, first_run)
    user_id = stack.sql("SELECT id FROM accounts_user WHERE email = %s", (email,))[0][0]
    assert stack.sql(
        "SELECT count(*) FROM accounts_usagerecord WHERE user_id = %s", (user_id,)
    ) == [(1,)]

    admin = new_page()
    admin_sign_in(admin, *admin_login)
    admin.goto(f"/admin/accounts/user/?q={email}")
    admin.get_by_role("link", name=email, exact=True).click()
    budgets = admin.locator(".inline-group", has_text="Budgets (this user's own")
    budgets.get_by_text("Add another Budget").click()
    row = budgets.locator("tr.form-row.dynamic-budgets").last
    row.locator("select[name$=period]").select_option("monthly")
    row.locator("input[name$=cost_limit_usd]").fill("0.00")
    admin.locator("input[name=_save]").click()
    expect(admin.locator("ul.messagelist")).to_contain_text("was changed successfully")

    admin.goto("/admin/accounts/budget/")
    listed = admin.locator("#result_list tbody tr", has_text=email)
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text("monthly")
    admin.locator("#toggle-nav-sidebar").click()  # the whole table in the picture
    admin.evaluate("window.scrollTo(0, 0)")
    expect(admin.locator("#result_list")).to_contain_text("Warn at", ignore_case=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "admin-budget.png"))
    assert stack.sql(
        "SELECT period, cost_limit_usd::text, enabled FROM accounts_budget WHERE user_id = %s",
        (user_id,),
    ) == [("monthly", "0.0000", True)]

    run_id, run = chat_send(page, "calculate 17*23")
    status = run_status(page, run_id)
    expect(status).to_have_class(re.compile(r"\brun-failed\b"), timeout=30_000)
    expect(status.locator(".error-box")).to_contain_text(
        re.compile(r"monthly budget of \$0\.00 reached; resets on \w+")
    )
    expect(run.locator(".msg-assistant")).to_have_count(0)
    expect(run.locator(".invocation")).to_have_count(0)
    # No Retry that could only fail: when it will be possible instead (issue 22, defect 10).
    expect(status.get_by_role("button", name="Retry")).to_have_count(0)
    expect(status.locator(".retry-later")).to_contain_text(
        re.compile(r"Retry is possible from \d{4}-\d\d-01 00:00 UTC, when the limit resets\.")
    )

    # No model call: no reply stored, nothing in the ledger, the refusal audited.
    assert (
        stack.sql("SELECT status, error FROM conversations_run WHERE id = %s", (run_id,))[0][0]
        == "failed"
    )
    assert stack.sql(
        "SELECT count(*) FROM conversations_message WHERE run_id = %s AND role = 'assistant'",
        (run_id,),
    ) == [(0,)]
    assert stack.sql("SELECT count(*) FROM accounts_usagerecord WHERE run_id = %s", (run_id,)) == [
        (0,)
    ]
    refused = stack.sql(
        "SELECT data->>'reason' FROM audit_auditevent"
        " WHERE action = 'budget.refused' AND target_id = %s",
        (str(run_id),),
    )
    assert refused == [("budget",)]
    page.reload()
    expect(run_status(page, run_id).locator(".error-box")).to_contain_text("budget of $0.00")
