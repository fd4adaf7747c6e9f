"""The tool registry: tools declared in Python, described to the model as JSON Schema.

A tool is a :class:`ToolSpec`: a dotted name (``notes.delete``), a description,
a JSON Schema for its arguments, MCP-style behaviour hints, limits, and an
async ``handler(arguments, ctx)``. Most tools are declared with the
:func:`tool` decorator, which derives the schema from the function's type hints
with pydantic (``create_model`` + ``model_json_schema``) and validates and
coerces the arguments with the same model before calling the function.

The hints follow the Model Context Protocol's ``ToolAnnotations``
(MCP specification 2025-06-18, ``schema.ts``;
https://modelcontextprotocol.io/specification/2025-06-18/server/tools):

- ``read_only`` (``readOnlyHint``, default false): the tool does not modify its
  environment.
- ``destructive`` (``destructiveHint``, default true): the tool may perform
  destructive updates; false means only additive updates. Meaningful only when
  not read-only, so the decorator defaults it to ``not read_only``.
- ``idempotent`` (``idempotentHint``, default false): calling it again with the
  same arguments has no additional effect. The decorator defaults it to
  ``read_only`` (a tool that changes nothing is trivially idempotent).
- ``open_world`` (``openWorldHint``, default true): the tool may interact with
  an open world of external entities (web fetch) rather than a closed domain
  (the user's notes).

As in MCP, hints are descriptions, not guarantees; the approval gate uses them
for its defaults, admins decide the rest.
"""

from __future__ import annotations

import inspect
import re
import threading
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from pydantic import ConfigDict, ValidationError, create_model

# OpenAI (and most OpenAI-compatible servers) require function names to match this.
WIRE_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Dotted names; each segment is wire-safe, so replacing "." by "__" stays wire-safe.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RESULT_CHARS = 20_000

# The one executor of our own, for a correctness need rather than speed: sync
# handlers run here, not in the event loop's default executor, so a handler
# abandoned at its timeout (its thread cannot be killed) does not hold up the
# loop's shutdown (``asyncio.run`` and ``async_to_sync`` wait for the default
# executor's threads) nor take one of the threads the loop's database calls use.
_SYNC_HANDLER_EXECUTOR = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tool-handler")

Handler = Callable[[dict[str, Any], "ToolContext"], Awaitable[Any]]


class ToolError(Exception):
    """Raised by a handler for an expected failure ("no note named 'x'").

    The executor turns it into an error result whose text is ``str(exc)``,
    without the exception class name, so the message should be written for
    the model to read.
    """


class ToolArgumentsInvalid(ValueError):
    """Arguments that are not JSON, not an object, or do not match the schema.

    ``str(exc)`` is a message fit to send back to the model as the tool result;
    ``errors`` lists the individual problems.
    """

    def __init__(self, message: str, *, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class ToolAlreadyRegistered(ValueError):
    """A tool with that name (or the same wire name) is already registered."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Who and what a tool call belongs to; passed to handlers that ask for ``ctx``.

    All ids are primary keys. ``conversation_id`` and ``run_id`` may be ``None``
    when a tool runs outside a conversation (tests, admin checks).
    """

    user_id: int
    conversation_id: int | None = None
    run_id: int | None = None
    invocation_id: int | None = None
    # Awaitable check "has the run been stopped?", set by ``invocation_execute`` when the
    # call belongs to a run (``tools.signals.run_cancel_query``); a long-running
    # handler polls it (MCP tools poll every ~0.5 s and send notifications/cancelled).
    cancel_requested: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """What a handler may return instead of a plain value, to say more than the text.

    ``text`` is the result the model reads; ``is_error`` marks it as a tool-level
    failure (the invocation ends ``failed`` with this text); ``metadata`` is merged
    into ``ToolInvocation.metadata`` (JSON-able; e.g. an MCP result for the chat).
    """

    text: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, eq=False)
