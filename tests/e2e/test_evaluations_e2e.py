"""An A/B evaluation of a prompt in a real browser, on the production topology: the
estimate before the start, the Celery worker's progress bar, the outputs side by
side with the judge's scores, a mark, and the summary table."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import sign_up, unique_email
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"
JUDGE = 'Rate this answer: {{ output }}\nRespond with JSON like {"score": 7}.'


def _prompt_new(page: Page, *, name: str, command: str, template: str) -> int:
    page.goto("/prompts/new")
    page.fill("input[name=name]", name)
    page.fill("input[name=command]", command)
    page.select_option("select[name=kind]", "template")
    page.fill("textarea[name=template]", template)
    page.click("form.prompt-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text(name)
    return int(re.search(r"/prompts/(\d+)/", page.url).group(1))


def test_an_evaluation_with_a_progress_bar_and_its_results(new_page, stack, page_problems):
    # The dataset without the prompt's variable is refused (400), and says which.
    page_problems.allow(r"(response 400: POST|status of 400 .*) .*/evaluations/new/\d+")
    page = new_page(viewport={"width": 1280, "height": 1000})
    sign_up(page, unique_email("evaluation"))
    _prompt_new(page, name="Owl judge", command="owl-judge", template=JUDGE)
    prompt_id = _prompt_new(
        page, name="Owl facts", command="owl-facts", template="Tell {{ audience }} about owls."
    )
    page.goto(f"/prompts/{prompt_id}/edit")
    page.fill("textarea[name=template]", "Explain owls to {{ audience }} in one short paragraph.")
    page.click("form.prompt-form button[type=submit]")
    expect(page.locator(".prompt-current h2")).to_contain_text("Version 2")

    page.click("#prompt-evaluate")
    expect(page.locator("h1")).to_contain_text("Evaluate Owl facts")
    # A dataset without the prompt's variable is refused, and what was typed is kept.
    page.fill("textarea[name=dataset]", "topic\nbarn owls\n")
    page.click("form.evaluation-form button[type=submit]")
    expect(page.locator("#evaluation-error")).to_contain_text("no column audience")
    expect(page.locator("textarea[name=dataset]")).to_have_value("topic\nbarn owls\n")

    page.select_option("select[name=version_a]", "1")
    page.select_option("select[name=version_b]", "2")
    page.select_option("select[name=judge]", label="Owl judge (/owl-judge)")
    page.fill("textarea[name=dataset]", "audience\nchildren\nbird watchers\nfarmers\npoets\n")
    page.click("form.evaluation-form button[type=submit]")
    expect(page.locator("#evaluation-estimate")).to_contain_text("16 calls; at worst")

    page.click("#evaluation-start")
    bar = page.locator("#evaluation-progress-bar")
    expect(bar).to_have_attribute("max", "16")
    # The bar moves while the worker answers (the page polls its progress).
    page.wait_for_function(
        "() => { const b = document.querySelector('#evaluation-progress-bar');"
        " return b && b.value > 0 && b.value < b.max; }",
        timeout=30_000,
    )
    expect(page.locator("#evaluation-body")).to_have_attribute(
        "data-status", "completed", timeout=90_000
    )
    expect(bar).to_have_attribute("value", "16")
    rows = page.locator("#evaluation-results tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("#evaluation-results .judge-score")).to_have_count(8)
    expect(rows.nth(0).locator("td[data-variant=a]")).to_contain_text("Tell children about owls")
    expect(rows.nth(0).locator("td[data-variant=b]")).to_contain_text("Explain owls to children")

    for position, choice in ((0, "B"), (1, "B"), (2, "A")):
        rows.nth(position).get_by_role("button", name=choice, exact=True).click()
        expect(rows.nth(position).locator("button[aria-pressed=true]")).to_have_text(choice)
    summary = page.locator("#evaluation-summary")
    expect(summary.locator("tr[data-variant=a] .win-rate")).to_have_text("33% of 3")
    expect(summary.locator("tr[data-variant=b] .win-rate")).to_have_text("67% of 3")
    expect(summary.locator("tr[data-variant=a] .judge-mean")).not_to_have_text("—")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "evaluation-results.png"), full_page=True)
