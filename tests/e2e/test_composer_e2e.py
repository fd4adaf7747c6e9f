"""The composer in a real browser: a refused message keeps its text, the error shows
next to it, and the length limit is counted and refused, never cut."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import chat_new, chat_send, expect_run_completed, sign_up, unique_email

pytestmark = pytest.mark.e2e

LIMIT = 100_000  # TOLLGATE_MAX_MESSAGE_CHARS, the default


def _next_to_composer(page: Page) -> None:
    """The error box is inside the composer's dock, at most a line away from the text."""
    error = page.locator(".composer-dock #chat-errors .error-box")
    expect(error).to_be_visible()
    box = error.bounding_box()
    text = page.locator("#composer-content").bounding_box()
    assert box is not None and text is not None
    assert 0 <= text["y"] - (box["y"] + box["height"]) < 80, (box, text)


def test_a_refused_message_keeps_its_text_and_the_error_is_next_to_the_composer(new_page):
    page = new_page()
    sign_up(page, unique_email("composer"))
    chat_new(page)
    # A chat longer than the window, so the top of the chat is far from the composer.
    run_id, _ = chat_send(page, "Tell me how this product works, please")
    expect_run_completed(page, run_id)
    composer = page.locator("#composer-content")
    runs = page.locator("#messages section.run")

    blank = "   \n  "
    composer.fill(blank)
    page.click("#composer button[type=submit]")
    expect(page.locator("#chat-errors .error-box")).to_contain_text("Type a message first.")
    expect(composer).to_have_value(blank)
    _next_to_composer(page)
    expect(runs).to_have_count(1)

    # A reply still streaming: refused, kept, and sent once it is done.
    run_id, _ = chat_send(page, "Tell me how this product works, once more")
    typed = "My second thought"
    composer.fill(typed)
    page.click("#composer button[type=submit]")
    expect(page.locator("#chat-errors .error-box")).to_contain_text(
        "A reply is still being written."
    )
    expect(composer).to_have_value(typed)
    _next_to_composer(page)
    expect_run_completed(page, run_id)
    page.click("#composer button[type=submit]")
    expect(composer).to_have_value("")
    expect(page.locator("#chat-errors .error-box")).to_have_count(0)
    expect(runs).to_have_count(3)


def test_the_length_limit_is_counted_and_refused_not_cut(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("limit"))
    conversation = chat_new(page)
    composer = page.locator("#composer-content")
    counter = page.locator("#composer-count")

    composer.fill("x" * 1000)
    expect(counter).to_be_hidden()
    composer.fill("x" * 95_000)
    expect(counter).to_be_visible()
    expect(counter).to_have_text("95,000 / 100,000")

    over = "y" * (LIMIT + 1)
    composer.fill(over)
    assert page.evaluate("document.getElementById('composer-content').value.length") == LIMIT + 1
    expect(counter).to_have_text("100,001 / 100,000 — 1 over the limit")
    expect(counter).to_have_class(re.compile(r"\bover\b"))
    page.click("#composer button[type=submit]")
    expect(page.locator("#chat-errors .error-box")).to_contain_text(
        "The message is too long (100,001 characters; the limit is 100,000)."
    )
    _next_to_composer(page)
    assert page.evaluate("document.getElementById('composer-content').value") == over
    count = stack.sql(
        "SELECT count(*) FROM conversations_message WHERE conversation_id = %s", (conversation,)
    )
    assert count == [(0,)]

    # Back under the limit, it goes.
    page.keyboard.press("Backspace")  # the focus is in the composer, at the end
    expect(counter).to_have_text("100,000 / 100,000")
    expect(counter).not_to_have_class(re.compile(r"\bover\b"))
    page.click("#composer button[type=submit]")
    expect(composer).to_have_value("")
    expect(page.locator("#messages > .msg-user")).to_have_count(1)


def test_the_start_page_refuses_over_the_limit_and_keeps_the_text(new_page):
    page = new_page()
    sign_up(page, unique_email("start-limit"))
    page.goto("/")
    start = page.locator("form.composer.start textarea[name=content]")
    over = "z" * (LIMIT + 5)
    start.fill(over)
    page.click("form.composer.start button[type=submit]")
    expect(page.locator("form.composer.start #chat-errors .error-box")).to_contain_text(
        "The message is too long (100,005 characters; the limit is 100,000)."
    )
    assert page.url.endswith("/")
    assert (
        page.evaluate("document.querySelector('form.composer.start textarea').value.length")
        == LIMIT + 5
    )
