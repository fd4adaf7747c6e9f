"""Export and import in a real browser: the Markdown and JSON downloads, and the JSON
imported back as a new conversation with the same messages."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    chat_new,
    chat_send,
    conversation_id,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e


def test_export_markdown_and_json_then_import_the_json(new_page, tmp_path):
    page = new_page()
    sign_up(page, unique_email("export"))
    original = chat_new(page)
    run_id, _ = chat_send(page, "calculate 17*23")
    expect_run_completed(page, run_id)
    run_id, _ = chat_send(page, "Thank you")
    expect_run_completed(page, run_id)

    page.locator(".export-menu summary").click()
    with page.expect_download() as markdown:
        page.get_by_role("link", name="Markdown").click()
    text = markdown.value.path().read_text()
    assert text.count("## You") == 2 and "### Tool `calc.evaluate`: succeeded" in text

    with page.expect_download() as download:  # the menu is still open
        page.get_by_role("link", name="JSON (to import)").click()
    saved = tmp_path / "conversation.json"
    download.value.save_as(saved)
    data = json.loads(saved.read_text())
    assert data["format"] == "tollgate.conversation"

    page.locator(".sidebar-import summary").click()
    page.locator(".sidebar-import input[type=file]").set_input_files(str(saved))
    page.locator(".sidebar-import").get_by_role("button", name="Import").click()
    page.wait_for_url(lambda url: "/c/" in url and f"/c/{original}/" not in url)
    imported = conversation_id(page)
    assert imported != original
    expect(page.locator(".flash")).to_contain_text("Conversation imported.")
    questions = page.locator("#messages > .msg-user .msg-body")
    expect(questions).to_have_text(["calculate 17*23", "Thank you"])
    expect(page.locator("#messages .msg-assistant.msg-complete").last).to_be_visible()
    run_id, _ = chat_send(page, "And one more")  # it goes on
    expect_run_completed(page, run_id)
