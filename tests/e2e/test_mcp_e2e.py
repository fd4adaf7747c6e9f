"""An MCP server's tool behind the same gate, in a real browser (issue 7's browser check)."""

from __future__ import annotations

import json
import sys

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    approval_card,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

CREATE_SERVER = """
from tools.models import MCPServer
MCPServer.objects.update_or_create(
    name="time",
    defaults=dict(
        transport="stdio",
        command={python!r},
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
        tool_prefix="time",
        trusted=False,
        enabled=True,
    ),
)
"""


@pytest.fixture(scope="module")
def time_server(stack) -> str:
    """The reference ``mcp-server-time`` (PyPI), registered untrusted and refreshed."""
    stack.manage("shell", "-c", CREATE_SERVER.format(python=sys.executable))
    stack.manage("mcp_refresh", "time")
    rows = stack.sql("SELECT name FROM tools_tool WHERE source = 'mcp:time' ORDER BY name")
    assert ("time.get_current_time",) in rows, rows
    return "time.get_current_time"


def test_mcp_tool_asks_with_the_server_name_and_hints_then_runs(new_page, stack, time_server):
    page = new_page()
    sign_up(page, unique_email("mcp"))
    chat_new(page)
    arguments = {"timezone": "Asia/Tokyo"}
    run_id, run = chat_send(page, f"use tool {time_server} {json.dumps(arguments)}")
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".tool")).to_have_text(time_server)
    # The server's name, its read-only hint, and that the server is not trusted.
    expect(card.locator(".tool-description")).to_contain_text("[MCP server: time]")
    expect(card).to_contain_text("read-only")
    expect(card).to_contain_text("untrusted")
    expect(card.locator("input[name=always_allow]")).to_have_count(0)
    expect(card.locator("pre.arguments")).to_contain_text('"timezone": "Asia/Tokyo"')
    # Nothing an MCP server says gives a call's cost: no estimate, never $0.
    expect(card.locator(".approval-cost")).to_contain_text("this tool: no estimate")

    card.get_by_role("button", name="Approve", exact=True).click()

    expect(run.locator(".step-output")).to_contain_text("Asia/Tokyo", timeout=60_000)
    expect_run_completed(page, run_id, timeout=60_000)
    [(status, attempts)] = stack.sql(
        "SELECT status, attempts FROM tools_toolinvocation WHERE run_id = %s", (run_id,)
    )
    assert (status, attempts) == ("succeeded", 1)
