"""Chains in a real browser, on the production topology (daphne, a Celery worker, beat):
a message run through the built-in "Draft → critique → revise" chain shows one
collapsible section per step, each streamed by the worker with its own charges, then
the chain's answer; a reload draws the same from the database. A chain written on the
Chains page, with a judged step, shows every round and each verdict."""

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

    page.reload()
    sections = page.locator(f"#run-{run_id}-parts > details.chain-part")
    expect(sections).to_have_count(3)
    expect(sections.nth(2).locator("summary.chain-head")).to_contain_text("3. Revise")
    expect(page.locator(f"#run-{run_id}-messages > .msg-assistant")).to_have_count(1)


def test_a_chain_written_on_the_chains_page_shows_its_rounds_and_verdicts(
    new_page, stack, page_problems
):
    # The template that does not compile is refused (400), on purpose.
    page_problems.allow(r"(response 400: POST|status of 400 .*) .*/prompts/chains/new")
    page = new_page()
    sign_up(page, unique_email("reflect"))
    page.goto("/prompts/chains/new")
    page.fill("input[name=name]", "Draft, judged, then polish")
    page.fill("textarea[name=step-0-template]", "{{ input }}")
    # A template that does not compile is refused with its step and line; text kept.
    page.fill("textarea[name=step-1-template]", "say: Final: {{ previous_response")
    page.click("form.chain-form button[type=submit]")
    expect(page.locator(".error-box")).to_contain_text("Step 2: the template does not compile.")
    expect(page.locator("input[name=name]")).to_have_value("Draft, judged, then polish")
    page.fill("input[name=step-0-name]", "Draft")
    page.fill("textarea[name=step-0-judge_template]", "Is this clear and correct? {{ response }}")
    page.fill("input[name=step-0-max_rounds]", "3")
    page.fill("input[name=step-1-name]", "Polish")
    page.fill("textarea[name=step-1-template]", "say: Final: {{ previous_response|truncate(90) }}")
    page.click("form.chain-form button[type=submit]")
    expect(page.locator("table.chains-table")).to_contain_text("Draft, judged, then polish")

    chat_new(page)
    page.locator("#composer-chain").select_option(label="Chain: Draft, judged, then polish")
    run_id, _block = chat_send(page, "say: Tollgate puts every tool call behind a gate.")
    expect_run_completed(page, run_id, timeout=90_000)
    sections = page.locator(f"#run-{run_id}-parts > details.chain-part")
    # Round 1, its judge (revise), round 2, its judge (pass), then the next step.
    expect(sections).to_have_count(5)
    heads = sections.locator("summary.chain-head")
    expect(heads.nth(0)).to_contain_text("1. Draft · round 1 of 3")
    expect(heads.nth(1)).to_contain_text("judge")
    expect(heads.nth(1).locator(".chain-verdict")).to_have_text("Revise")
    expect(heads.nth(2)).to_contain_text("round 2 of 3")
    expect(sections.nth(2).locator(".chain-feedback")).to_contain_text("Say PASS when it is right.")
    expect(heads.nth(3).locator(".chain-verdict")).to_have_text("Passed")
    expect(heads.nth(4)).to_contain_text("2. Polish")
    for index in range(5):
        expect(heads.nth(index).locator(".chain-usage")).to_contain_text("tokens")
    expect(page.locator(f"#run-{run_id}-messages > .msg-assistant")).to_contain_text("Final:")
    for index in (0, 2):  # the rounds folded: the verdicts and the answer in view
        heads.nth(index).click()
    page.locator(f"#run-{run_id} .chain-title").scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chain-run.png"))
