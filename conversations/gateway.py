"""The LLM gateway: every model call in Tollgate goes through ``stream_chat``.

Built on ``litellm.acompletion(stream=True, stream_options={"include_usage": True})``
so any provider litellm supports works by configuration (``ModelConfig``).
Retries (tenacity) cover 429, 5xx, connection errors and timeouts that happen
before the first token, waiting as long as the provider's ``Retry-After`` asks
(else exponential backoff with jitter); 400/401/403/404 are never retried.
Errors surface as ``GatewayError`` whose ``user_message`` names the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
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

from conversations.breaker import Pass, breaker_failure, breaker_pass, breaker_success
from conversations.demo import PROVIDER as DEMO
from conversations.demo import PURPOSE_KEY, demo_register
from conversations.replycache import CachedReply, reply_cacheable, reply_get, reply_key, reply_put

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
        #: What the failed call used before it failed (its streams had begun), to
        #: be charged; ``None`` when no attempt reached the provider's answer.
        self.usage: CallUsage | None = None
        #: The text the user had been shown when the stream broke ("" if none).
        self.partial = ""
        #: ModelConfig names tried before, in order, that failed or were skipped.
        self.failed_over: list[str] = []


#: The usage ledger's precision: ``accounts.UsageRecord.cost_usd``'s decimal places.
LEDGER_PLACES = 12


@dataclass
class CallUsage:
    """What a model call, or a broken attempt of one, used: tokens and USD.

    ``prompt_tokens`` include ``cached_tokens`` (read from the provider's prompt
    cache, cheaper) and ``completion_tokens`` include ``reasoning_tokens``, as
    providers count them. ``cost_usd`` is ``None`` when the model has no known price.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: CallUsage) -> CallUsage:
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return CallUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=sum(costs, Decimal(0)) if costs else None,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass
class ChatResult:
    """The finished answer of one streamed call.

    Tokens are counts; ``cost_usd`` is USD (``None`` only when neither the
    ModelConfig nor litellm's price map knows the model's price);
    ``latency_ms`` is request start to last chunk, ``ttft_ms`` to first token.
    ``broken``: what earlier attempts of this call used whose streams broke
    before any text and were retried (the provider had begun answering them, so
    they are charged too), or ``None``.
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
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    broken: CallUsage | None = None
    #: With fallbacks: the ModelConfig name that answered after ``failed_over``
    #: (names, in order) failed or were skipped; "" and [] when the first answered.
    answered_by: str = ""
    failed_over: list[str] = field(default_factory=list)
    #: Answered from the reply cache (``conversations.replycache``): no provider call, free.
    cache_hit: bool = False

    @property
    def usage(self) -> CallUsage:
        """This answer's own usage (without ``broken``)."""
        return CallUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )

    @property
    def charged(self) -> CallUsage:
        """What the call is charged: this answer plus any broken attempts before it."""
        return self.usage + self.broken if self.broken is not None else self.usage


class StreamAborted(Exception):
    """Raised by an ``on_delta`` callback to stop the stream; passed through as-is,
    with ``usage`` set by the gateway: what the call used until then (the prompt and
    the output counted so far, plus any broken attempts before it), to be charged."""

    usage: CallUsage | None = None


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
    """The HTTP status the provider sent: the one on the response litellm's error was
    made from (litellm maps some, e.g. Anthropic's 503 ``overloaded_error``, to
    500), else the error's own ``status_code``."""
    for link in _chain(exc):
        if isinstance(link, httpx.HTTPStatusError):
            return link.response.status_code
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
    if not headers:  # the provider's response, under litellm's error
        statuses = [e for e in _chain(exc) if isinstance(e, httpx.HTTPStatusError)]
        headers = statuses[0].response.headers if statuses else None
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


def _lost_connection(exc: BaseException) -> bool:
    """Did the connection drop (rather than the provider answer with an error)?

    Read along the exception chain: httpx's transport errors, aiohttp's client and
    payload errors (litellm's own transport, wrapped by litellm as an
    ``APIConnectionError`` with status 500 though no 500 was sent), a reset socket.
    """
    import aiohttp  # deliberately lazy: imported by litellm anyway
    from aiohttp.http_exceptions import HttpProcessingError

    dropped = (httpx.TransportError, aiohttp.ClientError, HttpProcessingError, ConnectionError)
    timeouts = (httpx.TimeoutException, aiohttp.ServerTimeoutError, TimeoutError)
    return any(isinstance(link, dropped) and not isinstance(link, timeouts) for link in _chain(exc))


