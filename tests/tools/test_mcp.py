"""MCP client layer against real MCP servers over stdio (and one over Streamable HTTP).

Servers written by others: ``@modelcontextprotocol/server-everything`` (npm, installed
into var/mcp-node on first use) and ``mcp-server-time`` (PyPI). Failure cases that no
public server offers on demand (exit mid-call, refuse to start, record a cancel) use
the tiny SDK-built server in ``tests/tools/mcp_fixtures.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tools.mcp_fixtures import THIS_FILE, install_node_servers
from tools.mcp import (
    MCPCallResult,
    MCPCancelled,
    MCPConnection,
    MCPInvalidArguments,
    MCPServerConfig,
    MCPTimeout,
    MCPUnavailable,
    mcp_pool,
    mcp_session,
    result_to_html,
    result_to_text,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def everything_bin() -> Path:
    return install_node_servers()


@pytest.fixture
def everything(everything_bin: Path) -> MCPServerConfig:
    return MCPServerConfig(
        name="everything",
        command=str(everything_bin),
        args=("stdio",),
        tool_prefix="ev",
        trusted=True,
        connect_timeout_seconds=30,
        call_timeout_seconds=30,
    )


@pytest.fixture
def time_server() -> MCPServerConfig:
    return MCPServerConfig(
        name="time",
        command=sys.executable,
        args=("-m", "mcp_server_time", "--local-timezone", "UTC"),
        tool_prefix="time",
        trusted=True,
        connect_timeout_seconds=30,
    )


@pytest.fixture
def fail_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file whose existence makes our test server refuse to start.

    Its path reaches the child through the config's env indirection:
    child ``TG_MCP_FAIL_IF_EXISTS`` <- our ``TG_TEST_FAIL_MARKER``.
    """
    marker = tmp_path / "fail-start"
    monkeypatch.setenv("TG_TEST_FAIL_MARKER", str(marker))
    return marker


@pytest.fixture
def ours(fail_marker: Path) -> MCPServerConfig:
    return MCPServerConfig(
        name="ours",
        command=sys.executable,
        args=(str(THIS_FILE),),
        env={"TG_MCP_FAIL_IF_EXISTS": "TG_TEST_FAIL_MARKER"},
        tool_prefix="t",
        trusted=False,
        connect_timeout_seconds=30,
        call_timeout_seconds=30,
    )


