"""Chains in a real browser, on the production topology (daphne, a Celery worker, beat):
a message run through the built-in "Draft → critique → revise" chain shows one
collapsible section per step, each streamed by the worker with its own charges, then
the chain's answer; a reload draws the same from the database."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import chat_new, chat_send, expect_run_completed, sign_up, unique_email
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def test_a_chain_run_shows_its_steps_as_sections(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("chain"))
    chat_new(page)
    picker = page.locator("#composer-chain")
    picker.select_option(label="Chain: Draft → critique → revise")
    run_id, block = chat_send(page, "say: Tollgate puts every tool call behind a gate.")
    # The chain is picked for one message: the composer is back to a normal reply.
    expect(picker).to_have_value("")
    expect(block.locator(".chain-title")).to_contain_text("Draft → critique → revise")

    sections = page.locator(f"#run-{run_id}-parts > details.chain-part")
    expect(sections).to_have_count(3, timeout=60_000)
    expect_run_completed(page, run_id, timeout=90_000)
    for index, name in enumerate(("1. Draft", "2. Critique", "3. Revise")):
        section = sections.nth(index)
        expect(section.locator("summary.chain-head")).to_contain_text(name)
        # Each step's own usage, once it ended (the demo model is free: $0).
        expect(section.locator(".chain-usage")).to_contain_text(re.compile(r"tokens · \$0"))
        expect(section.locator(".run-status")).to_have_class(re.compile(r"\brun-completed\b"))
    draft = sections.nth(0).locator(".msg-assistant .msg-body")
    expect(draft).to_have_text("Tollgate puts every tool call behind a gate.")
    # The critique was asked about the draft: its prompt holds it.
    expect(sections.nth(1).locator(".chain-prompt pre")).to_contain_text(
        "Draft:\nTollgate puts every tool call behind a gate."
    )
    final = page.locator(f"#run-{run_id}-messages > .msg-assistant")
    expect(final).to_have_count(1)

    # A section collapses with a click (or Enter on its summary).
    sections.nth(1).locator("summary.chain-head").click()
    expect(sections.nth(1)).not_to_have_attribute("open", "")
    sections.nth(1).locator("summary.chain-head").focus()
    page.keyboard.press("Enter")
    expect(sections.nth(1)).to_have_attribute("open", "")

    sections.nth(1).locator("summary.chain-head").click()  # the critique folded, for the picture
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chain-run.png"), full_page=True)

    page.reload()
    sections = page.locator(f"#run-{run_id}-parts > details.chain-part")
    expect(sections).to_have_count(3)
    expect(sections.nth(2).locator("summary.chain-head")).to_contain_text("3. Revise")
    expect(page.locator(f"#run-{run_id}-messages > .msg-assistant")).to_have_count(1)
