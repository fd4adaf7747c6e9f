"""A conversation longer than the model's context window, in a real browser: where the
messages sent to the model begin is marked in the chat, and the run says so."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    chat_new,
    chat_send,
    expect_run_completed,
    run_status,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

SMALL_MODEL = """
from conversations.models import ModelConfig
ModelConfig.objects.get_or_create(
    name="Demo, small window",
    defaults=dict(
        litellm_model="demo/tollgate", context_window=1500, max_output_tokens=256,
        supports_tools=False,
    ),
)
"""


def test_a_message_too_long_then_a_short_one_marks_where_the_history_sent_begins(new_page, stack):
    """Issue 22, defect 9: after a message too long for the model, the next one left
    out every earlier message, and nothing said so."""
    stack.manage("shell", "-c", SMALL_MODEL)
    page = new_page()
    sign_up(page, unique_email("context"))
    conversation = chat_new(page)
    page.locator("#model-picker").select_option(label="Demo, small window")
    expect(page.locator("#model-picker option:checked")).to_have_text("Demo, small window")
    for question in ("First question", "Second question", "Third question"):
        run_id, _ = chat_send(page, question)
        expect_run_completed(page, run_id)
    expect(page.locator("#context-cut")).to_have_count(0)

    run_id, _ = chat_send(page, "Long " + "word " * 3000)
    status = run_status(page, run_id)
    expect(status).to_have_class(re.compile(r"\brun-failed\b"), timeout=30_000)
    expect(status).to_contain_text("too long for this model")

    run_id, _ = chat_send(page, "A short question again")
    expect_run_completed(page, run_id)
    marker = page.locator("#context-cut")
    expect(marker).to_be_visible()
    expect(marker).to_contain_text("no longer sent to the model")
    expect(run_status(page, run_id).locator(".context-note")).to_contain_text(
        re.compile(r"Written without the \d+ earliest messages")
    )
    [cut] = stack.sql(
        "SELECT metadata->>'context_cut_message_id' FROM conversations_run WHERE id = %s",
        (run_id,),
    )
    # The marker stands right before the first message still sent (here the new one).
    following = page.locator("#context-cut + article")
    expect(following).to_have_id(f"message-{cut[0]}")
    expect(following).to_contain_text("A short question again")

    page.goto(f"/c/{conversation}/")
    expect(page.locator("#context-cut")).to_have_count(1)
    expect(page.locator("#context-cut + article")).to_have_id(f"message-{cut[0]}")