async def wait_for(predicate, *, seconds: float = 15.0) -> None:
    """Wait (not a timing assertion) until ``predicate()`` is true; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - files and ports have no event to await
            await asyncio.sleep(0.05)


# --- discovery ----------------------------------------------------------------------


async def test_everything_tools_are_discovered_with_prefix_schema_and_hints(everything):
    async with mcp_session(everything) as conn:
        tools = {t.name: t for t in await conn.list_tools()}

    for expected in ("ev.echo", "ev.get-sum", "ev.get-tiny-image", "ev.gzip-file-as-resource"):
        assert expected in tools
    get_sum = tools["ev.get-sum"]
    assert get_sum.server == "everything"
    assert get_sum.remote_name == "get-sum"
    assert get_sum.title == "Get Sum Tool"
    assert get_sum.input_schema["type"] == "object"
    assert set(get_sum.input_schema["required"]) == {"a", "b"}
    assert get_sum.hints.read_only_hint is True
    assert get_sum.hints.destructive_hint is False
    assert get_sum.hints.idempotent_hint is True
    assert get_sum.hints.open_world_hint is False
    assert get_sum.gate_default() == "allow"  # read-only tool of a trusted server

    gzip = tools["ev.gzip-file-as-resource"]
    assert gzip.hints.read_only_hint is False
    assert gzip.hints.open_world_hint is True
    assert gzip.gate_default() == "ask"
    assert gzip.always_allow_permitted() is True  # not destructive, trusted server
    assert gzip.as_dict()["hints"]["destructive_hint"] is False


async def test_absent_annotations_take_spec_defaults_and_untrusted_server_asks(ours):
    async with mcp_session(ours) as conn:
        tools = {t.name: t for t in await conn.list_tools()}

    # No annotations at all on wait_for_cancel: the MCP spec defaults apply.
    bare = tools["t.wait_for_cancel"].hints
    assert (bare.read_only_hint, bare.destructive_hint) == (False, True)
    assert (bare.idempotent_hint, bare.open_world_hint) == (False, True)
    # echo claims read-only, but the server is not trusted: the gate still asks.
    echo = tools["t.echo"]
    assert echo.hints.read_only_hint is True
    assert echo.trusted is False
    assert echo.gate_default() == "ask"
    assert echo.always_allow_permitted() is False


async def test_tool_list_pagination_is_followed(ours):
    # Our server hands out two tools per page.
    async with mcp_session(ours) as conn:
        names = {t.remote_name for t in await conn.list_tools()}
    assert names == {"echo", "crash", "wait_for_cancel", "count", "add_tool"}


# --- calls and results ---------------------------------------------------------------


async def test_call_returns_text_and_results_convert_for_model_and_chat(everything):
    async with mcp_session(everything) as conn:
        echoed = await conn.call_tool("echo", {"message": "hello <b>"})
        image = await conn.call_tool("get-tiny-image", {})
        links = await conn.call_tool("get-resource-links", {"count": 2})
        structured = await conn.call_tool("get-structured-content", {"location": "Chicago"})
        embedded = await conn.call_tool("get-resource-reference", {})

    text, is_error = result_to_text(echoed)
    assert is_error is False
    assert "hello <b>" in text
    assert "hello &lt;b&gt;" in result_to_html(echoed)

    text, _ = result_to_text(image)
    assert "[image: image/png, " in text
    html = result_to_html(image)
    assert '<img class="mcp-image" src="data:image/png;base64,' in html

    text, _ = result_to_text(links)
    assert text.count("[resource: demo://resource/dynamic/") == 2
    assert "<code>demo://resource/dynamic/" in result_to_html(links)  # not an http(s) link

    assert structured.structured_content is not None
    assert "temperature" in structured.structured_content
    text, _ = result_to_text(structured)
    assert "temperature" in text

    text, _ = result_to_text(embedded)
    assert "[embedded resource: demo://resource/" in text

    # The stored form round-trips.
    assert MCPCallResult.from_dict(image.to_dict()) == image


async def test_is_error_result_from_time_server(time_server):
    async with mcp_session(time_server) as conn:
        bad = await conn.call_tool("get_current_time", {"timezone": "Mars/Olympus"})
        good = await conn.call_tool("get_current_time", {"timezone": "Europe/Paris"})

    text, is_error = result_to_text(bad)
    assert is_error is True
    assert "Mars/Olympus" in text
    assert "mcp-result--error" in result_to_html(bad)
    assert good.is_error is False
    assert good.structured_content["timezone"] == "Europe/Paris"


async def test_arguments_are_validated_before_the_call(everything):
    async with mcp_session(everything) as conn:
        with pytest.raises(MCPInvalidArguments, match="get-sum"):
            await conn.call_tool("get-sum", {"a": "one", "b": 2})
        # Unvalidated, the server itself answers with isError.
        result = await conn.call_tool("get-sum", {"a": "one", "b": 2}, validate=False)
        assert result.is_error is True
        ok = await conn.call_tool("get-sum", {"a": 1, "b": 2})
    assert "3" in result_to_text(ok)[0]


# --- progress, timeout, cancellation ----------------------------------------------------


async def test_progress_from_long_running_tool(everything):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async with mcp_session(everything) as conn:
        result = await conn.call_tool(
            "trigger-long-running-operation",
            {"duration": 1, "steps": 4},
            on_progress=on_progress,
        )
    assert result.is_error is False
    assert len(seen) >= 2
    assert [p for p, _, _ in seen] == [1, 2, 3, 4]
    assert all(total == 4 for _, total, _ in seen)


async def test_progress_messages_on_modern_protocol(ours):
    seen = []

    async def on_progress(progress, total, message):
        seen.append(message)

    async with mcp_session(ours) as conn:
        await conn.call_tool("count", {"steps": 3}, on_progress=on_progress)
    assert seen == ["step 1", "step 2", "step 3"]


async def test_timeout_cancels_the_call_and_connection_stays_usable(everything):
    async with mcp_session(everything) as conn:
        with pytest.raises(MCPTimeout, match="timed out"):
            await conn.call_tool(
                "trigger-long-running-operation",
                {"duration": 60, "steps": 60},
                timeout_seconds=1,
            )
        assert conn.healthy
        result = await conn.call_tool("echo", {"message": "still here"})
    assert "still here" in result_to_text(result)[0]


async def test_timeout_sends_mcp_cancellation(ours, tmp_path):
    marker = tmp_path / "cancelled"
    async with mcp_session(ours) as conn:
        with pytest.raises(MCPTimeout):
            await conn.call_tool("wait_for_cancel", {"marker": str(marker)}, timeout_seconds=3)
        assert marker.with_name("cancelled.started").is_file()
        # The server's handler was interrupted by notifications/cancelled.
        await wait_for(marker.exists)
        assert marker.read_text() == "cancelled"
        assert (await conn.call_tool("echo", {"text": "after"})).is_error is False


async def test_cancel_event_cancels_the_call(ours, tmp_path):
    marker = tmp_path / "cancelled"
    stop = asyncio.Event()
    async with mcp_session(ours) as conn:
        call = asyncio.create_task(
            conn.call_tool("wait_for_cancel", {"marker": str(marker)}, cancel_event=stop)
        )
        await wait_for(Path(f"{marker}.started").exists)  # the server is running the call
        stop.set()
        with pytest.raises(MCPCancelled):
            await call
        await wait_for(marker.exists)
        assert conn.healthy
        with pytest.raises(MCPCancelled):  # already set: nothing is sent
            await conn.call_tool("echo", {"text": "x"}, cancel_event=stop)


# --- crashes, health, reconnect ------------------------------------------------------------


async def test_server_exiting_mid_call_marks_unhealthy_then_reconnects(ours):
    conn = MCPConnection(ours, reconnect_initial_seconds=0.1)
    try:
        await conn.start()
        assert conn.healthy and conn.connect_count == 1
        with pytest.raises(MCPUnavailable, match="closed during the call to 'crash'"):
            await conn.call_tool("crash", {})
        assert conn.healthy is False
        assert "closed during" in (conn.last_error or "")
        # The supervisor restarts the server with backoff.
        assert await conn.wait_ready(20)
        assert conn.connect_count == 2
        result = await conn.call_tool("echo", {"text": "back"})
        assert result_to_text(result)[0] == "back"
    finally:
        await conn.close()
    assert conn.state == "closed"


async def test_server_that_fails_to_start_is_unhealthy_and_recovers(ours, fail_marker):
    fail_marker.write_text("x")
    conn = MCPConnection(ours, reconnect_initial_seconds=0.1, reconnect_max_seconds=0.5)
    try:
        await conn.start(raise_on_failure=False)
        assert conn.healthy is False
        assert "refusing to start" in (conn.last_error or "")  # the server's stderr
        with pytest.raises(MCPUnavailable, match="refusing to start"):
            await conn.list_tools()
        with pytest.raises(MCPUnavailable):
            await conn.call_tool("echo", {"text": "x"})
        fail_marker.unlink()
        assert await conn.wait_ready(20)
        assert conn.last_error is None
        assert [t.name for t in await conn.list_tools()][:1] == ["t.echo"]
    finally:
        await conn.close()


async def test_missing_command_and_unset_secret_variable_are_clear_errors(monkeypatch):
    missing = MCPServerConfig(name="nope", command="/nonexistent/mcp-server")
    with pytest.raises(MCPUnavailable, match="nope"):
        async with mcp_session(missing):
            pass

    monkeypatch.setenv("TG_TEST_SECRET", "s3cret-value")
    monkeypatch.delenv("TG_TEST_UNSET", raising=False)
    needs_secret = MCPServerConfig(
        name="secretive", command=sys.executable, env={"API_KEY": "TG_TEST_UNSET"}
    )
    with pytest.raises(MCPUnavailable, match="TG_TEST_UNSET") as excinfo:
        async with mcp_session(needs_secret):
            pass
    assert "s3cret" not in str(excinfo.value)


# --- list refresh ------------------------------------------------------------------------


async def test_list_changed_notification_invalidates_cache_modern_protocol(ours):
    changed = asyncio.Event()

    async def on_tools_changed(connection):
        changed.set()

    async with mcp_session(ours, on_tools_changed=on_tools_changed) as conn:
        assert conn.protocol_version == "2026-07-28"  # delivered via subscriptions/listen
        before = {t.remote_name for t in await conn.list_tools()}
        assert "fresh" not in before
        await conn.call_tool("add_tool", {"name": "fresh"})
        await asyncio.wait_for(changed.wait(), 15)
        after = {t.remote_name for t in await conn.list_tools()}
        assert after == before | {"fresh"}
        result = await conn.call_tool("fresh", {})
        assert result_to_text(result)[0] == "I am fresh"
        refreshed = await conn.list_tools(refresh=True)
        assert {t.remote_name for t in refreshed} == after


async def test_list_changed_notification_from_everything_legacy_protocol(everything):
    # server-everything registers more tools after initialisation and announces it
    # with notifications/tools/list_changed (2025-11-25 protocol, no listen stream).
    changed = asyncio.Event()

    async def on_tools_changed(connection):
        changed.set()

    async with mcp_session(everything, on_tools_changed=on_tools_changed) as conn:
        assert conn.protocol_version == "2025-11-25"
        await asyncio.wait_for(changed.wait(), 15)
        names = {t.remote_name for t in await conn.list_tools()}
        assert "simulate-research-query" in names
        assert {t.remote_name for t in await conn.list_tools(refresh=True)} == names


# --- pool and dispatch modes ------------------------------------------------------------------


async def test_pool_shares_one_connection_per_server_in_a_loop(time_server, ours):
    pool = mcp_pool()
    assert mcp_pool() is pool
    try:
        first, second = await asyncio.gather(pool.get(time_server), pool.get(time_server))
        assert first is second and first.healthy
        assert pool.status()["time"]["healthy"] is True
        edited = MCPServerConfig(
            name="time",
            command=time_server.command,
            args=time_server.args,
            tool_prefix="clock",
        )
        replaced = await pool.get(edited)
        assert replaced is not first
        assert first.state == "closed"
        assert {t.name for t in await replaced.list_tools()} >= {"clock.get_current_time"}
    finally:
        await pool.close_all()
    assert pool.status() == {}


def test_one_shot_sessions_in_fresh_event_loops_like_a_celery_task(time_server):
    async def task_body() -> str:
        async with mcp_session(time_server) as conn:
            result = await conn.call_tool(
                "convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
            )
        return result_to_text(result)[0]

    # Each Celery task runs its own asyncio.run; nothing may leak between loops.
    assert "Asia/Tokyo" in asyncio.run(task_body())
    assert "Asia/Tokyo" in asyncio.run(task_body())


# --- Streamable HTTP ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def everything_http(everything_bin):
    """server-everything over Streamable HTTP on a free port; yields its MCP URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(everything_bin), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("server-everything did not start listening")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_streamable_http_transport_with_header_indirection(everything_http, monkeypatch):
    monkeypatch.setenv("TG_TEST_HTTP_TOKEN", "Bearer test-token")
    config = MCPServerConfig(
        name="everything-http",
        transport="http",
        url=everything_http,
        headers={"Authorization": "TG_TEST_HTTP_TOKEN"},
        tool_prefix="evh",
    )
    async with mcp_session(config) as conn:
        names = {t.name for t in await conn.list_tools()}
        assert "evh.echo" in names
        result = await conn.call_tool("echo", {"message": "over http"})
    assert "over http" in result_to_text(result)[0]
