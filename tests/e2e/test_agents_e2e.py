"""Agents in a real browser, on the production topology (daphne, a Celery worker, beat):
a user writes a Billing agent and a Triage agent that may hand off to it on the Agents
page, talks to Triage, approves the handoff on its card, and the answer that follows is
Billing's, under the line "Triage → Billing: reason"; a reload draws the same. A
Manager that may call a Researcher as a tool: the call's card is approved, and the
Researcher's sub-run answers in a collapsible section of the Manager's answer."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import (
    approval_card,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def _agent(
    page: Page,
    name: str,
    instructions: str,
    *,
    targets: tuple[str, ...] = (),
    calls: tuple[str, ...] = (),
) -> None:
    page.goto("/agents/new")
    page.fill("input[name=name]", name)
    page.fill("textarea[name=instructions]", instructions)
    for target in targets:
        page.locator("#id_handoff_targets").get_by_label(target, exact=True).check()
    for called in calls:
        page.locator("#id_agent_tools").get_by_label(called, exact=True).check()
    page.click("form.agent-form button[type=submit]")
    expect(page.locator(f"table.agents-table tr:has-text('{name}')")).to_have_count(1)


def _chat_with(page: Page, agent: str) -> None:
    """A new chat, answered by ``agent`` (picked in the chat header)."""
    chat_new(page)
    page.locator("#agent-picker").select_option(label=agent)
    expect(page.locator("#agent-picker")).to_have_value(
        page.locator("#agent-picker option", has_text=agent).get_attribute("value") or ""
    )


def test_triage_hands_off_to_a_specialist_after_an_approval(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("agents"))
    _agent(page, "Billing", "You answer billing questions.")
    _agent(page, "Triage", "You route the user.", targets=("Billing",))

    _chat_with(page, "Triage")
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


def test_a_manager_calls_an_agent_as_a_tool_and_its_sub_run_answers_in_a_section(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("subagents"))
    _agent(page, "Researcher", "You look things up.")
    _agent(page, "Manager", "You delegate.", calls=("Researcher",))

    _chat_with(page, "Manager")
    run_id, block = chat_send(page, "ask Researcher to say: The answer is 42")
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".tool")).to_have_text("ask_agent_researcher")
    expect(card.locator("pre.arguments")).to_contain_text('"task": "say: The answer is 42"')
    card.get_by_role("button", name="Approve", exact=True).click()

    section = block.locator("details.agent-part")
    expect(section.locator(".agent-part-head")).to_contain_text("Researcher", timeout=30_000)
    expect(section.locator(".agent-part-head")).to_contain_text("asked by Manager")
    expect(section.locator(".msg-assistant.msg-complete")).to_contain_text(
        "The answer is 42", timeout=30_000
    )
    answer = block.locator(":scope > .run-messages > .msg-assistant.msg-complete").last
    expect(answer.locator(".msg-agent")).to_have_text("Manager", timeout=30_000)
    expect_run_completed(page, run_id)
    expect(section.locator(".compare-continue")).to_have_count(0)
    section.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "agent-as-tool.png"))

    page.reload()
    block = page.locator(f"#run-{run_id}")
    expect(block.locator("details.agent-part .msg-assistant")).to_contain_text("The answer is 42")
