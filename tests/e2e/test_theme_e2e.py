"""Dark mode and the settings page in a real browser: the system's scheme is
followed on every page, the user's theme wins over it, and the send key is theirs."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import (
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

DARK_BACKGROUND = "rgb(21, 22, 26)"  # --bg of the dark theme
LIGHT_BACKGROUND = "rgb(247, 247, 248)"
PAGES = ("/", "/approvals/", "/usage/", "/settings/", "/accounts/password/change/")


def _background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def _settings(page: Page, **choices: str) -> None:
    page.goto("/settings/")
    for name, value in choices.items():
        page.check(f"input[name={name}][value={value}]")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".flash")).to_contain_text("Settings saved.")


def test_dark_follows_the_system_on_every_page_and_the_setting_wins(new_page):
    anonymous = new_page(color_scheme="dark")
    anonymous.goto("/accounts/login/")
    assert _background(anonymous) == DARK_BACKGROUND

    page = new_page(color_scheme="dark")
    sign_up(page, unique_email("dark"))
    chat_new(page)
    chat_send(page, "run python: print(1)")  # a card waiting, in the dark
    expect(page.locator(".approval-card")).to_be_visible(timeout=30_000)
    assert _background(page) == DARK_BACKGROUND
    card = page.locator(".approval-card").evaluate("e => getComputedStyle(e).backgroundColor")
    assert card == "rgb(30, 31, 37)"  # --card, not white
    for path in PAGES:
        page.goto(path)
        assert _background(page) == DARK_BACKGROUND, path

    _settings(page, theme="light")
    for path in PAGES:
        page.goto(path)
        assert _background(page) == LIGHT_BACKGROUND, path

    light = new_page(color_scheme="light")
    sign_up(light, unique_email("light-system"))
    assert _background(light) == LIGHT_BACKGROUND
    _settings(light, theme="dark")
    light.goto("/")
    assert _background(light) == DARK_BACKGROUND


def test_the_send_key_setting(new_page):
    page = new_page()
    sign_up(page, unique_email("send-key"))
    _settings(page, send_key="ctrl_enter")
    chat_new(page)
    composer = page.locator("#composer-content")
    composer.click()
    page.keyboard.type("line one")
    page.keyboard.press("Enter")
    page.keyboard.type("line two")
    expect(composer).to_have_value("line one\nline two")
    expect(page.locator("#messages section.run")).to_have_count(0)
    page.keyboard.press("Control+Enter")
    expect(page.locator("#messages section.run")).to_have_count(1)
    expect(composer).to_have_value("")
    run_id = int(page.locator("#messages section.run").get_attribute("data-run"))
    expect_run_completed(page, run_id)