class ToolSpec:
    """One registered tool.

    ``handler`` is an async callable ``handler(arguments: dict, ctx: ToolContext)``
    returning anything JSON-serialisable (a ``str`` is used as is); it raises
    :class:`ToolError` for expected failures and :class:`ToolArgumentsInvalid`
    when the arguments do not validate. ``parameters`` is a JSON Schema object
    (``{"type": "object", ...}``). ``timeout_seconds`` bounds one execution
    (seconds); ``max_result_chars`` bounds the stored result (characters).
    ``enabled_by_default`` is the ``Tool.enabled`` value written when
    ``tools_sync`` first creates the row (admin choices are kept afterwards).
    ``source`` is ``"builtin"`` or ``"mcp:<server>"``. ``availability``, when
    set, is called by ``tools_sync`` and returns ``(True, "")`` or
    ``(False, reason)``; an unavailable tool is offered to no one and admin
    shows the reason. ``cost_usd_estimate`` is what one call of the tool itself
    costs, in US dollars (a paid API behind it), shown on approval cards and held
    against the user's budget when a call is approved; ``None`` (every built-in,
    every MCP tool: nothing they report says what a call costs) means no
    estimate, which is not $0.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler
    read_only: bool = False
    destructive: bool = True
    idempotent: bool = False
    open_world: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    source: str = "builtin"
    enabled_by_default: bool = True
    availability: Callable[[], tuple[bool, str]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    cost_usd_estimate: Decimal | None = None

    def __post_init__(self) -> None:
        if not TOOL_NAME_RE.match(self.name):
            raise ValueError(
                f"Tool name {self.name!r} is not valid: use dot-separated segments of "
                "letters, digits, '_' and '-' (for example 'notes.delete')."
            )
        if not WIRE_NAME_RE.match(self.wire_name):
            raise ValueError(
                f"Tool name {self.name!r} gives wire name {self.wire_name!r}, which is longer "
                "than the 64 characters providers accept."
            )
        if self.parameters.get("type") != "object":
            raise ValueError(f"Tool {self.name!r}: parameters must be a JSON Schema object.")
        if self.timeout_seconds <= 0 or self.max_result_chars <= 0:
            raise ValueError(f"Tool {self.name!r}: timeout and result limit must be positive.")
        if self.cost_usd_estimate is not None:
            # Frozen: the checked value replaces the given one (an int or str is accepted).
            object.__setattr__(self, "cost_usd_estimate", _usd(self.name, self.cost_usd_estimate))

    @property
    def wire_name(self) -> str:
        """The name sent to providers: ``notes.delete`` → ``notes__delete``.

        OpenAI function names must match ``^[a-zA-Z0-9_-]{1,64}$``.
        """
        return self.name.replace(".", "__")

    def openai_tool(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.wire_name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def hints(self) -> dict[str, bool]:
        """The MCP ``ToolAnnotations`` hints under their MCP names."""
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }


def _usd(name: str, value: Any) -> Decimal:
    """A tool's cost estimate as a finite, non-negative Decimal (never through a float)."""
    if isinstance(value, bool | float):
        raise ValueError(f"Tool {name!r}: cost_usd_estimate must be a Decimal, int or str.")
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"Tool {name!r}: cost_usd_estimate {value!r} is not a number.") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"Tool {name!r}: cost_usd_estimate must be a finite amount >= 0.")
    return amount


