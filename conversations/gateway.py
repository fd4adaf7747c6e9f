"""The LLM gateway: every model call in Tollgate goes through ``stream_chat``.

Built on ``litellm.acompletion(stream=True, stream_options={"include_usage": True})``
so any provider litellm supports works by configuration (``ModelConfig``).
Retries (tenacity) cover 429, 5xx, connection errors and timeouts that happen
before the first token, waiting as long as the provider's ``Retry-After`` asks
(else exponential backoff with jitter); 400/401/403/404 are never retried.
Errors surface as ``GatewayError`` whose ``user_message`` names the cause.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import SimpleNamespace as NS
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.utils import timezone
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from conversations.demo import PROVIDER as DEMO
from conversations.demo import PURPOSE_KEY, demo_register

if TYPE_CHECKING:
    from conversations.models import ModelConfig

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """A model call failed. ``kind`` is one of ``KINDS``; ``user_message`` is shown to users."""

    KINDS = frozenset(
        {"auth", "rate_limited", "provider_down", "context_too_long", "bad_request", "timeout"}
    )

    def __init__(self, kind: str, user_message: str, *, retryable: bool = False) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown GatewayError kind {kind!r}")
        super().__init__(user_message)
        self.kind = kind
        self.user_message = user_message
        self.retryable = retryable
        self.retry_after: float | None = None


@dataclass
class ChatResult:
    """The finished answer of one streamed call.

    Tokens are counts; ``cost_usd`` is USD (``None`` only when neither the
    ModelConfig nor litellm's price map knows the model's price);
    ``latency_ms`` is request start to last chunk, ``ttft_ms`` to first token.
    """

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal | None = None
    latency_ms: int = 0
    ttft_ms: int | None = None
    finish_reason: str = ""
    model: str = ""


class StreamAborted(Exception):
    """Raised by an ``on_delta`` callback to stop the stream; passed through as-is."""


class _CallbackError(Exception):
    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _StreamStarted(Exception):
    """Wraps an error raised after the first token: never retried (text was shown)."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(str(error))
        self.error = error


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def _retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds asked for by a ``Retry-After``/``retry-after-ms`` header on the error."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
        except (TypeError, ValueError):
            return None


def _classify(exc: BaseException, config: ModelConfig) -> GatewayError:
    """Map a litellm/openai/httpx exception to a ``GatewayError`` naming the cause."""
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)
    import openai  # deliberately lazy, as litellm (it imports this too)

    name = config.name
    detail = str(getattr(exc, "message", "") or exc)[:300]
    lowered = f"{detail} {getattr(exc, 'code', '')} {getattr(exc, 'body', '')}".lower()
    if isinstance(exc, litellm.ContextWindowExceededError) or any(
        marker in lowered for marker in ("context_length", "context length", "context window")
    ):
        return GatewayError(
            "context_too_long",
            f"The conversation is too long for {name}'s context window. "
            "Start a new conversation or shorten your message.",
        )
    if isinstance(exc, _Cut):
        return GatewayError(
            "provider_down", f"{name} stopped before finishing its answer.", retryable=True
        )
    if isinstance(exc, (litellm.Timeout, openai.APITimeoutError, httpx.TimeoutException)):
        return GatewayError("timeout", f"{name} did not answer in time (timeout).", retryable=True)
    if isinstance(exc, httpx.TransportError):
        # Read past litellm's wrapper (_chunk_source), a dropped stream raises httpx's error.
        return GatewayError(
            "provider_down", f"Lost the connection to {name} while it answered.", retryable=True
        )
    if isinstance(exc, json.JSONDecodeError):  # a chunk that is not JSON
        return GatewayError(
            "provider_down", f"{name} sent a reply that could not be read.", retryable=True
        )
    status = _status_of(exc)
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)) or status in {
        401,
        403,
    }:
        where = f" (check the {config.api_key_env} variable)" if config.api_key_env else ""
        return GatewayError("auth", f"{name} rejected the API key{where}.")
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        error = GatewayError(
            "rate_limited",
            f"{name} is rate limiting requests right now. Try again in a minute.",
            retryable=True,
        )
        error.retry_after = _retry_after_seconds(exc)
        return error
    if isinstance(exc, openai.APIConnectionError) and status in {None, 500}:
        return GatewayError(
            "provider_down", f"Could not reach {name} (connection failed).", retryable=True
        )
    if status is not None and status >= 500:
        error = GatewayError(
            "provider_down",
            f"{name} is unavailable right now (provider error {status}). Try again later.",
            retryable=True,
        )
        error.retry_after = _retry_after_seconds(exc)
        return error
    if isinstance(exc, (litellm.BadRequestError, litellm.NotFoundError)) or status in {
        400,
        404,
        422,
    }:
        return GatewayError("bad_request", f"{name} refused the request: {detail}")
    return GatewayError(
        "provider_down", f"{name} failed unexpectedly ({type(exc).__name__}).", retryable=True
    )


