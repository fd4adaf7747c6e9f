"""One live MCP session per server per process, supervised and reconnected.

Design (why it looks like this):

* The SDK's transports (``stdio_client``, ``streamable_http_client``) and
  ``ClientSession`` are async context managers that open anyio task groups and
  cancel scopes. anyio requires a cancel scope to be exited by the task that
  entered it, so a connection cannot be "opened" in one request's task and
  "closed" in another's. ``MCPConnection`` therefore runs a long-lived
  *supervisor* task that enters the transport and the session, initialises,
  lists the tools, and then parks until the connection ends or ``close()`` is
  called; it alone exits those contexts. Other tasks only *send* on the open
  session (``call_tool``/``list_tools``), which the SDK allows from any task of
  the same event loop.
* A crash is noticed without polling: the transport's read stream is wrapped,
  and its end of stream (server exited, pipe closed) wakes the supervisor,
  which marks the connection unhealthy (with the tail of the server's stderr)
  and reconnects after an exponential backoff (``reconnect_initial_seconds``
  doubling up to ``reconnect_max_seconds``). Calls made while the server is
  down raise ``MCPUnavailable`` at once; nothing ever raises into the event
  loop outside a call.
* Timeouts and cancellation use the SDK's own request abandonment: when a
  ``tools/call`` times out or the awaiting task is cancelled, the SDK's
  ``JSONRPCDispatcher.send_raw_request`` writes ``notifications/cancelled`` for
  that request id (MCP spec, basic/utilities/cancellation) before raising.
* Everything here lives in one process and one event loop. A connection must be
  created, used and closed inside the event loop that runs it (see
  ``tools.mcp.pool`` for how the web and worker processes hold theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import IO, Any, Literal

import anyio
import anyio.abc
import mcp_types
from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tools.mcp.config import MCPServerConfig
from tools.mcp.errors import (
    MCPCancelled,
    MCPClientError,
    MCPConfigError,
    MCPInvalidArguments,
    MCPProtocolError,
    MCPTimeout,
    MCPUnavailable,
)
from tools.mcp.types import MCPCallResult, MCPToolHints, MCPToolInfo

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
ToolsChangedCallback = Callable[["MCPConnection"], Awaitable[None]]
# (connection, healthy, reason): awaited in a task of its own on each up/down change.
HealthCallback = Callable[["MCPConnection", bool, "str | None"], Awaitable[None]]
State = Literal["idle", "connecting", "ready", "backoff", "closed"]

CLIENT_INFO = mcp_types.Implementation(name="tollgate", version="0.1.0")
# A paginator that never ends must not hang discovery.
MAX_TOOL_PAGES = 100
STDERR_TAIL_BYTES = 2000
CLOSE_TIMEOUT_SECONDS = 15.0


class _EOFWatchingReadStream:
    """Wraps a transport read stream; sets ``closed`` when the server side ends.

    The SDK's dispatcher reads with ``async for``; its loop ending is the only
    signal that a stdio server exited, so we observe it here.
    """

    def __init__(self, inner: Any, closed: asyncio.Event) -> None:
        self._inner = inner
        self._closed = closed

    def __getattr__(self, name: str) -> Any:  # e.g. ``last_context`` on context streams
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._closed.set()
            raise

    def __aiter__(self) -> _EOFWatchingReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed.set()
        await self._inner.aclose()

    async def __aenter__(self) -> _EOFWatchingReadStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    leaf = _leaf(exc)
    if isinstance(leaf, MCPError):
        return f"{leaf.error.message} (code {leaf.error.code})"
    text = str(leaf) or type(leaf).__name__
    if isinstance(leaf, FileNotFoundError):
        return f"command not found: {leaf.filename or text}"
    return f"{type(leaf).__name__}: {text}"


def _tool_info(config: MCPServerConfig, tool: mcp_types.Tool) -> MCPToolInfo:
    hints = MCPToolHints.from_annotations(tool.annotations)
    return MCPToolInfo(
        server=config.name,
        remote_name=tool.name,
        name=f"{config.tool_prefix}.{tool.name}",
        title=tool.title or hints.title or tool.name,
        description=tool.description or "",
        input_schema=dict(tool.input_schema or {"type": "object"}),
        output_schema=dict(tool.output_schema) if tool.output_schema else None,
        hints=hints,
        trusted=config.trusted,
    )


def tool_arguments_validate(tool: MCPToolInfo, arguments: dict[str, Any]) -> None:
    """Check ``arguments`` against the tool's input JSON Schema.

    Raises:
        MCPInvalidArguments: with the first (best-matching) violation and its path.
            A schema that is itself invalid is not enforced (the server validates).
    """
    if not isinstance(arguments, dict):
        raise MCPInvalidArguments(f"Arguments for {tool.name} must be a JSON object.")
    schema = tool.input_schema
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError:
        logger.warning("MCP tool %s has an invalid input schema; not validating", tool.name)
        return
    error = best_match(cls(schema).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise MCPInvalidArguments(f"Invalid arguments for {tool.name} at {where}: {error.message}")


class MCPConnection:
    """A supervised, reconnecting session with one MCP server, bound to one event loop.

    Create it, ``await start()``, then ``list_tools()`` / ``call_tool()`` from any
    task of the same loop; ``await close()`` when done. Use ``mcp_session()`` for a
    one-shot scope and ``mcp_pool()`` for long-lived sharing.

    Callbacks: ``on_tools_changed(connection)`` is awaited inside the session's
    receive loop when ``notifications/tools/list_changed`` arrives, so it must not
    await a request on this connection (start a task for that);
    ``on_health_change(connection, healthy, reason)`` runs in a task of its own
    whenever the connection comes up or goes down (reason: why it is down).

    Attributes (read-only):
        config: the server's ``MCPServerConfig``.
        healthy: True while the session is initialised and the server is up.
        last_error: why it is (or last was) down, or None.
        state: ``idle``, ``connecting``, ``ready``, ``backoff`` (waiting to retry) or ``closed``.
        protocol_version: negotiated MCP protocol version, or None.
    """

    def __init__(
        self,
        config: MCPServerConfig,
        *,
        on_tools_changed: ToolsChangedCallback | None = None,
        on_health_change: HealthCallback | None = None,
        reconnect: bool = True,
        reconnect_initial_seconds: float = 0.5,
        reconnect_max_seconds: float = 60.0,
    ) -> None:
        self.config = config
        self._on_tools_changed = on_tools_changed
        self._on_health_change = on_health_change
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._reconnect = reconnect
        self._backoff_initial = reconnect_initial_seconds
        self._backoff_max = reconnect_max_seconds
        self._healthy = False
        self._last_error: str | None = None
        self._state: State = "idle"
        self._client: Client | None = None
        self._tools: list[MCPToolInfo] | None = None
        self._tools_generation = 0
        self._last_tools: list[MCPToolInfo] = []
        self._protocol_version: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # asyncio primitives bind to a loop on first use, not on creation.
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ended: asyncio.Event | None = None
        self._attempt_scope: anyio.CancelScope | None = None
        self._tools_lock = asyncio.Lock()
        self._errlog: IO[bytes] | None = None
        self.connect_count = 0

    # --- state -------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def state(self) -> State:
        return self._state

    @property
    def protocol_version(self) -> str | None:
        return self._protocol_version

    @property
    def tools_snapshot(self) -> list[MCPToolInfo]:
        """The last tool list fetched (possibly stale; kept while the server is down)."""
        return list(self._last_tools)

    def __repr__(self) -> str:
        return f"<MCPConnection {self.config.name} {self._state}>"

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, *, raise_on_failure: bool = True) -> None:
        """Start the supervisor (once) and wait for the first connection attempt to settle.

        Idempotent: a second call waits for the same attempt. The attempt is bounded
        by ``config.connect_timeout_seconds``.

        Raises:
            MCPUnavailable: the first attempt failed and ``raise_on_failure`` is True.
                The supervisor keeps retrying with backoff (unless ``reconnect=False``).
            RuntimeError: called from a different event loop than the first call.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._state = "connecting"
            self._supervisor = loop.create_task(
                self._supervise(), name=f"mcp-supervisor:{self.config.name}"
            )
        elif self._loop is not loop:
            raise RuntimeError(
                f"MCPConnection {self.config.name!r} belongs to another event loop; "
                "create connections inside the loop that uses them."
            )
        if self._state == "closed":
            raise MCPUnavailable(self.config.name, "the connection was closed")
        await self._settled.wait()
        if not self._healthy and raise_on_failure:
            raise MCPUnavailable(self.config.name, self._last_error or "not connected")

    async def close(self) -> None:
        """Stop the supervisor and the server (stdio: close stdin, then terminate). Idempotent."""
        self._closing = True
        self._healthy = False
        self._state = "closed"
        if self._supervisor is None:
            return
        self._stop.set()
        self._wake.set()
        if self._attempt_scope is not None and not self._client:
            self._attempt_scope.cancel()  # still connecting: abandon the attempt
        if self._supervisor.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._supervisor), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor

    async def reconnect_now(self) -> None:
        """Skip the current backoff wait and retry at once (e.g. from an admin "refresh")."""
        if self._wake is not None:
            self._wake.set()

    async def wait_ready(self, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` for the connection to be healthy; return whether it is."""
        with anyio.move_on_after(timeout_seconds):
            while not self._healthy and self._state != "closed":
                await self._settled.wait()
                if not self._healthy:
                    await anyio.sleep(0.05)
        return self._healthy

    def _mark_down(self, reason: str) -> None:
        changed = self._healthy or self._last_error != reason
        if changed:
            logger.warning("MCP server %s is down: %s", self.config.name, reason)
        self._healthy = False
        self._last_error = reason
        if changed:
            # The bridge's callback records mcp.server_down (audit + admin status).
            self._notify_health(False, reason)

    def _notify_health(self, healthy: bool, reason: str | None) -> None:
        """Run ``on_health_change`` in a task of its own: it may touch the database,
        and nothing it does (or raises) may disturb the connection."""
        callback = self._on_health_change
        if callback is None:
            return

        async def run() -> None:
            try:
                await callback(self, healthy, reason)
            except Exception:
                logger.exception("on_health_change callback for %s failed", self.config.name)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:  # no running loop (cannot happen inside the supervisor)
            return
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    def _stderr_tail(self) -> str:
        if self._errlog is None:
            return ""
        try:
            self._errlog.flush()
            size = self._errlog.seek(0, 2)
            self._errlog.seek(max(0, size - STDERR_TAIL_BYTES))
            return self._errlog.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _with_stderr(self, reason: str) -> str:
        tail = self._stderr_tail()
        return f"{reason}; stderr: {tail}" if tail else reason

    async def _supervise(self) -> None:
        delay = self._backoff_initial
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                self._state = "connecting"
                self._settled.clear()
                connected_at: float | None = None
                try:
                    connected_at = await self._connect_and_serve()
                    # A failed call may already have recorded a more precise reason.
                    if not self._closing and self._last_error is None:
                        self._mark_down(self._with_stderr("the server closed the connection"))
                except Exception as exc:
                    if not self._closing:
                        self._mark_down(self._with_stderr(_describe(exc)))
                finally:
                    self._client = None
                    self._healthy = False
                    self._protocol_version = None
                    self._tools = None
                    if self._errlog is not None:
                        self._errlog.close()
                        self._errlog = None
                    self._settled.set()
                if self._closing or not self._reconnect:
                    break
                if connected_at is not None and loop.time() - connected_at >= self._backoff_max:
                    delay = self._backoff_initial
                self._state = "backoff"
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, self._backoff_max)
        except asyncio.CancelledError:
            raise
        except BaseException:  # never let the supervisor die silently
            logger.exception("MCP supervisor for %s crashed", self.config.name)
            self._mark_down("internal error in the MCP supervisor")
        finally:
            self._healthy = False
            if self._closing or not self._reconnect:
                self._state = "closed"
            self._settled.set()

    def _transport(self, ended: asyncio.Event) -> Any:
        config = self.config
        if config.transport == "stdio":
            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env=config.resolved_env() or None,
                cwd=config.cwd,
            )
            self._errlog = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the supervisor
            inner = stdio_client(params, errlog=self._errlog)  # type: ignore[arg-type]
        else:
            inner = _http_transport(config.url, config.resolved_headers())

        @asynccontextmanager
        async def watched() -> AsyncIterator[Any]:
            async with inner as (read, write):
                yield _EOFWatchingReadStream(read, ended), write

        return watched()

    async def _connect_and_serve(self) -> float | None:
        """One connection's life. Returns the loop time it became ready (None if never)."""
        config = self.config
        ended = asyncio.Event()
        self._ended = ended
        connected_at: float | None = None
        try:
            transport = self._transport(ended)
        except MCPConfigError as exc:
            raise MCPClientError(str(exc)) from exc
        client = Client(
            transport,
            mode="auto",
            cache=None,
            read_timeout_seconds=config.connect_timeout_seconds,
            message_handler=self._on_message,
            client_info=CLIENT_INFO,
        )
        with anyio.CancelScope() as scope:
            self._attempt_scope = scope
            scope.deadline = anyio.current_time() + config.connect_timeout_seconds
            async with client, anyio.create_task_group() as tg:
                self._protocol_version = client.protocol_version
                if self._wants_listen(client):
                    # Subscribe before the first listing, so no change can fall between.
                    await tg.start(self._listen, client)
                tools = await self._fetch_tools(client)
                scope.deadline = math.inf
                self._client = client
                self._set_tools(tools, self._tools_generation)
                self._healthy = True
                self._last_error = None
                self._state = "ready"
                self.connect_count += 1
                connected_at = asyncio.get_running_loop().time()
                self._settled.set()
                logger.info(
                    "MCP server %s ready (%s, %d tools)",
                    config.name,
                    self._protocol_version,
                    len(tools),
                )
                # The bridge's callback records mcp.server_up (audit + admin status).
                self._notify_health(True, None)

                async def cancel_when(event: asyncio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_when, ended)
                tg.start_soon(cancel_when, self._stop)
        self._attempt_scope = None
        if scope.cancelled_caught and connected_at is None and not self._closing:
            raise MCPClientError(
                f"the server did not finish starting within {config.connect_timeout_seconds:g} s"
            )
        return connected_at

    @staticmethod
    def _wants_listen(client: Client) -> bool:
        # At 2026-07-28 list_changed notifications ride only on a subscriptions/listen
        # stream; before that the server sends them unprompted.
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return False
        tools_cap = client.server_capabilities.tools
        return bool(tools_cap and tools_cap.list_changed)

    async def _listen(
        self, client: Client, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # Frames on the listen stream are also delivered to message_handler, which
        # does the invalidation; this task only keeps the subscription open.
        started = False
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                task_status.started()
                started = True
                async for _event in subscription:
                    pass
        except Exception as exc:
            logger.info("MCP server %s: tools listen stream ended: %s", self.config.name, exc)
        finally:
            if not started:
                task_status.started()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.warning("MCP server %s transport error: %s", self.config.name, message)
            return
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._tools = None
            self._tools_generation += 1
            logger.info("MCP server %s: tool list changed", self.config.name)
            if self._on_tools_changed is not None:
                try:
                    await self._on_tools_changed(self)
                except Exception:
                    logger.exception("on_tools_changed callback for %s failed", self.config.name)

    # --- tools ---------------------------------------------------------------------

    def _set_tools(self, tools: list[MCPToolInfo], generation: int) -> None:
        self._last_tools = tools
        # A list_changed that arrived while we were fetching makes this list stale.
        if generation == self._tools_generation:
            self._tools = tools

    async def _fetch_tools(self, client: Client) -> list[MCPToolInfo]:
        tools: list[MCPToolInfo] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                if tool.name in seen:
                    continue
                seen.add(tool.name)
                tools.append(_tool_info(self.config, tool))
            cursor = page.next_cursor
            if not cursor:
                break
        else:
            logger.warning(
                "MCP server %s: stopped after %d tool pages", self.config.name, MAX_TOOL_PAGES
            )
        return tools

    async def _ready_client(self) -> Client:
        if self._loop is None:
            raise MCPUnavailable(self.config.name, "not started")
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError(f"MCPConnection {self.config.name!r} belongs to another event loop.")
        if self._state == "connecting" and not self._healthy:
            await self._settled.wait()  # bounded by the connect timeout
        client = self._client
        if not self._healthy or client is None:
            raise MCPUnavailable(self.config.name, self._last_error or self._state)
        return client

    def _connection_lost(self, during: str) -> MCPUnavailable:
        reason = self._with_stderr(f"the connection closed during {during}")
        self._mark_down(reason)
        if self._ended is not None:
            self._ended.set()  # let the supervisor tear down and reconnect
        return MCPUnavailable(self.config.name, reason)

    async def list_tools(self, *, refresh: bool = False) -> list[MCPToolInfo]:
        """The server's tools as ``MCPToolInfo`` (prefixed names, schemas, hints).

        Cached per connection; the cache is dropped on ``notifications/tools/list_changed``
        and on reconnect. ``refresh=True`` fetches again (all pages).

        Raises:
            MCPUnavailable: the server is down.
            MCPProtocolError: the server answered ``tools/list`` with an error.
        """
        client = await self._ready_client()
        if self._tools is not None and not refresh:
            return list(self._tools)
        async with self._tools_lock:
            if self._tools is not None and not refresh:
                return list(self._tools)
            generation = self._tools_generation
            try:
                tools = await self._fetch_tools(client)
            except MCPError as exc:
                if exc.error.code == mcp_types.CONNECTION_CLOSED:
                    raise self._connection_lost("tools/list") from exc
                raise MCPProtocolError(
                    self.config.name, "tools/list", exc.error.code, exc.error.message
                ) from exc
            self._set_tools(tools, generation)
            return list(tools)

    async def get_tool(self, remote_name: str) -> MCPToolInfo | None:
        """The listed tool named ``remote_name`` (unprefixed), or None."""
        for tool in await self.list_tools():
            if tool.remote_name == remote_name:
                return tool
        return None

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout_seconds: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel_event: asyncio.Event | None = None,
        validate: bool = True,
    ) -> MCPCallResult:
        """Call the tool ``name`` (the server's own name, without the prefix).

        Args:
            arguments: JSON object of arguments; validated against the tool's input
                schema first when ``validate`` (nothing is sent if invalid).
            timeout_seconds: overall bound; default ``config.call_timeout_seconds``.
                Progress notifications do not extend it.
            on_progress: awaited with ``(progress, total, message)`` for each
                ``notifications/progress`` the server sends for this call; its
                exceptions are logged, never raised into the call.
            cancel_event: when set, the call is abandoned and MCP
                ``notifications/cancelled`` is sent (stopping a run).

        Returns:
            ``MCPCallResult``; a tool-level failure comes back with ``is_error=True``.

        Raises:
            MCPUnavailable: the server is down, or it exited during the call
                (the connection is marked unhealthy and reconnects with backoff).
            MCPTimeout: the timeout passed; cancellation was sent; the session stays usable.
            MCPCancelled: ``cancel_event`` was set; cancellation was sent.
            MCPInvalidArguments: arguments do not match the input schema.
            MCPProtocolError: the server answered with a JSON-RPC error (e.g. unknown tool).
        """
        arguments = {} if arguments is None else arguments
        client = await self._ready_client()
        if validate:
            tool = await self.get_tool(name)
            if tool is not None:
                tool_arguments_validate(tool, arguments)
        if cancel_event is not None and cancel_event.is_set():
            raise MCPCancelled(self.config.name, name)
        timeout = self.config.call_timeout_seconds if timeout_seconds is None else timeout_seconds

        progress_callback = None
        if on_progress is not None:
            callback = on_progress

            async def progress_callback(
                progress: float, total: float | None, message: str | None
            ) -> None:
                try:
                    await callback(progress, total, message)
                except Exception:
                    logger.exception("on_progress for %s.%s failed", self.config.name, name)

        # AUDIT: mcp.tool_call {"server": name, "tool": name} (if the lead wants MCP-level audit)
        watcher: asyncio.Task[None] | None = None
        result: mcp_types.CallToolResult | None = None
        with anyio.CancelScope() as scope:
            if cancel_event is not None:
                watcher = asyncio.get_running_loop().create_task(_cancel_on(cancel_event, scope))
            try:
                result = await client.call_tool(
                    name,
                    arguments,
                    read_timeout_seconds=timeout,
                    progress_callback=progress_callback,
                )
            except MCPError as exc:
                code = exc.error.code
                if code == mcp_types.REQUEST_TIMEOUT:
                    raise MCPTimeout(self.config.name, name, timeout) from exc
                if code == mcp_types.CONNECTION_CLOSED:
                    raise self._connection_lost(f"the call to {name!r}") from exc
                raise MCPProtocolError(self.config.name, name, code, exc.error.message) from exc
            except RuntimeError as exc:  # output failed the tool's declared output schema
                raise MCPProtocolError(
                    self.config.name, name, mcp_types.INTERNAL_ERROR, str(exc)
                ) from exc
            finally:
                if watcher is not None:
                    watcher.cancel()
        if scope.cancelled_caught or result is None:
            raise MCPCancelled(self.config.name, name)
        return MCPCallResult.from_sdk(server=self.config.name, tool=name, result=result)


async def _cancel_on(event: asyncio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    async with (
        create_mcp_http_client(headers=headers or None) as http_client,
        streamable_http_client(url, http_client=http_client) as streams,
    ):
        yield streams


@asynccontextmanager
async def mcp_session(
    config: MCPServerConfig, *, on_tools_changed: ToolsChangedCallback | None = None
) -> AsyncIterator[MCPConnection]:
    """A one-shot connection: start the server, yield the connection, stop the server.

    For code whose event loop ends with the work, such as a Celery task that runs
    ``asyncio.run`` per task. No reconnects: if the server dies inside the block,
    calls raise ``MCPUnavailable``.

    Raises:
        MCPUnavailable: the server did not start (the error says why).
    """
    connection = MCPConnection(config, on_tools_changed=on_tools_changed, reconnect=False)
    try:
        await connection.start()
        yield connection
    finally:
        await connection.close()