class ToolRegistry:
    """Tools known to this process, by name and by wire name. Thread-safe.

    Built-ins are registered when ``tools.builtin`` is imported (from
    ``ToolsConfig.ready``). Whether a user may use a tool is decided by the
    ``Tool`` rows (``tools.selectors.tools_for_user``), not here.

    Dynamic tools (``dynamic_register``) are resolved by name on demand instead:
    a family of names whose specs another app makes per run (an agent's
    ``handoff_to_<agent>``). They are never listed by ``all()`` nor offered by
    ``tools_for_user``; the app that offers them decides who may call them.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, ToolSpec] = {}
        self._by_wire: dict[str, ToolSpec] = {}
        self._dynamic: list[Callable[[str], ToolSpec | None]] = []
        self._lock = threading.Lock()
        #: Bumped by every register/unregister (caches of tool lists compare it).
        self.version = 0

    def register(self, spec: ToolSpec, *, replace: bool = False) -> ToolSpec:
        """Add ``spec``. Raises :class:`ToolAlreadyRegistered` on a name or
        wire-name clash unless ``replace`` is true (same name only)."""
        with self._lock:
            existing = self._by_name.get(spec.name)
            if existing is not None and not replace:
                raise ToolAlreadyRegistered(f"Tool {spec.name!r} is already registered.")
            clash = self._by_wire.get(spec.wire_name)
            if clash is not None and clash.name != spec.name:
                raise ToolAlreadyRegistered(
                    f"Tool {spec.name!r} has the same wire name as {clash.name!r}."
                )
            if existing is not None:
                self._by_wire.pop(existing.wire_name, None)
            self._by_name[spec.name] = spec
            self._by_wire[spec.wire_name] = spec
            self.version += 1
        return spec

    def unregister(self, name: str) -> ToolSpec | None:
        """Remove and return the tool called ``name``; ``None`` if unknown."""
        with self._lock:
            spec = self._by_name.pop(name, None)
            if spec is not None:
                self._by_wire.pop(spec.wire_name, None)
                self.version += 1
            return spec

    def dynamic_register(self, resolve: Callable[[str], ToolSpec | None]) -> None:
        """Add ``resolve(name)``: the spec of a dynamic tool called ``name`` (its wire
        name the same: no dots), or ``None`` for a name not of its family. Call once
        per process (``AppConfig.ready``); a resolver already added is not added again."""
        with self._lock:
            if resolve not in self._dynamic:
                self._dynamic.append(resolve)

    def _dynamic_get(self, name: str) -> ToolSpec | None:
        for resolve in self._dynamic:
            spec = resolve(name)
            if spec is not None:
                return spec
        return None

    def get(self, name: str) -> ToolSpec | None:
        """The tool called ``name`` (dotted), a dynamic one, or ``None``."""
        return self._by_name.get(name) or self._dynamic_get(name)

    def get_by_wire_name(self, wire: str) -> ToolSpec | None:
        """The tool whose ``wire_name`` is ``wire`` (a dynamic one's is its name), or ``None``."""
        return self._by_wire.get(wire) or self._dynamic_get(wire)

    def all(self) -> list[ToolSpec]:
        """Every registered tool, sorted by name."""
        with self._lock:
            return sorted(self._by_name.values(), key=lambda s: s.name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


registry = ToolRegistry()


def _is_context_param(name: str, annotation: Any) -> bool:
    return name == "ctx" or annotation is ToolContext


def _validation_message(name: str, exc: ValidationError) -> ToolArgumentsInvalid:
    errors = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        errors.append(f"{where}: {err['msg']}")
    return ToolArgumentsInvalid(
        f"Invalid arguments for tool {name}: " + "; ".join(errors), errors=errors
    )


def spec_from_function(
    fn: Callable[..., Any],
    *,
    name: str,
    description: str | None = None,
    read_only: bool = False,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    open_world: bool = True,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    enabled_by_default: bool = True,
    availability: Callable[[], tuple[bool, str]] | None = None,
    source: str = "builtin",
    cost_usd_estimate: Decimal | None = None,
) -> ToolSpec:
    """Build a :class:`ToolSpec` from a plain (sync or async) function.

    Every parameter except ``ctx`` (by name, or annotated ``ToolContext``) becomes
    a property of a pydantic model built with ``create_model`` (extra keys
    forbidden); its ``model_json_schema()`` is the tool's ``parameters``.
    Descriptions and constraints come from ``Annotated[T, Field(...)]``.
    ``description`` defaults to the function's docstring. Sync functions run in
    a worker thread so they never block the event loop. Raises ``TypeError``
    for ``*args``/``**kwargs`` or a parameter without a type hint.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    wants_ctx = False
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"Tool {name!r}: *args and **kwargs are not supported.")
        annotation = hints.get(param.name, inspect.Parameter.empty)
        if _is_context_param(param.name, annotation):
            wants_ctx = True
            continue
        if annotation is inspect.Parameter.empty:
            raise TypeError(f"Tool {name!r}: parameter {param.name!r} needs a type hint.")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)

    model_name = "".join(part.title() for part in re.split(r"[._-]", name)) + "Arguments"
    arguments_model = create_model(
        model_name,
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    schema = arguments_model.model_json_schema()
    schema.pop("title", None)
    schema.setdefault("properties", {})

    is_async = inspect.iscoroutinefunction(fn)
    field_names = list(fields)

    async def handler(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        try:
            validated = arguments_model.model_validate(arguments)
        except ValidationError as exc:
            raise _validation_message(name, exc) from exc
        kwargs = {key: getattr(validated, key) for key in field_names}
        if wants_ctx:
            kwargs["ctx"] = ctx
        if is_async:
            return await fn(**kwargs)
        return await sync_to_async(
            _call_in_thread, thread_sensitive=False, executor=_SYNC_HANDLER_EXECUTOR
        )(fn, kwargs)

    if destructive is None:
        destructive = not read_only
    if idempotent is None:
        idempotent = read_only
    return ToolSpec(
        name=name,
        description=(description or inspect.getdoc(fn) or "").strip(),
        parameters=schema,
        handler=handler,
        read_only=read_only,
        destructive=destructive,
        idempotent=idempotent,
        open_world=open_world,
        timeout_seconds=timeout_seconds,
        max_result_chars=max_result_chars,
        source=source,
        enabled_by_default=enabled_by_default,
        availability=availability,
        metadata={"function": f"{fn.__module__}.{fn.__qualname__}"},
        cost_usd_estimate=cost_usd_estimate,
    )


def _call_in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    # The thread is a pool thread, not a request thread: close any database
    # connection the handler opened so it does not linger in the pool.
    try:
        return fn(**kwargs)
    finally:
        connections.close_all()


def tool(
    *,
    name: str,
    description: str | None = None,
    read_only: bool = False,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    open_world: bool = True,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    enabled_by_default: bool = True,
    availability: Callable[[], tuple[bool, str]] | None = None,
    cost_usd_estimate: Decimal | None = None,
    into: ToolRegistry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a function as a tool and register it (in ``registry`` unless ``into``).

    Usage::

        @tool(name="time.now", read_only=True, open_world=False)
        def time_now(timezone: Annotated[str, Field(description="IANA name")] = "UTC") -> dict:
            "Current date and time in a time zone."

    Hints follow MCP ``ToolAnnotations`` (see the module docstring); defaults:
    ``destructive = not read_only``, ``idempotent = read_only``;
    ``cost_usd_estimate`` (USD per call, see ``ToolSpec``) only for a tool whose
    call really costs money. The function is
    returned unchanged, with the spec on ``fn.tool_spec``. Raises
    :class:`ToolAlreadyRegistered` on a name clash and ``TypeError``/``ValueError``
    for a function or name that cannot be described.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = spec_from_function(
            fn,
            name=name,
            description=description,
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            open_world=open_world,
            timeout_seconds=timeout_seconds,
            max_result_chars=max_result_chars,
            enabled_by_default=enabled_by_default,
            availability=availability,
            cost_usd_estimate=cost_usd_estimate,
        )
        (into or registry).register(spec)
        fn.tool_spec = spec  # type: ignore[attr-defined]
        return fn

    return decorate
