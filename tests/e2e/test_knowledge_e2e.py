"""Knowledge in a real browser, on the production topology: a PDF uploaded on the
Knowledge page is read by the Celery worker, its row turns ready by htmx polling,
and its page shows the passages by page. What a chat remembered (an approved
``notes.write``) shows on the Memory page, where it is recalled by meaning, edited and
forgotten."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    approval_card,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)
from tests.knowledge.conftest import pdf_bytes
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_an_uploaded_pdf_becomes_ready_and_shows_its_pages(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("knowledge"))
    page.goto("/knowledge/")
    page.set_input_files(
        "#upload-form input[name=file]",
        files=[
            {
                "name": "guide.pdf",
                "mimeType": "application/octet-stream",
                "buffer": pdf_bytes(["The harbour opens at dawn.", "Apples are picked in May."]),
            }
        ],
    )
    page.click("#upload-form button[type=submit]")
    row = page.locator("#documents tbody tr", has_text="guide.pdf")
    expect(row).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(row).to_contain_text("2 pages")
    expect(row).to_contain_text("application/pdf")
    page.screenshot(path=str(SCREENSHOTS / "knowledge.png"), full_page=True)
    row.get_by_role("link", name="guide.pdf").click()
    expect(page.locator("h2", has_text="Page 2")).to_be_visible()
    expect(page.locator(".knowledge-chunk").nth(1)).to_contain_text("Apples are picked in May.")


def test_the_memory_page_shows_recalls_edits_and_forgets_what_a_chat_remembered(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("memory"))
    chat_new(page)
    run_id, _ = chat_send(page, "remember that the meeting is on Friday")
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    card.get_by_role("button", name="Approve", exact=True).click()
    expect_run_completed(page, run_id)

    page.get_by_role("link", name="Memory", exact=True).click()
    row = page.locator("#memory tbody tr", has_text="meeting")
    expect(row.get_by_label("Value of meeting")).to_have_value("the meeting is on Friday")

    page.get_by_label("Recall").fill("when do we meet")
    page.get_by_role("button", name="Recall").click()
    expect(page.locator("#recalled li").first).to_contain_text("meeting")

    row = page.locator("#memory tbody tr", has_text="meeting")
    row.get_by_label("Value of meeting").fill("the meeting moved to Thursday")
    row.get_by_role("button", name="Save").click()
    expect(page.locator(".messages, ul").filter(has_text="Saved “meeting”.").first).to_be_visible()
    expect(page.get_by_label("Value of meeting")).to_have_value("the meeting moved to Thursday")
    page.screenshot(path=str(SCREENSHOTS / "memory.png"), full_page=True)

    page.locator("#memory tbody tr", has_text="meeting").get_by_role(
        "button", name="Forget"
    ).click()
    expect(page.locator("#memory tbody")).to_contain_text("Nothing remembered yet")
