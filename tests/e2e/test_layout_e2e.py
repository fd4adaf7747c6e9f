"""The layout in a real browser: no page wider than a phone (390 x 844), the sidebar a
drawer there, the composer and the approvals badge within reach; and the README's
screenshots of the chat with an approval card (1280 x 800 light and dark, 390 x 844)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import ROOT, approval_card, chat_new, chat_send, sign_up, unique_email

pytestmark = pytest.mark.e2e

PHONE = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "docs" / "screenshots"
CODE = "run python: import math; print([math.factorial(n) for n in range(12)])"


def _wider_than_the_screen(page: Page) -> list[str]:
    """What sticks out past the viewport's right edge (empty when nothing does)."""
    return page.evaluate(
        """() => {
          const width = document.documentElement.clientWidth;
          if (document.documentElement.scrollWidth <= width) return [];
          const clipped = (e) => {
            for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
              if (getComputedStyle(p).overflowX !== "visible") return true;
            }
            return false;
          };
          return Array.from(document.querySelectorAll("body *"))
            .filter((e) => e.getBoundingClientRect().right > width + 1 && !clipped(e))
            .slice(0, 20)
            .map((e) => e.tagName + "#" + e.id + "." + e.className + " " +
                 Math.round(e.getBoundingClientRect().right));
        }"""
    )


def _card_waiting(page: Page) -> tuple[int, str]:
    page.goto("/")
    toggle = page.get_by_role("button", name="☰ Chats")
    if toggle.is_visible():  # a phone: "New chat" is in the drawer
        toggle.click()
    chat_new(page)
    run_id, _ = chat_send(page, CODE)
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    return run_id, card.get_attribute("id").removeprefix("approval-")


def test_no_page_is_wider_than_a_phone_and_the_chat_works_there(new_page):
    anonymous = new_page(viewport=PHONE)
    for path in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        anonymous.goto(path)
        assert _wider_than_the_screen(anonymous) == [], path

    page = new_page(viewport=PHONE)
    sign_up(page, unique_email("phone"))
    run_id, approval = _card_waiting(page)
    conversation = page.url
    # The card's edit form and its diff, open, wrap too.
    card = approval_card(page, run_id)
    card.locator("details.edit-arguments summary").click()
    card.locator("textarea[name=arg__code]").fill(CODE.removeprefix("run python: ") + " # x" * 30)
    card.get_by_role("button", name="Show changes").click()
    expect(card.locator(".arguments-diff")).to_be_visible()
    assert _wider_than_the_screen(page) == [], conversation
    for path in (
        "/",
        "/approvals/",
        f"/approvals/{approval}/",
        "/usage/",
        "/settings/",
        "/prompts/",
        "/accounts/email/",
        "/accounts/password/change/",
        "/?archived=1",
    ):
        page.goto(path)
        assert _wider_than_the_screen(page) == [], (path, _wider_than_the_screen(page))

    # The sidebar is a drawer; the composer and the approvals badge stay in reach.
    page.goto(conversation)
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator("#composer-content")).to_be_in_viewport()
    page.mouse.wheel(0, 5000)
    expect(page.locator("#approval-badge")).to_be_in_viewport()
    expect(page.locator("#composer-content")).to_be_in_viewport()
    page.get_by_role("button", name="☰ Chats").click()
    expect(sidebar).to_be_in_viewport()
    expect(sidebar.locator(".conversation-item")).to_have_count(1)
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()


def test_screenshots_of_the_chat_with_an_approval_card(new_page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, options in (
        ("chat-light.png", {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"}),
        ("chat-dark.png", {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"}),
        ("chat-phone.png", {"viewport": PHONE, "color_scheme": "light"}),
    ):
        page = new_page(**options)
        sign_up(page, unique_email("shot"))
        run_id, _ = _card_waiting(page)
        card = approval_card(page, run_id)
        card.scroll_into_view_if_needed()
        page.mouse.move(0, 0)
        page.screenshot(path=str(SCREENSHOTS / name))
