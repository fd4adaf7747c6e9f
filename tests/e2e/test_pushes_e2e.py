"""Pushes that reach a page before the place they land in (static/js/pushes.js).

The web pushes a new run's block and the worker pushes the messages inside it;
the two come from different processes, so the worker's can arrive first. The page
holds such a fragment and swaps it once its place exists, in the order pushes came.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import chat_new, sign_up, unique_email

pytestmark = pytest.mark.e2e

WS_OPEN = "document.addEventListener('htmx:wsOpen', () => { window.__wsOpen = true; });"

PUSH = """
import asyncio, json
from channels.layers import get_channel_layer
from project.pushes import conversation_group

async def main():
    layer, group = get_channel_layer(), conversation_group({conversation})
    for html in json.loads({fragments!r}):
        await layer.group_send(group, {{"type": "html.push", "html": html}})

asyncio.run(main())
"""


def test_a_message_pushed_before_its_run_block_is_shown_inside_it(new_page, stack):
    page = new_page()
    page.add_init_script(WS_OPEN)
    sign_up(page, unique_email("early-push"))
    conversation = chat_new(page)
    page.wait_for_function("window.__wsOpen === true")
    run = 990_000 + conversation
    fragments = [
        # the worker's pushes, first: two messages into the run, then the run's status
        f'<div hx-swap-oob="beforeend:#run-{run}-messages">'
        f'<article id="message-{run}-a" class="msg">Pushed before its run</article></div>',
        f'<div hx-swap-oob="beforeend:#run-{run}-messages">'
        f'<article id="message-{run}-b" class="msg">Also pushed early</article></div>',
        f'<div id="run-{run}-status" hx-swap-oob="outerHTML">Waiting for approval</div>',
        # then the web's: the run's block, here drawn late enough to hold the second
        f'<div hx-swap-oob="beforeend:#messages"><section id="run-{run}" class="run">'
        f'<div id="run-{run}-messages"><article id="message-{run}-b" class="msg">Drawn'
        f' with the block</article></div><div id="run-{run}-status">Queued</div>'
        "</section></div>",
    ]
    stack.manage(
        "shell", "-c", PUSH.format(fragments=json.dumps(fragments), conversation=conversation)
    )
    block = page.locator(f"#run-{run}")
    expect(block.locator(f"#message-{run}-a")).to_have_text("Pushed before its run")
    expect(block.locator(f"#run-{run}-status")).to_have_text("Waiting for approval")
    # an element the block already has is not appended a second time
    expect(page.locator(f"#message-{run}-b")).to_have_text("Drawn with the block")
    expect(block.locator("article")).to_have_count(2)
    expect(block.locator(f"#run-{run}-messages > article").first).to_have_id(f"message-{run}-b")