def _api_key(config: ModelConfig) -> str | None:
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env, "")
    if not key:
        raise GatewayError(
            "auth",
            f"No API key for {config.name}: the environment variable "
            f"{config.api_key_env} is not set on the server.",
        )
    return key


def worst_case_cost(
    *, config: ModelConfig, prompt_tokens: int, max_tokens: int | None = None
) -> Decimal | None:
    """USD a call can cost at most: ``prompt_tokens`` plus ``max_tokens`` (default the
    model's ``max_output_tokens``) at the model's prices (``cost_for``; ``None`` when
    no price is known for the model). What admission reserves before a call, and
    what an approval card estimates for the call after a tool turn."""
    return cost_for(
        config=config,
        prompt_tokens=prompt_tokens,
        completion_tokens=config.max_output_tokens if max_tokens is None else max_tokens,
    )


def cost_for(*, config: ModelConfig, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """USD cost of a call: the ModelConfig's prices when set, else litellm's price map.

    Returns ``None`` when neither knows the model (logged), never a made-up 0.
    """
    if config.input_cost_per_token is not None or config.output_cost_per_token is not None:
        return Decimal(prompt_tokens) * (config.input_cost_per_token or Decimal(0)) + Decimal(
            completion_tokens
        ) * (config.output_cost_per_token or Decimal(0))
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=config.litellm_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    except Exception:
        logger.warning("no price known for model %s; cost not recorded", config.litellm_model)
        return None
    return Decimal(str(prompt_cost)) + Decimal(str(completion_cost))


#: Modules a first model call imports, or Tollgate's MCP client beside it (see
#: ``gateway_preload``).
_FIRST_CALL_IMPORTS = (
    "litellm.responses.mcp.chat_completions_handler",
    "litellm.responses.mcp.litellm_proxy_mcp_handler",
    "tools.mcp.connection",
    # What the asynchronous path adds to a synchronous call's (gateway_preload).
    "anyio._backends._asyncio",
    "litellm._service_logger",
)


def gateway_preload() -> None:
    """Import what a process's first model call would otherwise import, seconds of it:
    litellm with the demo provider registered, its MCP gateway (imported by a
    first call with tools), Tollgate's MCP client, and the OpenAI SDK's chat
    resources, which a client imports on its first call (~1 s of the worker's
    GIL, py-spy), litellm's default tokenizer, which the first context fit
    loads, and litellm's call path, walked by one call it answers itself.

    Call once per process, early (the worker at start, the embedded web process
    in a background thread); makes no network call.
    """
    # litellm's first call with ``tools=`` imports its MCP gateway (``completion``
    # asks it whether the tools are MCP ones): ~320 modules (FastAPI, Starlette,
    # mcp, httpx2), seconds of a worker's GIL; a failed call's error mapping
    # imports FastAPI's exceptions (a guardrail check). Imported by a run step's
    # thread while Tollgate's own MCP client (``tools.mcp``) was being imported
    # by another, they met mid-import and the call failed ("partially
    # initialized module 'httpx2'"). All import here, in one thread, first.
    import litellm  # deliberately lazy: this function is what imports it, once
    import openai  # deliberately lazy, as litellm

    for module in _FIRST_CALL_IMPORTS:
        importlib.import_module(module)
    with contextlib.suppress(ImportError):  # FastAPI is there only with dev tools (llmock)
        importlib.import_module("fastapi.exceptions")
    demo_register()
    client = openai.AsyncOpenAI(api_key="preload", base_url="http://127.0.0.1:9/v1")
    _ = client.chat.completions  # a cached property: the import happens here
    # A step's context fit counts tokens with litellm's default tokenizer, which
    # its first count loads (tiktoken's cl100k_base, 0.1-0.3 s here): load it now.
    litellm.token_counter(messages=[{"role": "user", "content": "preload"}])
    # litellm's first completion builds its call path (provider configuration,
    # logging, the stream wrapper): ~150 ms of a worker's first reply. A call that
    # litellm answers itself (``mock_response``) walks it with no network call.
    for _chunk in litellm.completion(
        model="openai/preload",
        messages=[{"role": "user", "content": "preload"}],
        mock_response="preload",
        stream=True,
    ):
        pass


#: litellm providers whose stream is the OpenAI SDK's own ``AsyncStream`` of
#: ``ChatCompletionChunk`` (any OpenAI-compatible server: ``openai/<model>`` + ``api_base``).
_OPENAI_WIRE = frozenset({"openai"})


class _Cut(Exception):
    """The provider's stream ended without a finish reason (the answer was cut off)."""


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s ``__cause__``/``__context__`` chain."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    return exc


#: What aiohttp and httpx raise when a pooled keep-alive connection turns out to
#: have been closed by the server while it sat idle (uvicorn closes after 5 s).
_STALE_CONNECTION = frozenset(
    {"ServerDisconnectedError", "ClientConnectionResetError", "RemoteProtocolError"}
)


def _stale_connection(exc: BaseException) -> bool:
    """Did the request fail on a pooled connection the provider had already closed?"""
    return type(_root_cause(exc)).__name__ in _STALE_CONNECTION


async def _acompletion(kwargs: dict[str, Any], config: ModelConfig) -> Any:
    """``litellm.acompletion``, again at once if a stale pooled connection failed it.

    Not a provider failure, so not one of ``TOLLGATE_LLM_MAX_RETRIES`` and no
    backoff: at the start of a burst after a quiet spell, several calls met
    connections the provider had closed (docs/benchmarks.md, concurrency).
    """
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    try:
        return await litellm.acompletion(**kwargs)
    except Exception as exc:
        if not _stale_connection(exc):
            raise
        logger.info("model %s: the provider had closed a pooled connection; retrying", config.name)
    return await litellm.acompletion(**kwargs)


def _chunk_source(response: Any) -> tuple[Any, bool]:
    """The call's chunks in OpenAI's ``chat.completion.chunk`` shape; ``(chunks, direct)``.

    litellm's ``CustomStreamWrapper`` rebuilds every chunk as its own pydantic
    object, re-runs its checks on the text so far, and at the end assembles and
    logs the whole answer in a thread: about 330 µs of CPU per chunk on the
    bench machine, over three times the cost of reading the OpenAI SDK's stream
    (docs/benchmarks.md). Where the stream underneath is already in that shape
    (the OpenAI SDK's stream of an OpenAI-compatible provider) or is our own
    demo's ``GenericStreamingChunk`` dicts, it is read directly (``direct``
    True); any other provider goes through litellm's wrapper. litellm still
    builds and sends the request (parameters, keys, errors before the stream).
    """
    import openai  # deliberately lazy: seconds at import, with litellm (see gateway_preload)

    stream = getattr(response, "completion_stream", None)
    provider = getattr(response, "custom_llm_provider", None)
    if provider in _OPENAI_WIRE and isinstance(stream, openai.AsyncStream):
        return stream, True
    if provider == DEMO and stream is not None:
        return _openai_shaped(stream), True
    return response, False


async def _openai_shaped(stream: Any) -> Any:
    """litellm ``GenericStreamingChunk`` dicts as OpenAI-shaped chunk objects."""
    async for item in stream:
        usage = item.get("usage")
        call = item.get("tool_use")
        calls = None
        if call:
            function = call.get("function") or {}
            calls = [
                NS(
                    index=call.get("index") or 0,
                    id=call.get("id"),
                    function=NS(name=function.get("name"), arguments=function.get("arguments")),
                )
            ]
        delta = NS(content=item.get("text") or None, tool_calls=calls)
        choice = NS(delta=delta, finish_reason=item.get("finish_reason") or None)
        yield NS(
            model=None,
            usage=NS(**usage) if usage else None,
            choices=[choice],
        )


async def _close(chunks: Any) -> None:
    """Close a stream left early (Stop, an error) so its connection is released."""
    close = getattr(chunks, "aclose", None) or getattr(chunks, "close", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # closing is best effort; the step's outcome is already decided
        logger.debug("closing a model stream failed", exc_info=True)


async def _stream_once(
    *,
    kwargs: dict[str, Any],
    config: ModelConfig,
    on_delta: Callable[[str], Awaitable[None]] | None,
) -> ChatResult:
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    started = time.monotonic()
    result = ChatResult(model=config.litellm_model)
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage = None
    first = False
    chunks: Any = None
    done = False
    try:
        response = await _acompletion(kwargs, config)
        chunks, direct = _chunk_source(response)
        async for chunk in chunks:
            chunk_usage = getattr(chunk, "usage", None)
            if chunk_usage and getattr(chunk_usage, "total_tokens", None):
                usage = chunk_usage
            if getattr(chunk, "model", None):
                result.model = chunk.model
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.finish_reason:
                result.finish_reason = choice.finish_reason
            delta = choice.delta
            piece = getattr(delta, "content", None)
            for call in getattr(delta, "tool_calls", None) or []:
                slot = calls.setdefault(
                    call.index or 0,
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    if call.function.name:
                        slot["function"]["name"] += call.function.name
                    if call.function.arguments:
                        slot["function"]["arguments"] += call.function.arguments
                first = True
            if piece:
                if not first:
                    result.ttft_ms = int((time.monotonic() - started) * 1000)
                first = True
                text.append(piece)
                if on_delta is not None:
                    try:
                        await on_delta(piece)
                    except Exception as exc:
                        raise _CallbackError(exc) from exc
        done = True
        if direct and not result.finish_reason:
            raise _Cut
    except GatewayError:
        raise
    except _CallbackError as wrapped:
        # The caller's own error (e.g. StreamAborted): not the provider's, never retried.
        raise wrapped.original from None
    except Exception as exc:
        error = _classify(exc, config)
        # What the provider (or the client library) actually said: the user's
        # message names the kind only.
        root = _root_cause(exc)
        logger.warning(
            "model %s call failed (%s): %s: %s (cause: %s: %s)",
            config.litellm_model,
            error.kind,
            type(exc).__name__,
            str(exc)[:300],
            type(root).__name__,
            str(root)[:300],
        )
        if first:
            raise _StreamStarted(error) from exc
        raise error from exc
    finally:
        if chunks is not None and not done:
            await _close(chunks)

    result.content = "".join(text)
    result.tool_calls = [calls[i] for i in sorted(calls)]
    result.latency_ms = int((time.monotonic() - started) * 1000)
    if usage is not None:
        result.prompt_tokens = int(usage.prompt_tokens or 0)
        result.completion_tokens = int(usage.completion_tokens or 0)
    else:
        # The provider sent no usage: count ourselves rather than bill $0.
        result.prompt_tokens = litellm.token_counter(
            model=config.litellm_model, messages=kwargs["messages"]
        )
        result.completion_tokens = litellm.token_counter(
            model=config.litellm_model, text=result.content
        )
    if not result.finish_reason:
        result.finish_reason = "tool_calls" if result.tool_calls else "stop"
    result.cost_usd = cost_for(
        config=config,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )
    return result


async def stream_chat(
    *,
    config: ModelConfig,
    messages: list[dict],
    tools: list[dict] | None = None,
    on_delta: Callable[[str], Awaitable[None]] | None = None,
    max_tokens: int | None = None,
    temperature: Decimal | float | None = None,
    purpose: str = "",
) -> ChatResult:
    """Stream one chat completion from ``config``'s model; return the finished answer.

    ``messages``/``tools`` are OpenAI-format lists. ``on_delta`` is awaited with
    each text delta as it arrives. ``max_tokens`` defaults to
    ``config.max_output_tokens``; ``temperature`` ``None`` sends none (the
    provider's default). ``purpose`` names a call that is not a chat reply
    (``"reformulate"``); only the offline demo model is told (it answers such a
    call differently), a provider never sees it. Retries up to ``TOLLGATE_LLM_MAX_RETRIES``
    times on retryable errors before the first token, honouring ``Retry-After``
    (capped at ``TOLLGATE_LLM_MAX_RETRY_WAIT`` seconds; a longer wait fails at
    once). Raises ``GatewayError``.
    """
    demo_register()
    kwargs: dict[str, Any] = {
        "model": config.litellm_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens or config.max_output_tokens,
        "timeout": settings.TOLLGATE_LLM_TIMEOUT,
        # Retries are ours (below); the OpenAI SDK must not retry underneath.
        "max_retries": 0,
        "num_retries": 0,
    }
    if config.api_base:
        kwargs["api_base"] = config.api_base
    api_key = _api_key(config)
    if api_key:
        kwargs["api_key"] = api_key
    if tools:
        kwargs["tools"] = tools
    if temperature is not None:
        kwargs["temperature"] = float(temperature)
    if purpose and config.litellm_model.startswith(f"{DEMO}/"):
        kwargs["metadata"] = {PURPOSE_KEY: purpose}

    max_wait = float(settings.TOLLGATE_LLM_MAX_RETRY_WAIT)
    backoff = wait_exponential_jitter(multiplier=0.5, max=max_wait, jitter=0.5)

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, GatewayError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= max_wait

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return retry_after
        return backoff(state)

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "model %s attempt %d failed (%s); retrying in %.2fs",
            config.litellm_model,
            state.attempt_number,
            getattr(exc, "kind", exc),
            state.next_action.sleep if state.next_action else 0,
        )

    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(should_retry),
            wait=wait,
            stop=stop_after_attempt(settings.TOLLGATE_LLM_MAX_RETRIES + 1),
            before_sleep=log_retry,
            reraise=True,
        ):
            with attempt:
                return await _stream_once(kwargs=kwargs, config=config, on_delta=on_delta)
    except _StreamStarted as started:
        raise started.error from started
    raise AssertionError("unreachable")  # pragma: no cover
