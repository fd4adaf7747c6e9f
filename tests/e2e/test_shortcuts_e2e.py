"""Keyboard shortcuts in a real browser, and their help dialog."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    CONVERSATION_URL,
    chat_new,
    chat_send,
    conversation_id,
    expect_run_completed,
    run_status,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

LONG_PROMPT = (
    "Tell me, step by step and in plenty of detail, how a tool call passes the gate, who is"
    " asked to approve it, what happens when nobody answers, and how the budget is checked"
)


def test_shortcuts_open_help_focus_search_start_a_chat_and_stop(new_page):
    page = new_page()
    sign_up(page, unique_email("keys"))
    first = chat_new(page)
    page.locator("body").click()

    page.keyboard.press("Control+/")
    dialog = page.locator("#shortcuts-help")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Stop the reply being written")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.keyboard.press("?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Close").click()

    page.keyboard.press("Control+k")
    expect(page.locator("#conversation-search")).to_be_focused()
    page.keyboard.press("Shift+Escape")
    expect(page.locator("#composer-content")).to_be_focused()

    run_id, _ = chat_send(page, LONG_PROMPT)
    expect(run_status(page, run_id)).to_contain_text("Writing", timeout=30_000)
    page.keyboard.press("Escape")
    expect(run_status(page, run_id)).to_have_class(re.compile(r"\brun-cancelled\b"))

    page.keyboard.press("Control+Shift+O")
    page.wait_for_url(lambda url: CONVERSATION_URL.search(url) and f"/c/{first}/" not in url)
    assert conversation_id(page) != first
    run_id, _ = chat_send(page, "hello")
    expect_run_completed(page, run_id)