def _classify(exc: BaseException, config: ModelConfig, *, began: bool = False) -> GatewayError:
    """Map a litellm/openai/httpx exception to a ``GatewayError`` naming the cause.

    ``began``: the provider had answered the request (its stream had begun), so a
    dropped connection is a stream cut in the middle, not a failure to connect.
    """
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)
    import openai  # deliberately lazy, as litellm (it imports this too)

    # litellm wraps an error met while reading a stream so its Router may fall back;
    # what the provider (or the connection) did is the exception inside.
    from litellm.exceptions import MidStreamFallbackError  # lazy, as litellm above

    # The chain of what was raised, not of the exception litellm wrapped it in.
    lost = began and _lost_connection(exc)
    undecodable = any(
        isinstance(link, (json.JSONDecodeError, _Undecodable)) for link in _chain(exc)
    )
    if isinstance(exc, MidStreamFallbackError) and exc.original_exception is not None:
        exc = exc.original_exception
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
    if isinstance(exc, _Idle):
        return GatewayError(
            "timeout",
            f"{name} stopped sending in the middle of its answer "
            f"(nothing for {exc.seconds:g} seconds).",
            retryable=True,
        )
    if isinstance(exc, (litellm.Timeout, openai.APITimeoutError, httpx.TimeoutException)):
        return GatewayError("timeout", f"{name} did not answer in time (timeout).", retryable=True)
    if isinstance(exc, httpx.TransportError) or lost:
        # Read past litellm's wrapper (_chunk_source), a dropped stream raises httpx's
        # error; through it, litellm's APIConnectionError around aiohttp's.
        return GatewayError(
            "provider_down", f"Lost the connection to {name} while it answered.", retryable=True
        )
    if undecodable:  # a chunk that is not JSON (Azure's, through litellm: a 500)
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


def gateway_error(exc: BaseException, config: ModelConfig) -> GatewayError:
    """``exc``, raised by a litellm call to ``config`` (chat or embedding) before any
    answer, as a ``GatewayError`` naming the cause for the user."""
    return _classify(exc, config)


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


def provider_kwargs(config: ModelConfig) -> dict[str, str]:
    """Where and with what key litellm reaches ``config``'s deployment: ``api_base``
    (when set) and ``api_key`` (read from the variable ``api_key_env`` names, when
    set), for any call (chat, embedding). Raises ``GatewayError`` ("auth") when that
    variable is not set on the server."""
    kwargs: dict[str, str] = {}
    if config.api_base:
        kwargs["api_base"] = config.api_base
    api_key = _api_key(config)
    if api_key:
        kwargs["api_key"] = api_key
    return kwargs


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


@functools.lru_cache(maxsize=256)
def litellm_prices(model: str) -> tuple[Decimal, Decimal] | None:
    """USD per prompt and per output token in litellm's price map, or ``None`` when the
    map does not know ``model`` or prices it at $0 for both (an entry with no real
    price: ``anthropic/claude-sonnet-4-20250514`` in litellm 1.106's map).

    The map is read once per process (cached): it changes only with litellm.
    """
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    try:
        info = litellm.get_model_info(model)
    except Exception:
        return None
    prompt = Decimal(str(info.get("input_cost_per_token") or 0))
    output = Decimal(str(info.get("output_cost_per_token") or 0))
    if not prompt and not output:
        return None
    return prompt, output


def litellm_listed(model: str) -> bool:
    """Is ``model`` in litellm's price map at all (even at $0)?"""
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    try:
        litellm.get_model_info(model)
    except Exception:
        return False
    return True


def price_source(config: ModelConfig) -> str:
    """Where ``config``'s prices come from: ``"confirmed"`` (set on the ModelConfig by
    an admin), ``"litellm"`` (litellm's price map) or ``"unknown"`` (neither: the
    model cannot be used under a dollar budget)."""
    if config.prices_confirmed:
        return "confirmed"
    return "litellm" if litellm_prices(config.litellm_model) is not None else "unknown"


