"""Files attached in the chat's composer, in a real browser on the production topology:
a PDF picked with Attach is uploaded, read by the Celery worker while its chip shows
how far; the question sent with it is answered (streamed) from its passages with a
citation, and the citation opens the document's page at the page it cites."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import chat_new, expect_run_completed, sign_up, unique_email
from tests.knowledge.conftest import pdf_bytes
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_a_pdf_attached_in_the_composer_is_cited_and_the_citation_opens_its_page(new_page):
    page = new_page(viewport={"width": 1280, "height": 800})
    sign_up(page, unique_email("attach"))
    chat_new(page)
    page.set_input_files(
        "#composer-files",
        files=[
            {
                "name": "orchard.pdf",
                "mimeType": "application/pdf",
                "buffer": pdf_bytes(
                    [
                        "The harbour opens at dawn for the fishing boats.",
                        "Apples are picked in May, by hand, from the old orchard.",
                    ]
                ),
            }
        ],
    )
    chip = page.locator("#composer-attachments .attachment-chip", has_text="orchard.pdf")
    expect(chip).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(chip).to_contain_text("2 pages")

    page.fill("#composer textarea[name=content]", "When are the apples picked?")
    page.click("#composer button[type=submit]")
    expect(page.locator("#composer textarea[name=content]")).to_have_value("")
    expect(page.locator("#composer-attachments .attachment-chip")).to_have_count(0)
    sent = page.locator("#messages > .msg-user").last
    expect(sent.locator(".msg-attachments")).to_contain_text("orchard.pdf")
    run = page.locator("#messages section.run").last
    run_id = int(run.get_attribute("data-run"))
    expect_run_completed(page, run_id)

    answer = run.locator(".msg-assistant").last
    expect(answer.locator(".msg-body")).to_contain_text("Apples are picked in May")
    citation = answer.locator("a.citation")
    expect(citation).to_have_text("1")
    expect(answer.locator(".msg-sources")).to_contain_text("orchard.pdf, page 2")
    # The next message's chip row is empty again; the picture shows the cited answer.
    page.mouse.move(0, 0)
    page.screenshot(path=str(SCREENSHOTS / "chat-attachment.png"))

    citation.click()
    page.wait_for_url(re.compile(r"/knowledge/documents/\d+/\?chunk=\d+#page=2$"))
    expect(page.locator("h1")).to_have_text("orchard.pdf")
    heading = page.locator('[id="page=2"]')
    expect(heading).to_be_in_viewport()
    expect(page.locator(".knowledge-chunk.cited")).to_contain_text("Apples are picked in May")
