"""A run's timeline in a real browser, on the production topology: a turn of three
tool calls (two allowed at once, one approved by a person) drawn in lanes."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    ROOT,
    approval_card,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"

THREE_CALLS = "\n".join(
    (
        'use tool time.now {"timezone": "Asia/Tokyo"}',
        'use tool calc.evaluate {"expression": "17*23"}',
        'use tool notes.write {"key": "launch", "value": "on Friday"}',
    )
)


def test_the_timeline_of_a_run_with_parallel_tools_and_an_approval(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("timeline"))
    chat_new(page)
    run_id, run = chat_send(page, THREE_CALLS)
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".tool")).to_have_text("notes.write")
    page.wait_for_timeout(300)  # a visible wait for a person, on the timeline
    card.get_by_role("button", name="Approve", exact=True).click()
    expect_run_completed(page, run_id)
    assert stack.sql(
        "SELECT count(*) FROM tools_toolinvocation WHERE run_id = %s AND status = 'succeeded'",
        (run_id,),
    ) == [(3,)]

    run.locator(".run-parameters summary").click()
    run.locator("a.run-timeline-link").click()
    expect(page.locator("h1")).to_have_text(f"Timeline of run {run_id}")
    expect(page.locator("#timeline-status")).to_have_text("Completed")
    model = page.locator(".timeline-lane[data-lane=Model] .timeline-llm")
    expect(model).to_have_count(2)  # the call that asked for the tools, the answer
    expect(model.first).to_contain_text("Step 1")
    expect(model.first).to_contain_text("3 tool calls")
    people = page.locator(".timeline-lane[data-lane=People] .timeline-bar")
    expect(people).to_have_count(1)
    expect(people).to_contain_text("Approval: notes.write — approved")
    tools = page.locator(".timeline-bar.timeline-tool")
    expect(tools).to_have_count(3)
    for name in ("time.now", "calc.evaluate", "notes.write"):
        expect(page.locator(".timeline-table")).to_contain_text(f"{name} — succeeded")
    # The approval ended before the approved call began: bars never run backwards.
    lefts = page.eval_on_selector_all(
        ".timeline-bar", "bars => bars.map(b => parseFloat(b.style.left))"
    )
    assert all(0 <= left <= 100 for left in lefts)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "run-timeline.png"), full_page=True)

    page.get_by_role("link", name="Back to").click()
    expect(page.locator(f"#run-{run_id}")).to_be_visible()
