"""Chat in a real browser: sign-up to a streamed reply, and a reload in the middle of one."""

from __future__ import annotations

import itertools
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    E2E_PASSWORD,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

# The demo answers anything it does not recognise with its help text (~110
# words, one chunk each), long enough to watch it stream.
LONG_PROMPT = "Tell me how this product works, please"
# The help text echoes up to 200 characters: a longer reply to reload in the middle of.
LONGER_PROMPT = (
    "Tell me, step by step and in plenty of detail, how a tool call passes the gate, who is"
    " asked to approve it, what happens when nobody answers, and how the budget is checked"
)

# Records every distinct text of the streaming assistant body, in order, as
# pushes change it (no polling interval to miss frames), and the most finished
# Markdown blocks the streaming body held (frames append them, then replace the tail).
RECORD_BODIES = """() => {
  window.__bodies = [];
  window.__blocks = 0;
  const grab = () => {
    const body = document.querySelector("#messages .msg-assistant .msg-body");
    if (!body) return;
    const blocks = body.querySelector(".msg-blocks");
    if (blocks) window.__blocks = Math.max(window.__blocks, blocks.children.length);
    const text = body.innerText.trim();
    if (text && window.__bodies[window.__bodies.length - 1] !== text) window.__bodies.push(text);
  };
  new MutationObserver(grab).observe(document.getElementById("messages"),
    {childList: true, subtree: true, characterData: true});
}"""


def _assistant_rows(stack, run_id: int) -> list[tuple[str, str]]:
    return stack.sql(
        "SELECT status, content FROM conversations_message"
        " WHERE run_id = %s AND role = 'assistant' ORDER BY id",
        (run_id,),
    )


