"""MCP servers as tool sources, end to end: admin, registry, gate, agent loop, chat.

Real servers over stdio, written by others: ``mcp-server-time`` (PyPI) and
``@modelcontextprotocol/server-everything`` (npm, installed into var/mcp-node on
first use); failure cases use the small SDK-built peer in ``mcp_fixtures.py``.
The agent loop runs with the offline demo model ("use tool <name> {json}") and is
driven step by step with ``run_advance``, as a worker would run it.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import AlwaysAllowRefused, approval_decide
from audit.models import AuditEvent
from conversations import events, services
from conversations.engine import run_advance
from conversations.models import Conversation, Message, ModelConfig, Run
from tests.conversations.conftest import drive, send
from tests.tools.mcp_fixtures import THIS_FILE, install_node_servers
from tools.mcp.bridge import (
    mcp_registry_ensure,
    mcp_server_refresh,
    mcp_servers_check,
    mcp_tools_unregister,
)
from tools.mcp.pool import mcp_pool
from tools.models import MCPServer, Tool, ToolInvocation
from tools.registry import ToolContext, registry
from tools.selectors import tools_for_user
from tools.services import invocation_execute, tools_sync

from .conftest import approved_invocation

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

S = Run.Status
IS = ToolInvocation.Status


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _setup(monkeypatch, db):
    monkeypatch.setenv("TOLLGATE_DEMO_DELAY_MS", "0")
    tools_sync()
    yield
    for server in MCPServer.objects.all():
        mcp_tools_unregister(server_name=server.name)


def make_server(**fields: Any) -> MCPServer:
    server = MCPServer(**fields)
    server.full_clean()
    server.save()
    return server


def refresh(server: MCPServer) -> MCPServer:
    return async_to_sync(mcp_server_refresh)(server_id=server.pk)


@pytest.fixture
def time_server() -> MCPServer:
    return make_server(
        name="time",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
        tool_prefix="time",
        trusted=True,
    )


@pytest.fixture
def everything() -> MCPServer:
    return make_server(
        name="everything",
        command=str(install_node_servers()),
        args=["stdio"],
        tool_prefix="ev",
        trusted=True,
    )


@pytest.fixture
def fail_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """While this file exists our test server refuses to start (env var indirection)."""
    marker = tmp_path / "fail-start"
    monkeypatch.setenv("TG_TEST_FAIL_MARKER", str(marker))
    return marker


@pytest.fixture
def ours(fail_marker: Path) -> MCPServer:
    return make_server(
        name="ours",
        command=sys.executable,
        args=[str(THIS_FILE)],
        env={"TG_MCP_FAIL_IF_EXISTS": "TG_TEST_FAIL_MARKER"},
        tool_prefix="t",
        trusted=False,
        call_timeout_seconds=30,
    )


@pytest.fixture
def conversation(user) -> Conversation:
    model, _ = ModelConfig.objects.get_or_create(
        name="Demo (offline)", defaults={"litellm_model": "demo/tollgate"}
    )
    return Conversation.objects.create(owner=user, model_config=model, title="MCP")


def approve(approval: ApprovalRequest, **options: Any) -> ApprovalRequest:
    return approval_decide(
        approval_id=approval.pk,
        actor=approval.requester,
        approve=True,
        arguments_hash=approval.arguments_hash,
        **options,
    )


# --- admin ------------------------------------------------------------------------------------


def test_admin_refresh_stores_tools_and_registers_them_with_schema_and_hints(
    admin_user, client, time_server, user
):
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:tools_mcpserver_changelist"),
        {"action": "refresh_tools", "_selected_action": [time_server.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "ime: connected, 2 tool(s)." in response.content.decode()  # capfirst

    time_server.refresh_from_db()
    assert time_server.healthy is True and time_server.last_error == ""
    cached = {item["remote_name"]: item for item in time_server.tools_cached}
    assert set(cached) == {"get_current_time", "convert_time"}
    assert cached["get_current_time"]["input_schema"]["required"] == ["timezone"]

    spec = registry.get("time.get_current_time")
    assert spec is not None and spec.wire_name == "time__get_current_time"
    assert spec.source == "mcp:time"
    assert spec.parameters["type"] == "object"
    assert "timezone" in spec.parameters["properties"]
    assert (spec.read_only, spec.destructive, spec.idempotent, spec.open_world) == (
        True,
        False,
        True,
        False,
    )
    assert spec.metadata == {
        "trusted": True,
        "mcp_server": "time",
        "mcp_tool": "get_current_time",
        "title": "get_current_time",
    }
    assert spec.description.startswith("[MCP server: time] ")
    assert spec.timeout_seconds == time_server.call_timeout_seconds + 30 + 5
    assert registry.get("time.now").source == "builtin"  # the built-in is untouched

    row = Tool.objects.get(name="time.convert_time")
    assert (row.source, row.enabled, row.unavailable_reason) == ("mcp:time", True, "")
    assert row.read_only is True
    assert {s.name for s in tools_for_user(user=user)} >= {
        "time.get_current_time",
        "time.convert_time",
    }
    assert AuditEvent.objects.filter(action="mcp.tools_refreshed", data__tools=2).exists()
    assert AuditEvent.objects.filter(action="mcp.server_up", data__server="time").exists()

    page = client.get(reverse("admin:tools_mcpserver_changelist")).content.decode()
    assert "time" in page and "get_current_time" not in page  # the list shows a count
    detail = client.get(reverse("admin:tools_mcpserver_change", args=[time_server.pk]))
    assert "time.get_current_time" in detail.content.decode()


def test_registration_happens_lazily_in_a_process_that_only_has_the_database(time_server):
    refresh(time_server)
    # Another process: nothing registered yet, only the cached rows.
    mcp_tools_unregister(server_name="time")
    assert registry.get("time.get_current_time") is None
    mcp_registry_ensure()
    assert registry.get("time.get_current_time") is not None
    # A prefix edit re-registers under the new name; the old rows say why they went.
    time_server.refresh_from_db()
    time_server.tool_prefix = "clock"
    time_server.save()
    mcp_registry_ensure()
    assert registry.get("time.get_current_time") is None
    assert registry.get("clock.get_current_time") is not None


def test_admin_save_validates_and_audits_and_never_shows_secret_values(admin_user, client):
    client.force_login(admin_user)
    add = reverse("admin:tools_mcpserver_add")
    base = {
        "name": "gh",
        "enabled": "on",
        "tool_prefix": "gh",
        "transport": "stdio",
        "command": sys.executable,
        "args": '["-m", "mcp_server_time"]',
        "env": '{"GITHUB_TOKEN": "TG_GITHUB_TOKEN"}',
        "url": "",
        "headers": "{}",
        "connect_timeout_seconds": "30",
        "call_timeout_seconds": "120",
    }
    for bad, message in (
        ({"command": "no-such-mcp-binary-xyz"}, "was not found on this host"),
        ({"tool_prefix": "bad.prefix"}, "no dots"),
        ({"transport": "http", "url": "ftp://example.com"}, "http:// or https:// URL"),
        ({"env": '{"GITHUB_TOKEN": "not a name"}'}, "must name an environment variable"),
        ({"args": '{"a": 1}'}, "JSON list of strings"),
    ):
        response = client.post(add, {**base, **bad})
        assert response.status_code == 200, bad
        assert message in response.content.decode(), bad
    assert not MCPServer.objects.exists()

    response = client.post(add, base)
    assert response.status_code == 302
    server = MCPServer.objects.get(name="gh")
    event = AuditEvent.objects.get(action="mcp.server_changed")
    assert event.data["settings"]["env"] == {"GITHUB_TOKEN": "TG_GITHUB_TOKEN"}
    page = client.get(reverse("admin:tools_mcpserver_change", args=[server.pk])).content.decode()
    assert "values are never stored or shown" in page
    assert "TG_GITHUB_TOKEN" in page


# --- the gate and the agent loop ----------------------------------------------------------------


def test_untrusted_servers_read_only_tool_asks_then_runs_after_approval(conversation, time_server):
    time_server.trusted = False
    time_server.save()
    out = StringIO()
    call_command("mcp_refresh", "time", stdout=out)
    assert out.getvalue().strip() == "time: 2 tool(s)"

    run = drive(send(conversation, 'use tool time.get_current_time {"timezone": "Asia/Tokyo"}'))
    assert run.status == S.AWAITING_APPROVAL
    approval = ApprovalRequest.objects.get(run_id=run.pk)
    assert approval.tool_name == "time.get_current_time"
    assert approval.tool_description.startswith("[MCP server: time] ")
    assert approval.hints["read_only"] is True and approval.hints["trusted"] is False
    assert approval.hints["idempotent"] is False  # never re-run on an untrusted word
    assert "not trusted" in approval.explanation
    assert approval.always_allow_permitted is False
    pushed = _run_for_push(run)
    [calling] = [m for m in pushed.timeline_messages if m.steps]
    card = events.render("tool-steps", {"run": pushed, "m": calling, "user": conversation.owner})
    assert "[MCP server: time]" in card and "untrusted server" in card
    assert "always_allow" not in card
    with pytest.raises(AlwaysAllowRefused):
        approve(approval, always_allow=True)

    approve(approval)
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.SUCCEEDED
    assert '"timezone": "Asia/Tokyo"' in invocation.result
    assert invocation.metadata["mcp_server"] == "time"
    assert invocation.metadata["mcp_result"]["isError"] is False
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    assert "Asia/Tokyo" in tool_message.content
    assert tool_message.metadata["mcp_server"] == "time"
    html = events.render("message", {"m": tool_message})
    assert 'class="mcp-result"' in html and "MCP server <strong>time</strong>" in html
    final = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("-id")[0]
    assert "Asia/Tokyo" in final.content


def _run_for_push(run: Run) -> Run:
    from conversations import selectors

    return selectors.run_for_push(run_id=run.pk)


def test_trusted_read_only_tool_is_allowed_and_is_error_result_fails_the_call(
    conversation, time_server
):
    refresh(time_server)
    run = drive(send(conversation, 'use tool time.get_current_time {"timezone": "Mars/Olympus"}'))
    assert run.status == S.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.decision == "allow"
    assert invocation.status == IS.FAILED and invocation.is_error is True
    assert "Mars/Olympus" in invocation.result
    assert invocation.metadata["mcp_result"]["isError"] is True
    tool_message = Message.objects.get(run=run, role=Message.Role.TOOL)
    assert tool_message.metadata["is_error"] is True
    assert "mcp-result--error" in events.render("message", {"m": tool_message})


def test_server_down_gives_a_clear_error_marks_rows_unavailable_and_recovers(
    conversation, ours, fail_marker
):
    refresh(ours)
    assert Tool.objects.get(name="t.echo").unavailable_reason == ""
    run = drive(send(conversation, 'use tool t.echo {"text": "hi"}'))
    approval = ApprovalRequest.objects.get(run_id=run.pk)  # untrusted server: asks

    fail_marker.write_text("down")
    approve(approval)
    run = drive(run)
    assert run.status == S.COMPLETED, run.error
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.FAILED
    assert "MCP server 'ours' is unavailable" in invocation.result
    assert "refusing to start" in invocation.result  # the server's own stderr
    ours.refresh_from_db()
    assert ours.healthy is False and "refusing to start" in ours.last_error
    row = Tool.objects.get(name="t.echo")
    assert row.unavailable_reason.startswith("MCP server 'ours' is down")
    assert "t.echo" not in {s.name for s in tools_for_user(user=conversation.owner)}
    assert AuditEvent.objects.filter(action="mcp.server_down", data__server="ours").exists()

    fail_marker.unlink()
    # The retry waits out its backoff (seconds per failure); move the last check back.
    MCPServer.objects.filter(pk=ours.pk).update(last_checked_at=timezone.now() - timedelta(hours=1))
    assert async_to_sync(mcp_servers_check)() == ["ours"]
    ours.refresh_from_db()
    assert ours.healthy is True
    assert Tool.objects.get(name="t.echo").unavailable_reason == ""


def test_server_exiting_mid_call_and_a_timeout_are_clear_errors(run, ours, tmp_path):
    refresh(ours)
    crashed = approved_invocation(run, tool_name="t.crash", call_id="c-crash")
    crashed = async_to_sync(invocation_execute)(invocation_id=crashed.pk)
    assert crashed.status == IS.FAILED
    assert "connection closed during the call to 'crash'" in crashed.result
    assert "crashing on purpose" in crashed.result
    assert Tool.objects.get(name="t.crash").unavailable_reason.startswith(
        "MCP server 'ours' is down"
    )

    MCPServer.objects.filter(pk=ours.pk).update(call_timeout_seconds=2)
    refresh(ours)  # back up (the beat task would do this after its backoff)
    marker = tmp_path / "timeout-marker"
    slow = approved_invocation(
        run, tool_name="t.wait_for_cancel", arguments={"marker": str(marker)}, call_id="c-slow"
    )
    slow = async_to_sync(invocation_execute)(invocation_id=slow.pk)
    assert slow.status == IS.FAILED
    assert "timed out after 2 s and was cancelled" in slow.result


def test_progress_notifications_are_pushed_to_the_conversation_group(run, everything):
    refresh(everything)
    invocation = approved_invocation(
        run,
        tool_name="ev.trigger-long-running-operation",
        arguments={"duration": 1, "steps": 3},
    )
    layer = get_channel_layer()

    async def execute_and_listen() -> tuple[ToolInvocation, list[str]]:
        channel = await layer.new_channel()
        await layer.group_add(f"conversation.{run.conversation_id}", channel)
        try:
            done = await invocation_execute(invocation_id=invocation.pk)
            frames = []
            while True:
                try:
                    async with asyncio.timeout(2):
                        message = await layer.receive(channel)
                except TimeoutError:
                    break
                frames.append(message["html"])
            return done, frames
        finally:
            await layer.group_discard(f"conversation.{run.conversation_id}", channel)

    done, frames = async_to_sync(execute_and_listen)()
    assert done.status == IS.SUCCEEDED, done.result
    progress = [f for f in frames if f'id="invocation-{invocation.pk}-progress"' in f]
    assert progress, frames
    assert 'hx-swap-oob="true"' in progress[-1]
    # The last notification may race the result (the SDK drops late ones), so any step.
    assert re.search(r'<progress value="[123]" max="3"></progress> [123] / 3', progress[-1])


def test_stopping_the_run_cancels_a_running_mcp_call(conversation, ours, tmp_path):
    refresh(ours)
    marker = tmp_path / "cancel-marker"
    request = "use tool t.wait_for_cancel " + json.dumps({"marker": str(marker)})
    run = drive(send(conversation, request))
    approve(ApprovalRequest.objects.get(run_id=run.pk))

    async def run_then_stop() -> None:
        step = asyncio.ensure_future(run_advance(run_id=run.pk, worker="test-worker"))
        started = Path(str(marker) + ".started")
        async with asyncio.timeout(60):
            while not started.exists():  # noqa: ASYNC110, ASYNC240 - the server writes a file
                await asyncio.sleep(0.05)
        await sync_to_async(services.run_cancel)(user=conversation.owner, run_id=run.pk)
        await step

    async_to_sync(run_then_stop)()
    run.refresh_from_db()
    assert run.status == S.CANCELLED
    invocation = ToolInvocation.objects.get(run_id=run.pk)
    assert invocation.status == IS.FAILED
    assert "was cancelled" in invocation.result and "The run was stopped" in invocation.result
    assert marker.read_text() == "cancelled"  # the server received notifications/cancelled


# --- list refresh (pooled connection, as in the web process) ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_list_changed_refreshes_the_cache_and_registers_the_new_tool(settings, ours, user):
    settings.TOLLGATE_MCP_CONNECTIONS = "pool"

    async def scenario() -> None:
        try:
            await mcp_server_refresh(server_id=ours.pk)
            spec = registry.get("t.add_tool")
            assert spec is not None and registry.get("t.fresh") is None
            result = await spec.handler({"name": "fresh"}, ToolContext(user_id=user.pk))
            assert result.text == "added fresh"
            async with asyncio.timeout(30):
                while registry.get("t.fresh") is None:  # noqa: ASYNC110 - set by a callback
                    await asyncio.sleep(0.05)
            fresh = registry.get("t.fresh")
            again = await fresh.handler({}, ToolContext(user_id=user.pk))
            assert again.text == "I am fresh"
        finally:
            await mcp_pool().close_all()

    async_to_sync(scenario)()
    ours.refresh_from_db()
    assert "fresh" in {item["remote_name"] for item in ours.tools_cached}
    assert Tool.objects.get(name="t.fresh").source == "mcp:ours"
    assert AuditEvent.objects.filter(
        action="mcp.tools_refreshed", data__added=["fresh"], data__server="ours"
    ).exists()
