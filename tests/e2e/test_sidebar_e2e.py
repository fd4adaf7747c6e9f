"""The sidebar in a real browser: groups by day, pin, rename, archive and delete from
the list, and search that opens a conversation at the message that matched."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    chat_new,
    chat_send,
    conversation_id,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

ITEMS = "#conversation-list .conversation-item"


def _menu(page, conversation: int):
    item = page.locator(f"#conversation-{conversation}")
    item.hover()
    item.locator("summary").click()
    return item.locator(".item-actions")


def test_actions_from_the_list_and_groups(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("sidebar-actions"))
    first = chat_new(page)
    run_id, _ = chat_send(page, "Packing list for the trip")
    expect_run_completed(page, run_id)
    second = chat_new(page)
    run_id, _ = chat_send(page, "Budget for the trip")
    expect_run_completed(page, run_id)
    # Three yesterday's: a conversation last changed two days ago reads "Previous 7 days".
    stack.sql(
        "UPDATE conversations_conversation SET updated_at = now() - interval '3 days'"
        " WHERE id = %s RETURNING id",
        (first,),
    )
    page.reload()
    heads = page.locator("#conversation-list .group-head")
    expect(heads).to_have_text(["Today", "Previous 7 days"])

    _menu(page, first).get_by_role("button", name="Pin").click()
    page.wait_for_url(f"**/c/{second}/")  # back where the action was taken
    expect(heads).to_have_text(["Pinned", "Today"])
    expect(page.locator(ITEMS).first).to_have_id(f"conversation-{first}")

    actions = _menu(page, first)
    actions.locator("input[name=title]").fill("Trip packing")
    actions.get_by_role("button", name="Rename").click()
    expect(page.locator(f"#conversation-{first} > a")).to_have_text("Trip packing")
    assert conversation_id(page) == second

    _menu(page, first).get_by_role("button", name="Archive").click()
    expect(page.locator(f"#conversation-{first}")).to_have_count(0)
    expect(page.locator(ITEMS)).to_have_count(1)

    page.once("dialog", lambda dialog: dialog.accept())
    _menu(page, second).get_by_role("button", name="Delete").click()
    page.wait_for_url(lambda url: "/c/" not in url)  # it was the open one
    expect(page.locator(ITEMS)).to_have_count(0)
    assert stack.sql(
        "SELECT count(*) FROM conversations_conversation WHERE id = %s", (second,)
    ) == [(0,)]


def test_search_opens_the_conversation_at_the_matching_message(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("sidebar-search"))
    conversation = chat_new(page)
    run_id, _ = chat_send(page, "The zeppelin hangar opens at nine")
    expect_run_completed(page, run_id)
    for index in range(4):  # later messages push it up
        run_id, _ = chat_send(page, f"Another question number {index}")
        expect_run_completed(page, run_id)
    [(message,)] = stack.sql(
        "SELECT id FROM conversations_message WHERE conversation_id = %s AND role = 'user'"
        " AND content LIKE 'The zeppelin%%'",
        (conversation,),
    )
    chat_new(page)
    page.fill("#conversation-search", "zeppelins")  # stemmed: the full-text search
    results = page.locator("#search-results")
    expect(results.locator(".search-hit")).to_have_count(1)
    expect(results.locator(".hit-snippet mark").first).to_have_text("zeppelin")
    results.locator(".search-hit a").click()
    page.wait_for_url(f"**/c/{conversation}/?at=*")
    # At the message that matched (the question, or the reply quoting it), shown.
    found = page.locator("#messages .msg.found")
    expect(found).to_have_count(1)
    expect(found).to_contain_text("zeppelin")
    expect(found).to_be_in_viewport()
    expect(page.locator(f"#message-{message}")).to_be_visible()
    expect(page.get_by_role("link", name="Later messages — go to the latest")).to_be_visible()
    page.fill("#conversation-search", "")
    page.locator("#conversation-search").press("Enter")
    expect(results).to_be_hidden()
