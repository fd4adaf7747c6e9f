"""Copy in a real browser (the clipboard granted to the page): a code block's text,
and a whole message's Markdown source."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import chat_new, chat_send, expect_run_completed, sign_up, unique_email

pytestmark = pytest.mark.e2e

MESSAGE = "Please look at this:\n\n```python\nprint('<hi>')  # & more\n```\n\n**bold** end"


def _clipboard(page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def test_copy_a_code_block_and_a_whole_message_as_markdown(new_page, stack):
    page = new_page(clipboard=True)
    sign_up(page, unique_email("copy"))
    chat_new(page)
    run_id, run = chat_send(page, MESSAGE)
    expect_run_completed(page, run_id)

    question = page.locator("#messages > .msg-user").last
    code = question.locator(".msg-body pre")
    code.hover()
    code.get_by_role("button", name="Copy").click()
    expect(code.get_by_role("button")).to_have_text("Copied")
    assert _clipboard(page) == "print('<hi>')  # & more\n"

    question.locator(".msg-actions").get_by_role("button", name="Copy").click()
    assert _clipboard(page) == MESSAGE

    reply = run.locator(".msg-assistant").last
    reply.locator(".msg-actions").get_by_role("button", name="Copy").click()
    [(source,)] = stack.sql(
        "SELECT content FROM conversations_message WHERE run_id = %s AND role = 'assistant'",
        (run_id,),
    )
    assert _clipboard(page) == source
    assert "**" in source or "`" in source or "\n" in source  # Markdown, not the page's text

    # After a reload too (the page's own messages, not only pushed ones).
    page.reload()
    page.locator("#messages > .msg-user").last.locator(".msg-body pre").get_by_role(
        "button", name="Copy"
    ).click()
    assert _clipboard(page) == "print('<hi>')  # & more\n"