def cost_for(
    *,
    config: ModelConfig,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Decimal | None:
    """USD cost of a call: the ModelConfig's prices when an admin set them, else
    litellm's price map.

    ``prompt_tokens`` include ``cached_tokens`` (prompt-cache reads) and
    ``cache_creation_tokens`` (writes); ``completion_tokens`` include
    ``reasoning_tokens``, as litellm's usage counts them. With the ModelConfig's
    prices, cached tokens cost ``cached_input_cost_per_token`` (the prompt price
    when blank) and reasoning tokens the output price; with litellm's map, its
    cache and reasoning prices apply. Returns ``None`` when neither knows the
    model, or litellm's map prices it at $0 (logged), never a made-up 0.
    """
    if config.prices_confirmed:
        prompt_price = config.input_cost_per_token or Decimal(0)
        cached_price = config.cached_input_cost_per_token
        if cached_price is None:
            cached_price = prompt_price
        cached = min(cached_tokens, prompt_tokens)
        return (
            Decimal(prompt_tokens - cached) * prompt_price
            + Decimal(cached) * cached_price
            + Decimal(completion_tokens) * (config.output_cost_per_token or Decimal(0))
        )
    if litellm_prices(config.litellm_model) is None:
        logger.warning("no price known for model %s; cost not recorded", config.litellm_model)
        return None
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    usage = None
    if cached_tokens or cache_creation_tokens or reasoning_tokens:
        from litellm.types.utils import (  # lazy, as litellm above
            CompletionTokensDetailsWrapper,
            PromptTokensDetailsWrapper,
            Usage,
        )

        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=cached_tokens),
            completion_tokens_details=CompletionTokensDetailsWrapper(
                reasoning_tokens=reasoning_tokens
            ),
            cache_read_input_tokens=cached_tokens,
            cache_creation_input_tokens=cache_creation_tokens,
        )
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=config.litellm_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_object=usage,
        )
    except Exception:
        logger.warning("no price known for model %s; cost not recorded", config.litellm_model)
        return None
    # litellm prices in floats: keep the usage ledger's 12 decimal places, not a float's
    # noise (a cost of 0.000626 arrives as 0.0006259999999999999, which the ledger would
    # round while the message's metadata kept it). Rounded as a float: Decimal's quantize
    # obeys the thread's decimal context, which a library may have changed.
    return Decimal(repr(round(prompt_cost + completion_cost, LEDGER_PLACES)))


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


class _Undecodable(Exception):
    """The provider's stream ended without a finish reason after a chunk that could not
    be decoded (litellm's Anthropic reader swallows it, and what follows it)."""


class _Idle(Exception):
    """The provider's stream went silent for longer than the idle timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no chunk for {seconds:g} s")
        self.seconds = seconds


class _IdleWatch:
    """Cancels the task reading a stream once no chunk came for ``seconds``.

    One timer per ``seconds`` of streaming, not one per chunk: a chunk only notes
    the time (``touch``); when the timer fires it cancels the reader if the
    last chunk is ``seconds`` old, else it sets itself for ``seconds`` after that
    chunk. The reader turns the cancellation into ``_Idle`` (``expired``), as
    ``asyncio.timeout`` does with its own.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self.stopped = False
        self.last = 0.0
        self._loop: Any = None
        self._task: Any = None
        self._handle: Any = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + self.seconds, self._check)

    def touch(self) -> None:
        """A chunk came: the watch starts with the first one."""
        if self.stopped:
            return
        if self._loop is None:
            self.start()
        else:
            self.last = self._loop.time()

    def _check(self) -> None:
        due = self.last + self.seconds
        if self._loop.time() >= due:
            self.fired = True
            self._handle = None
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(due, self._check)

    def stop(self) -> None:
        """Stop watching (a later ``touch`` does not start it again)."""
        self.stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def expired(self) -> bool:
        """After a ``CancelledError``: was it this watch's (then consumed), not the caller's?"""
        return self.fired and self._task.uncancel() == 0


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__``/``__context__`` chain, outermost first."""
    links = [exc]
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        links.append(nxt)
        exc = nxt
    return links


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s ``__cause__``/``__context__`` chain."""
    return _chain(exc)[-1]


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


