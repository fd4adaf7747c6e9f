"""The prompt library in a real browser, on the production topology: the "/" picker,
a system prompt switched mid-conversation, and reformulation before sending."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import chat_new, expect_run_completed, sign_up, unique_email
from tests.topology import ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"


def _prompt_new(page: Page, *, name: str, command: str, kind: str, template: str) -> None:
    """Create a prompt through the prompts page's form."""
    page.goto("/prompts/new")
    page.fill("input[name=name]", name)
    page.fill("input[name=command]", command)
    page.select_option("select[name=kind]", kind)
    page.fill("textarea[name=template]", template)
    page.click("form.prompt-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text(name)


def _send_composer(page: Page) -> int:
    """Send what the composer holds; the new run's id."""
    runs = page.locator("#messages section.run")
    before = runs.count()
    page.click("#composer button[type=submit]")
    expect(page.locator("#composer-content")).to_have_value("")
    expect(runs).to_have_count(before + 1)
    return int(runs.nth(before).get_attribute("data-run"))


def _reply(page: Page, run_id: int) -> str:
    expect_run_completed(page, run_id)
    return page.locator(f"#run-{run_id} .msg-assistant .msg-body").inner_text()


def test_slash_picker_fills_a_template_and_the_text_is_sent(new_page, stack, page_problems):
    # The fill with a variable left empty is refused (400), and says which.
    page_problems.allow(r"(response 400: POST|status of 400 .*) .*/prompts/\d+/render")
    page = new_page()
    sign_up(page, unique_email("picker"))
    _prompt_new(
        page,
        name="Brief a colleague",
        command="brief",
        kind="template",
        template="Brief {{ who }} on {{ topic }} in three bullet points.",
    )
    _prompt_new(page, name="Thank you note", command="thanks", kind="template", template="Thanks!")
    chat_new(page)

    box = page.locator("#composer-content")
    box.press_sequentially("/b")
    options = page.locator("#prompt-picker [role=option]")
    expect(options).to_have_count(1)
    expect(options.first).to_contain_text("/brief")
    box.press("Backspace")  # "/" alone lists every template
    expect(options).to_have_count(2)
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    box.press("ArrowUp")
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "prompt-picker.png"))
    box.press("Escape")
    expect(page.locator("#prompt-picker")).to_be_hidden()
    box.press_sequentially("brief")
    expect(options.first).to_contain_text("/brief")
    box.press("Enter")  # chooses, never sends

    who = page.locator("#prompt-fill input[name=var_who]")
    expect(who).to_be_focused()  # the first variable the template uses
    who.fill("Ana")
    page.click("#prompt-fill button[type=submit]")  # one variable left empty
    expect(page.locator("#prompt-fill .error-box")).to_have_text("Missing variable: topic.")
    expect(who).to_have_value("Ana")
    page.fill("#prompt-fill input[name=var_topic]", "the new gate")
    page.press("#prompt-fill input[name=var_topic]", "Enter")
    text = "Brief Ana on the new gate in three bullet points."
    expect(box).to_have_value(text)
    expect(page.locator("#prompt-picker")).to_be_hidden()
    assert page.locator("#messages section.run").count() == 0  # inserted, not sent

    run_id = _send_composer(page)
    expect(page.locator("#messages > .msg-user").last).to_have_text(re.compile(re.escape(text)))
    assert text in _reply(page, run_id)  # the demo echoes what it was sent


def test_system_prompt_switched_mid_chat_is_used_by_the_next_reply(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("sysprompt"))
    _prompt_new(
        page,
        name="Captain",
        command="captain",
        kind="system",
        template="You are Captain {{ name }}. Answer like a ship's captain.",
    )
    chat_new(page)
    page.fill("#composer-content", "What is your system prompt?")
    first = _send_composer(page)
    assert "You are a helpful assistant" in _reply(page, first)

    page.click("#chat-settings summary")
    form = page.locator("#settings-form")
    expect(form).to_be_visible()
    # htmx wires swapped-in content when it settles (its "htmx-added" class goes):
    # a choice made before that would not redraw the form.
    expect(form).not_to_have_class(re.compile(r"\bhtmx-added\b"))
    page.select_option("#settings-prompt", label="Captain (/captain)")
    name = page.locator("#settings-form input[name=var_name]")
    expect(name).to_be_visible()  # the form was drawn again for the prompt's variables
    expect(page.locator("#settings-form input[name=source][value=library]")).to_be_checked()
    name.fill("Tollgate")
    page.click("#settings-form button[type=submit]")
    expect(page.locator("#chat-settings-prompt")).to_have_text("Captain · production")

    page.fill("#composer-content", "What is your system prompt?")
    second = _send_composer(page)
    reply = _reply(page, second)
    assert "You are Captain Tollgate. Answer like a ship's captain." in reply
    assert "helpful assistant" not in reply
    # Each run says what it used; the first still says the default.
    expect(page.locator(f"#run-{first} .run-parameters summary")).to_contain_text("default")
    expect(page.locator(f"#run-{second} .run-parameters summary")).to_contain_text(
        "Captain v1 (production)"
    )
    rows = stack.sql(
        "SELECT parameters->'system_prompt'->>'version_number' FROM conversations_run"
        " WHERE id = %s",
        (second,),
    )
    assert rows == [("1",)]


def test_reformulate_shows_a_diff_and_nothing_is_sent_until_accepted(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("reform"))
    conversation = chat_new(page)
    box = page.locator("#composer-content")
    box.fill("what is a tollgate   i wonder. tell me about its history")
    page.click("#reformulate-button")

    panel = page.locator("#reformulation")
    # The web process's first model call waits for litellm's import (seconds).
    expect(panel.locator("table.diff")).to_be_visible(timeout=60_000)
    expect(panel).to_contain_text("Nothing has been sent")
    rewrite = panel.locator("#reformulation-text")
    expect(rewrite).to_have_value(
        "What is a tollgate I wonder. Tell me about its history.\n"
        "Please be specific and answer step by step."
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "reformulation.png"))
    sent = stack.sql(
        "SELECT count(*) FROM conversations_message WHERE conversation_id = %s", (conversation,)
    )
    assert sent == [(0,)]  # the draft went to the reformulation model only
    usage = stack.sql(
        "SELECT count(*) FROM accounts_usagerecord WHERE conversation_id = %s AND run_id IS NULL",
        (conversation,),
    )
    assert usage == [(1,)]  # charged like any call

    rewrite.fill(rewrite.input_value() + " Keep it short.")
    panel.locator("[data-reformulation-accept]").click()
    expect(panel).to_be_empty()
    expected = (
        "What is a tollgate I wonder. Tell me about its history.\n"
        "Please be specific and answer step by step. Keep it short."
    )
    expect(box).to_have_value(expected)
    assert page.locator("#messages section.run").count() == 0

    run_id = _send_composer(page)
    _reply(page, run_id)
    stored = stack.sql(
        "SELECT content FROM conversations_message WHERE conversation_id = %s AND role = 'user'",
        (conversation,),
    )
    assert stored == [(expected,)]