def test_sign_up_log_in_and_watch_a_reply_stream(new_page, stack):
    page = new_page()
    email = unique_email("stream")
    sign_up(page, email)
    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/**")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", E2E_PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login" not in url)
    expect(page.locator(".topbar .who")).to_have_text(email)

    chat_new(page)
    expect(page.locator("#model-picker option:checked")).to_have_text("Demo (offline)")
    expect(page.locator("#messages .empty-chat")).to_be_visible()
    page.evaluate(RECORD_BODIES)
    run_id, run = chat_send(page, LONG_PROMPT)
    expect(page.locator("#messages .empty-chat")).to_be_hidden()

    reply = run.locator(".msg-assistant")
    expect(reply).to_have_class(re.compile(r"\bmsg-complete\b"), timeout=30_000)
    expect_run_completed(page, run_id)
    final = reply.locator(".msg-body").inner_text().strip()
    assert "You wrote: " + LONG_PROMPT in final
    assert reply.locator(".typing").count() == 0

    bodies = page.evaluate("window.__bodies")
    partial = [text for text in bodies if text != final]
    # More than one update before completion, each longer than the one before.
    assert len(partial) >= 2, bodies
    assert all(len(a) < len(b) for a, b in itertools.pairwise(partial)), partial
    assert len(partial[-1]) < len(final)
    assert partial[0].split()[0] == final.split()[0]
    assert all(text.count("You wrote:") <= 1 for text in bodies)  # no block shown twice
    # The reply's first paragraphs were finished, and appended, while it streamed.
    assert page.evaluate("window.__blocks") >= 2

    # Stored once, complete, and the same text a fresh page shows.
    rows = _assistant_rows(stack, run_id)
    assert [status for status, _ in rows] == ["complete"]
    assert rows[0][1].count("You wrote:") == 1
    page.reload()
    expect(page.locator(f"#run-{run_id} .msg-assistant .msg-body")).to_have_text(final)


def test_reload_in_the_middle_of_a_reply_shows_it_and_completes_once(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("reload"))
    conversation = chat_new(page)
    run_id, run = chat_send(page, LONGER_PROMPT)

    body = run.locator(".msg-assistant .msg-body")
    expect(body).to_contain_text("offline demo model")  # the stream has begun
    response = page.reload()
    served = response.text()
    # The server drew the reply as it stood: still streaming, with the text so far.
    match = re.search(
        r'<article id="message-(\d+)" class="msg msg-assistant msg-streaming"', served
    )
    assert match, "the reload did not land mid-reply"
    message_id = int(match.group(1))
    shown_after_reload = page.locator(f"#message-{message_id}-body").inner_text().strip()
    # The text saved so far: first 0.1 s into the stream, then at most every
    # TOLLGATE_STREAM_PERSIST_SECONDS, so it may trail what the page had shown.
    assert shown_after_reload

    reply = page.locator(f"#message-{message_id}")
    expect(reply).to_have_class(re.compile(r"\bmsg-complete\b"), timeout=30_000)
    expect_run_completed(page, run_id)
    final = page.locator(f"#message-{message_id}-body").inner_text().strip()
    assert len(final) > len(shown_after_reload)
    assert final.startswith(shown_after_reload.split("You wrote")[0].strip()[:40])
    assert final.count("You wrote:") == 1
    assert page.locator(f"#run-{run_id} .msg-assistant").count() == 1

    # Nothing doubled: the live page equals a freshly rendered one and the database.
    rows = _assistant_rows(stack, run_id)
    assert [status for status, _ in rows] == ["complete"]
    assert rows[0][1].count("You wrote:") == 1
    fresh = page.context.new_page()
    fresh.goto(f"/c/{conversation}/")
    expect(fresh.locator(f"#message-{message_id}-body")).to_have_text(final)
    assert fresh.locator(".msg-assistant").count() == 1


def test_sidebar_follows_sends_archives_and_deletes_in_every_tab(new_page):
    """A send puts its conversation first in every tab's list; archived and
    deleted ones leave the list of a tab that shows them, with no reload."""
    page = new_page()
    sign_up(page, unique_email("sidebar"))
    first = chat_new(page)
    run_id, _ = chat_send(page, "Plan the first trip")
    expect_run_completed(page, run_id)
    second = chat_new(page)
    other = page.context.new_page()
    other.goto("/")
    other.evaluate("() => { window.__sameDocument = true; }")
    items = "#conversation-list .conversation-item"
    for tab in (page, other):
        expect(tab.locator(items)).to_have_count(2)
        expect(tab.locator(items).first).to_have_id(f"conversation-{second}")

    page.goto(f"/c/{first}/")
    run_id, _ = chat_send(page, "One more thing")
    for tab in (page, other):
        expect(tab.locator(items).first).to_have_id(f"conversation-{first}")
        expect(tab.locator(items)).to_have_count(2)  # moved, not copied
    expect(page.locator(items).first).to_have_class(re.compile(r"\bcurrent\b"))
    expect_run_completed(page, run_id)

    page.click("form.inline[action$='/archive'] button")  # the chat header's
    page.wait_for_url(lambda url: "/c/" not in url)  # archived: back to the start page
    expect(other.locator(items)).to_have_count(1)
    expect(other.locator(items).first).to_have_id(f"conversation-{second}")

    page.goto(f"/c/{second}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form.inline[action$='/delete'] button")
    page.wait_for_url(lambda url: "/c/" not in url)
    expect(other.locator(items)).to_have_count(0)
    expect(other.locator("#conversation-list-empty")).to_be_visible()
    assert other.evaluate("() => window.__sameDocument === true"), "the tab reloaded"


def test_a_long_chat_draws_its_last_exchanges_and_loads_earlier_ones(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("earlier"))
    conversation = chat_new(page)
    # 25 earlier questions (each a top-level message, an exchange of its own).
    stack.sql(
        "INSERT INTO conversations_message (conversation_id, role, status, content,"
        " tool_call_id, model, metadata, created_at)"
        " SELECT %s, 'user', 'complete', 'Question ' || i || '?', '', '', '{}', now()"
        " FROM generate_series(0, 24) AS i RETURNING id",
        (conversation,),
    )
    page.reload()
    questions = page.locator("#messages .msg-user")
    expect(questions).to_have_count(20)  # TOLLGATE_TIMELINE_PAGE
    expect(questions.first).to_contain_text("Question 5?")
    page.get_by_role("button", name="Earlier messages").click()
    expect(questions).to_have_count(25)
    texts = [text.strip() for text in questions.all_inner_texts()]
    assert [re.search(r"Question (\d+)\?", t).group(1) for t in texts] == [
        str(i) for i in range(25)
    ]
    expect(page.get_by_role("button", name="Earlier messages")).to_have_count(0)
    run_id, _ = chat_send(page, "And one more")  # the page still takes new messages
    expect_run_completed(page, run_id)


def test_a_refused_message_comes_back_to_the_composer_and_a_late_stop_says_why(
    new_page, page_problems
):
    """The composer clears when the server took its message; one the server refuses
    (here: sent while the reply still streams) stays, with the reason, and goes once
    sent again. A Stop that comes after the reply finished answers 409, and the
    page shows its message (htmx swaps that answer)."""
    page = new_page()
    sign_up(page, unique_email("refused"))
    chat_new(page)
    run_id, _run = chat_send(page, LONG_PROMPT)
    composer = page.locator("#composer textarea[name=content]")
    typed = "A second thought, typed <while> the reply streams"
    composer.fill(typed)
    page.click("#composer button[type=submit]")
    errors = page.locator("#chat-errors .error-box")
    expect(errors).to_contain_text("A reply is still being written.")
    expect(composer).to_have_value(typed)

    expect_run_completed(page, run_id)
    page.click("#composer button[type=submit]")
    expect(composer).to_have_value("")
    expect(page.locator("#messages > .msg-user").last).to_contain_text(typed)
    expect(errors).to_have_count(0)  # the success cleared the box
    runs = page.locator("#messages section.run")
    expect(runs).to_have_count(2)
    expect_run_completed(page, int(runs.nth(1).get_attribute("data-run")))
    expect(composer).to_have_value("")  # nothing refused came back

    page_problems.allow(r"409.* .*/runs/\d+/cancel")
    page.evaluate(f"htmx.ajax('POST', '/runs/{run_id}/cancel', {{swap: 'none'}})")
    expect(errors).to_contain_text("This reply has already finished.")
