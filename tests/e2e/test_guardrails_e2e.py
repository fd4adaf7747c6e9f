"""Guardrails in a real browser on the production topology: an administrator tries a
PII guardrail on a sample text in admin and saves it; the user's next message
with an e-mail address reaches the model redacted, and the chat shows it so."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    admin_sign_in,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

ADDRESS = "jane.doe@example.org"
#: approvals.selectors.GUARDRAILS_CACHE_SECONDS: how stale another process's copy may be.
CACHE_SECONDS = 5.0
SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_an_email_address_is_redacted_before_the_model_sees_it(new_page, stack, admin_login):
    user_page = new_page()
    email = unique_email("guarded")
    sign_up(user_page, email)
    [(user_id,)] = stack.sql("SELECT id FROM accounts_user WHERE email = %s", (email,))

    admin = new_page()
    admin_sign_in(admin, *admin_login)
    admin.goto("/admin/approvals/guardrail/add/")
    admin.fill("#id_name", "Personal data")
    admin.select_option("#id_stage", "user_input")
    admin.select_option("#id_kind", "pii")
    admin.select_option("#id_action", "redact")
    admin.fill("#id_config", '{"entities": ["EMAIL", "PHONE"]}')
    admin.fill("#id_description", "E-mail addresses and phone numbers are not sent to the model.")
    admin.fill("#id_user", str(user_id))
    admin.fill("#id_sample_text", f"Reach me at {ADDRESS} or +44 20 7946 0958.")
    admin.click("input[name=_test]")
    expect(admin.locator("#guardrail-preview-text")).to_have_text("Reach me at [EMAIL] or [PHONE].")
    assert stack.sql("SELECT count(*) FROM approvals_guardrail WHERE user_id = %s", (user_id,)) == [
        (0,)
    ]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "admin-guardrail-test.png"))
    admin.click("input[name=_save]")
    expect(admin.locator(".messagelist")).to_contain_text("was added successfully")
    saved = time.monotonic()

    chat_new(user_page)
    # The worker reads guardrails again at most CACHE_SECONDS after a change.
    time.sleep(max(0.0, CACHE_SECONDS + 0.5 - (time.monotonic() - saved)))
    run_id, run = chat_send(user_page, f"Please write to {ADDRESS} about the invoice")
    mine = user_page.locator("#messages > .msg-user").last
    expect(mine.locator(".msg-body")).to_have_text("Please write to [EMAIL] about the invoice")
    note = mine.locator(".guardrail-redact")
    expect(note).to_contain_text("Redacted by the guardrail “Personal data” on your message")
    expect(note).to_contain_text("[EMAIL]")
    expect_run_completed(user_page, run_id)
    # The demo model repeats what it received: the redacted text, never the address.
    reply = run.locator(".msg-assistant .msg-body")
    expect(reply).to_contain_text("Please write to [EMAIL]")
    assert ADDRESS not in reply.inner_text()
    user_page.screenshot(path=str(SCREENSHOTS / "chat-guardrail.png"))

    stored = stack.sql(
        "SELECT content FROM conversations_message m JOIN conversations_run r"
        " ON r.user_message_id = m.id WHERE r.id = %s",
        (run_id,),
    )
    assert stored == [("Please write to [EMAIL] about the invoice",)]
    user_page.reload()
    expect(user_page.locator("#messages > .msg-user").last).to_contain_text("[EMAIL]")
    expect(user_page.locator("#messages .guardrail-redact").last).to_be_visible()