async def _watched(stream: Any, watch: _IdleWatch) -> Any:
    """The provider's raw chunks under litellm's wrapper, each noted by ``watch``: the
    wrapper holds back chunks with no text (Anthropic's ``message_start``, ``ping``),
    which still show the provider is alive."""
    try:
        async for item in stream:
            watch.touch()
            yield item
    finally:
        # The provider is done (or gone): what the wrapper does next (assembling the
        # answer, in a thread) is no silence of the provider's.
        watch.stop()
        await _close(stream)


async def _decodable_lines(lines: Any) -> Any:
    """A provider's raw stream lines (SSE ``data:`` events or JSON lines), each checked
    to decode: litellm's common line reader (``BaseModelResponseIterator``: Ollama
    and others) skips a line it cannot decode and reads on, so an answer missing a
    piece would end as complete."""
    async for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if isinstance(text, str):
            payload = text.strip()
            if payload.startswith("data:"):
                payload = payload[5:].strip()
            elif not payload.startswith(("{", "[")):
                payload = ""  # another SSE field (event:, id:, retry:) or a comment
            if payload and payload != "[DONE]":
                try:
                    json.loads(payload)
                except ValueError:
                    raise _Undecodable(payload[:200]) from None
        yield line


def _check_lines(raw: Any) -> None:
    """Have litellm's line reader ``raw`` fail on a line it cannot decode."""
    from litellm.llms.base_llm.base_model_iterator import (  # lazy, as litellm
        BaseModelResponseIterator,
    )

    if isinstance(raw, BaseModelResponseIterator) and hasattr(raw, "streaming_response"):
        raw.streaming_response = _decodable_lines(raw.streaming_response)


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


def _usage_numbers(usage: Any) -> tuple[int, int, int, int, int]:
    """``(prompt, completion, cached, cache_creation, reasoning)`` tokens of a usage
    object: the OpenAI SDK's ``CompletionUsage`` or litellm's ``Usage`` (whose
    Anthropic counts are mapped onto the same fields, plus cache writes)."""
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    creation = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    output_details = getattr(usage, "completion_tokens_details", None)
    reasoning = (
        int(getattr(output_details, "reasoning_tokens", 0) or 0)
        if output_details is not None
        else 0
    )
    return prompt, completion, cached, creation, reasoning


def _finished(response: Any, direct: bool, finish_reason: str) -> bool:
    """Did the provider itself end the stream with a finish reason?

    Read directly, the chunks carry the provider's own. Through litellm's
    ``CustomStreamWrapper`` (every other route: Anthropic, Azure, Ollama…) the
    last chunk's ``finish_reason`` may be the wrapper's invention ("stop" when the
    stream just ended); the wrapper keeps what the provider sent in
    ``received_finish_reason``/``intermittent_finish_reason``.
    """
    if direct or not hasattr(response, "received_finish_reason"):
        return bool(finish_reason)
    return bool(response.received_finish_reason or response.intermittent_finish_reason)


def _undecodable(stream: Any) -> bool:
    """Did litellm's reader of the provider's ``stream`` meet a chunk it could not
    decode and keep waiting for the rest of it (its Anthropic reader's
    ``accumulated_json`` mode)?"""
    return getattr(stream, "chunk_type", None) == "accumulated_json"


def _prompt_tokens(config: ModelConfig, kwargs: dict[str, Any], hint: int | None) -> int:
    """The prompt's tokens when the provider did not say: ``hint`` (the caller's
    count, e.g. the context fit's) or litellm's count of the messages."""
    if hint is not None:
        return hint
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    return litellm.token_counter(model=config.litellm_model, messages=kwargs["messages"])


def _output_tokens(config: ModelConfig, text: str, calls: dict[int, dict[str, Any]]) -> int:
    """litellm's count of the output so far: the text and the tool calls' names and
    arguments."""
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    parts = [text] + [c["function"]["name"] + c["function"]["arguments"] for c in calls.values()]
    joined = "".join(parts)
    return litellm.token_counter(model=config.litellm_model, text=joined) if joined else 0


def _usage_so_far(
    *,
    config: ModelConfig,
    kwargs: dict[str, Any],
    usage: Any,
    text: str,
    calls: dict[int, dict[str, Any]],
    prompt_hint: int | None,
) -> CallUsage:
    """What an attempt that did not finish used: the prompt (as the provider reported
    it, else counted) and the output counted so far (or the provider's count, if
    higher), priced like a finished answer."""
    prompt, completion, cached, creation, reasoning = (
        _usage_numbers(usage) if usage is not None else (0, 0, 0, 0, 0)
    )
    prompt = prompt or _prompt_tokens(config, kwargs, prompt_hint)
    completion = max(completion, _output_tokens(config, text, calls))
    cost = cost_for(
        config=config,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_creation_tokens=creation,
        reasoning_tokens=reasoning,
    )
    return CallUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


