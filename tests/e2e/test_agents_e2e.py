"""Agents in a real browser, on the production topology (daphne, a Celery worker, beat):
a user writes a Billing agent and a Triage agent that may hand off to it on the Agents
page, talks to Triage, approves the handoff on its card, and the answer that follows is
Billing's, under the line "Triage → Billing: reason"; a reload draws the same."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import approval_card, chat_new, chat_send, sign_up, unique_email
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def _agent(page: Page, name: str, instructions: str, *, targets: tuple[str, ...] = ()) -> None:
    page.goto("/agents/new")
    page.fill("input[name=name]", name)
    page.fill("textarea[name=instructions]", instructions)
    for target in targets:
        page.get_by_label(target, exact=True).check()
    page.click("form.agent-form button[type=submit]")
    expect(page.locator(f"table.agents-table tr:has-text('{name}')")).to_have_count(1)


def test_triage_hands_off_to_a_specialist_after_an_approval(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("agents"))
    _agent(page, "Billing", "You answer billing questions.")
    _agent(page, "Triage", "You route the user.", targets=("Billing",))

    chat_new(page)
    page.locator("#agent-picker").select_option(label="Triage")
    expect(page.locator("#agent-picker")).to_have_value(
        page.locator("#agent-picker option", has_text="Triage").get_attribute("value") or ""
    )
    run_id, block = chat_send(page, "hand off to Billing")
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".tool")).to_have_text("handoff_to_billing")
    expect(card.locator("pre.arguments")).to_contain_text('"reason": "The user asked for Billing."')
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".status-badge")).to_have_text("Approved")

    line = block.locator(".handoff-line")
    expect(line).to_contain_text("Triage → Billing: The user asked for Billing.", timeout=30_000)
    answer = block.locator(".msg-assistant.msg-complete").last
    expect(answer.locator(".msg-agent")).to_have_text("Billing", timeout=30_000)
    expect(block.locator(".msg-assistant .msg-agent").first).to_have_text("Triage")
    block.locator(".handoff-line").scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "agent-handoff.png"))

    page.reload()
    block = page.locator(f"#run-{run_id}")
    expect(block.locator(".handoff-line")).to_contain_text("Triage → Billing")
    expect(block.locator(".msg-assistant .msg-agent").last).to_have_text("Billing")
