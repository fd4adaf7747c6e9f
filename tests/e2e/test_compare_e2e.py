"""Compare mode in a real browser (issue 24): one message answered by three models in
columns, streamed at once, then their summary; "Continue with this" picks the answer
the conversation goes on from; on a phone the columns are tabs."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import chat_new, sign_up, unique_email
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"

THREE_MODELS = """
from conversations.models import ModelConfig
for name in ("Demo Alpha", "Demo Beta", "Demo Gamma"):
    ModelConfig.objects.get_or_create(
        name=name,
        defaults=dict(litellm_model="demo/tollgate", input_cost_per_token=0,
                      output_cost_per_token=0),
    )
"""
NAMES = ["Demo Alpha", "Demo Beta", "Demo Gamma"]


def _pick(page: Page, names: list[str]) -> None:
    page.locator("#compare-toggle").check()
    models = page.locator("#compare-models")
    expect(models).to_be_visible()
    for name in names:
        models.get_by_label(name, exact=True).check()


def _completed(locator) -> None:
    expect(locator.locator(".run-status").last).to_have_class(
        re.compile(r"\brun-completed\b"), timeout=60_000
    )


def test_compare_three_models_in_columns_then_a_summary_and_continue_with_one(new_page, stack):
    stack.manage("shell", "-c", THREE_MODELS)
    page = new_page(viewport={"width": 1400, "height": 1000})
    sign_up(page, unique_email("compare"))
    chat_new(page)
    expect(page.locator("#compare-models")).to_be_hidden()  # until Compare is on

    # Too few models: refused in words, the text kept.
    _pick(page, NAMES[:1])
    page.fill("#composer textarea[name=content]", "How do tides work?")
    page.click("#composer button[type=submit]")
    expect(page.locator("#chat-errors")).to_contain_text("Pick 2 to 6 models to compare (1 picked)")
    expect(page.locator("#composer textarea[name=content]")).to_have_value("How do tides work?")

    _pick(page, NAMES)
    page.click("#composer button[type=submit]")
    expect(page.locator("#composer textarea[name=content]")).to_have_value("")
    compare = page.locator("#messages section.compare")
    expect(compare).to_have_count(1)
    columns = compare.locator(".compare-column")
    expect(columns).to_have_count(3)
    expect(columns.locator(".compare-model")).to_have_text(NAMES)
    # Side by side on a wide screen: one row, left to right.
    boxes = [columns.nth(i).bounding_box() for i in range(3)]
    assert all(b is not None for b in boxes)
    assert len({round(b["y"]) for b in boxes}) == 1, boxes
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
    # The three stream at once: each shows text while another is still writing.
    expect(columns.locator(".msg-assistant.msg-streaming")).to_have_count(3, timeout=30_000)
    for i in range(3):
        _completed(columns.nth(i))
    summary = compare.locator(".compare-summary")
    _completed(summary)
    expect(summary.locator(".msg-assistant .msg-body")).to_contain_text("Summary of 3 answers")
    for name in NAMES:
        expect(summary.locator(".msg-assistant .msg-body")).to_contain_text(name)
    expect(summary).to_have_class(re.compile(r"\bchosen\b"))  # the summary, until one is picked
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-compare.png"), full_page=True)

    # Continue with the second answer: marked, and the next message follows it.
    columns.nth(1).get_by_role("button", name="Continue with this").click()
    expect(page.locator(".compare-column").nth(1)).to_have_class(re.compile(r"\bchosen\b"))
    expect(page.locator(".compare-summary")).not_to_have_class(re.compile(r"\bchosen\b"))
    chosen = int(
        page.locator(".compare-column").nth(1).locator("section.run").get_attribute("data-run")
    )
    [(current,)] = stack.sql(
        "SELECT current_run_id FROM conversations_conversation c"
        " JOIN conversations_run r ON r.conversation_id = c.id WHERE r.id = %s",
        (chosen,),
    )
    assert current == chosen

    # On a phone: tabs, one answer at a time.
    page.set_viewport_size({"width": 390, "height": 844})
    tabs = page.locator(".compare-tab")
    expect(tabs).to_have_count(3)
    expect(page.locator(".compare-column:visible")).to_have_count(1)
    tabs.nth(2).click()
    expect(page.locator(".compare-column").nth(2)).to_be_visible()
    expect(page.locator(".compare-column").nth(0)).to_be_hidden()