async def _stream_once(
    *,
    kwargs: dict[str, Any],
    config: ModelConfig,
    on_delta: Callable[[str], Awaitable[None]] | None,
    prompt_hint: int | None = None,
) -> ChatResult:
    """One attempt: the request, then its stream read to the provider's own end.

    Every route ends the same ways: a stream that ends without the provider's
    finish reason is cut (``_Cut``, or ``_Undecodable`` after a chunk that could
    not be read), one silent for ``TOLLGATE_LLM_IDLE_TIMEOUT`` seconds after its
    first chunk is stalled (``_Idle``), a dropped connection is a lost
    connection. Errors carry what the attempt used once the provider had begun
    answering (``GatewayError.usage``, ``StreamAborted.usage``).
    """
    started = time.monotonic()
    result = ChatResult(model=config.litellm_model)
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage = None
    first = False
    chunks: Any = None
    done = False
    began = False
    watch = _IdleWatch(float(settings.TOLLGATE_LLM_IDLE_TIMEOUT))
    raw: Any = None
    try:
        try:
            response = await _acompletion(kwargs, config)
            began = True
            chunks, direct = _chunk_source(response)
            raw = getattr(response, "completion_stream", None)
            if not direct and hasattr(raw, "__aiter__"):
                _check_lines(raw)
                response.completion_stream = _watched(raw, watch)
            async for chunk in chunks:
                watch.touch()
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
            if not _finished(response, direct, result.finish_reason):
                raise _Undecodable if _undecodable(raw) else _Cut
        except asyncio.CancelledError:
            if watch.expired():
                raise _Idle(watch.seconds) from None
            raise
        finally:
            watch.stop()
    except GatewayError:
        raise
    except _CallbackError as wrapped:
        # The caller's own error (e.g. StreamAborted): not the provider's, never retried.
        original = wrapped.original
        if isinstance(original, StreamAborted):
            original.usage = _usage_so_far(
                config=config, kwargs=kwargs, usage=usage, text="".join(text), calls=calls,
                prompt_hint=prompt_hint,
            )  # fmt: skip
        raise original from None
    except Exception as exc:
        error = _classify(exc, config, began=began)
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
        error.partial = "".join(text)
        if began:
            error.usage = _usage_so_far(
                config=config, kwargs=kwargs, usage=usage, text=error.partial, calls=calls,
                prompt_hint=prompt_hint,
            )  # fmt: skip
        if first:
            raise _StreamStarted(error) from exc
        raise error from exc
    finally:
        if chunks is not None and not done:
            await _close(chunks)

    result.content = "".join(text)
    result.tool_calls = [calls[i] for i in sorted(calls)]
    result.latency_ms = int((time.monotonic() - started) * 1000)
    cached = creation = 0
    if usage is not None:
        (
            result.prompt_tokens,
            result.completion_tokens,
            cached,
            creation,
            result.reasoning_tokens,
        ) = _usage_numbers(usage)
        result.cached_tokens = cached
    else:
        # The provider sent no usage: count ourselves rather than bill $0.
        result.prompt_tokens = _prompt_tokens(config, kwargs, prompt_hint)
        result.completion_tokens = _output_tokens(config, result.content, calls)
    if not result.finish_reason:
        result.finish_reason = "tool_calls" if result.tool_calls else "stop"
    result.cost_usd = cost_for(
        config=config,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cached_tokens=cached,
        cache_creation_tokens=creation,
        reasoning_tokens=result.reasoning_tokens,
    )
    return result


class _Spent:
    """What the broken attempts of one call used, over all its deployments."""

    def __init__(self) -> None:
        self.usage: CallUsage | None = None

    def add(self, usage: CallUsage | None) -> CallUsage | None:
        """Add one broken attempt's usage; what the call has used so far."""
        if usage is not None:
            self.usage = usage if self.usage is None else self.usage + usage
        return self.usage


