"""Branches in a real browser: regenerate an answer and switch with "< 1/2 >", edit
and resend a message as a new branch, and "Edit message" after "too long"."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import (
    chat_new,
    chat_send,
    expect_run_completed,
    run_status,
    sign_up,
    unique_email,
)
from tests.e2e.test_context_e2e import SMALL_MODEL

pytestmark = pytest.mark.e2e


def _runs(page: Page) -> list[int]:
    return [
        int(r)
        for r in page.locator("#messages section.run").evaluate_all(
            "(runs) => runs.map((r) => r.dataset.run)"
        )
    ]


def _questions(page: Page) -> list[str]:
    return [t.strip() for t in page.locator("#messages > .msg-user .msg-body").all_inner_texts()]


def test_regenerate_switch_and_edit_and_resend(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("branches"))
    conversation = chat_new(page)
    first, _ = chat_send(page, "First question")
    expect_run_completed(page, first)
    second, _ = chat_send(page, "Second question")
    expect_run_completed(page, second)
    page.evaluate("() => { window.__samePage = true; }")

    # Regenerate the last answer: a new run in its place, "2/2".
    run_status(page, second).get_by_role("button", name="Regenerate").click()
    expect(page.locator(f"#run-{second}")).to_have_count(0)
    regenerated = _runs(page)[-1]
    assert regenerated != second and len(_runs(page)) == 2
    expect_run_completed(page, regenerated)
    switch = page.locator(f"#run-{regenerated} .run-switch")
    expect(switch.locator(".branch-count")).to_have_text("2/2")
    # Back to the first answer, and forward again.
    switch.get_by_role("button", name="Previous answer").click()
    expect(page.locator(f"#run-{second} .run-switch .branch-count")).to_have_text("1/2")
    expect(page.locator(f"#run-{regenerated}")).to_have_count(0)
    page.locator(f"#run-{second} .run-switch").get_by_role("button", name="Next answer").click()
    expect(page.locator(f"#run-{regenerated}")).to_have_count(1)

    # Edit and resend the first message: a branch from there, the old one kept.
    message = page.locator("#messages > .msg-user").first
    message.get_by_role("button", name="Edit").click()
    box = message.locator("form.msg-edit textarea")
    expect(box).to_have_value("First question")
    box.fill("First question, edited")
    message.get_by_role("button", name="Send as a new version").click()
    expect(page.locator("#messages > .msg-user")).to_have_count(1)
    expect(page.locator("#messages > .msg-user .msg-body")).to_have_text("First question, edited")
    edited = _runs(page)[-1]
    expect_run_completed(page, edited)
    version = page.locator("#messages > .msg-user").first
    expect(version.locator(".branch-count")).to_have_text("2/2")
    [(parent, content)] = stack.sql(
        "SELECT r.parent_id, m.content FROM conversations_run r"
        " JOIN conversations_message m ON m.id = r.user_message_id WHERE r.id = %s",
        (edited,),
    )
    assert (parent, content) == (None, "First question, edited")

    version.get_by_role("button", name="Previous version").click()
    expect(page.locator("#messages > .msg-user")).to_have_count(2)
    assert _questions(page) == ["First question", "Second question"]
    assert _runs(page) == [first, regenerated]  # the newest branch of that version
    [(current,)] = stack.sql(
        "SELECT current_run_id FROM conversations_conversation WHERE id = %s", (conversation,)
    )
    assert current == regenerated
    assert page.evaluate("() => window.__samePage === true"), "the page reloaded"

    # The next message continues the branch shown.
    after, _ = chat_send(page, "Third question")
    expect_run_completed(page, after)
    assert stack.sql("SELECT parent_id FROM conversations_run WHERE id = %s", (after,)) == [
        (regenerated,)
    ]


def test_a_message_too_long_offers_edit_message(new_page, stack):
    stack.manage("shell", "-c", SMALL_MODEL)
    page = new_page()
    sign_up(page, unique_email("edit-too-long"))
    chat_new(page)
    page.locator("#model-picker").select_option(label="Demo, small window")
    expect(page.locator("#model-picker option:checked")).to_have_text("Demo, small window")
    run_id, _ = chat_send(page, "Long " + "word " * 3000)
    status = run_status(page, run_id)
    expect(status).to_have_class(re.compile(r"\brun-failed\b"), timeout=30_000)
    status.get_by_role("button", name="Edit message").click()
    form = page.locator("#messages > .msg-user form.msg-edit")
    expect(form).to_be_visible()
    form.locator("textarea").fill("Short now")
    form.get_by_role("button", name="Send as a new version").click()
    expect(page.locator("#messages > .msg-user .msg-body")).to_have_text("Short now")
    run_id = _runs(page)[-1]
    expect_run_completed(page, run_id)
    expect(page.locator("#messages > .msg-user .branch-count")).to_have_text("2/2")
