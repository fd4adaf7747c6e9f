"""Knowledge in a real browser, on the production topology: a PDF uploaded on the
Knowledge page is read by the Celery worker, its row turns ready by htmx polling,
and its page shows the passages by page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_up, unique_email
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