def call_temperature(config: ModelConfig, temperature: Decimal | float | None) -> float | None:
    """The temperature a call to ``config`` is made with: the call's own (a run's
    settings, ``conversations.prompting``), else the model config's, else ``None``
    (none sent: the provider's default)."""
    if temperature is not None:
        return float(temperature)
    return config.temperature


def _request(
    config: ModelConfig,
    messages: list[dict],
    tools: list[dict] | None,
    max_tokens: int,
    *,
    temperature: float | None,
    purpose: str,
) -> dict[str, Any]:
    """litellm's keyword arguments for a streamed call to ``config``'s deployment.

    ``temperature`` ``None`` sends none; ``purpose`` (``"reformulate"``) is told
    only to the offline demo model, never to a provider."""
    kwargs: dict[str, Any] = {
        "model": config.litellm_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "timeout": settings.TOLLGATE_LLM_TIMEOUT,
        # Retries are ours (below); the OpenAI SDK must not retry underneath.
        "max_retries": 0,
        "num_retries": 0,
    }
    kwargs.update(provider_kwargs(config))
    if tools:
        kwargs["tools"] = tools
    if temperature is not None:
        kwargs["temperature"] = temperature
    if purpose and config.litellm_model.startswith(f"{DEMO}/"):
        kwargs["metadata"] = {PURPOSE_KEY: purpose}
    return kwargs


async def _from_cache(
    key: str, on_delta: Callable[[str], Awaitable[None]] | None
) -> ChatResult | None:
    """The cached answer under ``key``, shown through ``on_delta``, or ``None``."""
    hit = await reply_get(key=key)
    if hit is None:
        return None
    if on_delta is not None and hit.content:
        try:
            await on_delta(hit.content)
        except StreamAborted as aborted:
            aborted.usage = CallUsage(cost_usd=Decimal(0))  # nothing was called
            raise
    return ChatResult(
        content=hit.content,
        finish_reason=hit.finish_reason,
        model=hit.model,
        cost_usd=Decimal(0),
        cache_hit=True,
    )


async def _call_deployment(
    *,
    config: ModelConfig,
    kwargs: dict[str, Any],
    on_delta: Callable[[str], Awaitable[None]] | None,
    prompt_tokens: int | None,
    attempts: int,
    spent: _Spent,
    passed: Pass,
) -> ChatResult:
    """Up to ``attempts`` attempts at one deployment, retrying retryable errors before
    the first token (``Retry-After`` honoured); each retryable failure counts on its
    circuit breaker, and one that opens it ends the attempts."""
    max_wait = float(settings.TOLLGATE_LLM_MAX_RETRY_WAIT)
    backoff = wait_exponential_jitter(multiplier=0.5, max=max_wait, jitter=0.5)
    opened = False

    def should_retry(exc: BaseException) -> bool:
        if opened or not isinstance(exc, GatewayError) or not exc.retryable:
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

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(should_retry),
        wait=wait,
        stop=stop_after_attempt(attempts),
        before_sleep=log_retry,
        reraise=True,
    ):
        with attempt:
            try:
                result = await _stream_once(
                    kwargs=kwargs, config=config, on_delta=on_delta, prompt_hint=prompt_tokens
                )
            except GatewayError as error:
                error.usage = spent.add(error.usage)
                if error.retryable:
                    opened = await breaker_failure(config=config, passed=passed)
                raise
            except _StreamStarted as started:
                started.error.usage = spent.add(started.error.usage)
                await breaker_failure(config=config, passed=passed)
                raise
            except StreamAborted as aborted:
                aborted.usage = spent.add(aborted.usage)
                raise
            await breaker_success(config=config, passed=passed)
            return result
    raise AssertionError("unreachable")  # pragma: no cover


def _paused(config: ModelConfig, passed: Pass) -> GatewayError:
    """The error of a deployment skipped because its circuit breaker is open."""
    until = ""
    if passed.retry_at is not None:
        until = " until " + time.strftime("%H:%M:%S UTC", time.gmtime(passed.retry_at))
    return GatewayError(
        "provider_down",
        f"{config.name} failed repeatedly and is paused{until} (circuit breaker). Try again later.",
    )


async def stream_chat(
    *,
    config: ModelConfig,
    messages: list[dict],
    tools: list[dict] | None = None,
    on_delta: Callable[[str], Awaitable[None]] | None = None,
    max_tokens: int | None = None,
    temperature: Decimal | float | None = None,
    purpose: str = "",
    prompt_tokens: int | None = None,
    fallbacks: Sequence[ModelConfig] = (),
) -> ChatResult:
    """Stream one chat completion from ``config``'s model; return the finished answer.

    ``messages``/``tools`` are OpenAI-format lists. ``on_delta`` is awaited with
    each text delta as it arrives. ``max_tokens`` defaults to
    ``config.max_output_tokens``. ``temperature``: the call's (a run's settings),
    else each model config's own, else none sent (``call_temperature``).
    ``purpose`` names a call that is not a chat reply (``"reformulate"``); only
    the offline demo model is told (it answers such a call differently), a
    provider never sees it. ``prompt_tokens``: the caller's count of the
    prompt, used when the provider reports none.

    Retries up to ``TOLLGATE_LLM_MAX_RETRIES`` times on retryable errors before
    the first token (a stream cut, unreadable or stalled before any text
    included), honouring ``Retry-After`` (capped at
    ``TOLLGATE_LLM_MAX_RETRY_WAIT`` seconds; a longer wait fails at once). With
    ``fallbacks`` (other ModelConfigs, in order), each model is tried
    ``TOLLGATE_LLM_FALLBACK_AFTER`` times, the last one as often as alone, and a
    retryable error before the first token moves on to the next; the result
    names the model that answered (``answered_by``) and those that failed before
    it (``failed_over``). A model whose circuit breaker is open
    (``conversations.breaker``) is skipped.

    Raises ``GatewayError`` (or the callback's ``StreamAborted``), with ``usage``
    set to what the call used until then; a result's ``broken`` is what its
    retried attempts used.

    A model config that caches replies (``conversations.replycache``) answers a
    repeated tool-free, temperature-0 call from the cache: shown through
    ``on_delta`` at once, with no provider call, at no cost (``cache_hit``).
    """
    demo_register()
    key = None
    used = call_temperature(config, temperature)
    if reply_cacheable(config=config, tools=tools, temperature=used):
        key = reply_key(
            config=config,
            messages=messages,
            max_tokens=max_tokens or config.max_output_tokens,
            temperature=used,
        )
        cached = await _from_cache(key, on_delta)
        if cached is not None:
            return cached
    chain = [config, *fallbacks]
    spent = _Spent()
    failed: list[str] = []
    error: GatewayError | None = None
    try:
        for index, deployment in enumerate(chain):
            last = index == len(chain) - 1
            passed = await breaker_pass(config=deployment)
            if not passed.allowed:
                error = _paused(deployment, passed)
                failed.append(deployment.name)
                continue
            attempts = settings.TOLLGATE_LLM_MAX_RETRIES + 1
            if not last:
                attempts = min(attempts, settings.TOLLGATE_LLM_FALLBACK_AFTER)
            limit = max_tokens or config.max_output_tokens
            if deployment is not config:
                limit = min(limit, deployment.max_output_tokens)
            try:
                result = await _call_deployment(
                    config=deployment,
                    kwargs=_request(
                        deployment,
                        messages,
                        tools,
                        limit,
                        temperature=call_temperature(deployment, temperature),
                        purpose=purpose,
                    ),
                    on_delta=on_delta,
                    prompt_tokens=prompt_tokens,
                    attempts=attempts,
                    spent=spent,
                    passed=passed,
                )
            except GatewayError as failure:
                error = failure
                if not failure.retryable or last:
                    break
                failed.append(deployment.name)
                logger.warning(
                    "model %s failed (%s); falling back to %s",
                    deployment.name, failure.kind, chain[index + 1].name,
                )  # fmt: skip
                continue
            result.broken = spent.usage
            if failed:
                result.answered_by, result.failed_over = deployment.name, failed
            elif key is not None and result.finish_reason == "stop" and not result.tool_calls:
                reply = CachedReply(result.content, result.finish_reason, result.model)
                await reply_put(key=key, reply=reply)
            return result
    except _StreamStarted as started:
        started.error.failed_over = failed
        raise started.error from started
    if error is None:  # pragma: no cover - the chain is never empty
        raise AssertionError("no model was tried")
    error.usage = spent.usage
    error.failed_over = failed
    raise error
