"""The LLM gateway: every model call in Tollgate goes through ``stream_chat``.

Built on ``litellm.acompletion(stream=True, stream_options={"include_usage": True})``
so any provider litellm supports works by configuration (``ModelConfig``).
Retries (tenacity) cover 429, 5xx, connection errors and timeouts that happen
before the first token, waiting as long as the provider's ``Retry-After`` asks
(else exponential backoff with jitter); 400/401/403/404 are never retried.
Errors surface as ``GatewayError`` whose ``user_message`` names the cause.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

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
    """Map a litellm/openai exception to a ``GatewayError`` naming the cause."""
    import litellm

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
    if isinstance(exc, litellm.Timeout):
        return GatewayError("timeout", f"{name} did not answer in time (timeout).", retryable=True)
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
    if isinstance(exc, litellm.APIConnectionError) and status in {None, 500}:
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


def cost_for(*, config: ModelConfig, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """USD cost of a call: the ModelConfig's prices when set, else litellm's price map.

    Returns ``None`` when neither knows the model (logged), never a made-up 0.
    """
    if config.input_cost_per_token is not None or config.output_cost_per_token is not None:
        return Decimal(prompt_tokens) * (config.input_cost_per_token or Decimal(0)) + Decimal(
            completion_tokens
        ) * (config.output_cost_per_token or Decimal(0))
    import litellm

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


async def _stream_once(
    *,
    kwargs: dict[str, Any],
    config: ModelConfig,
    on_delta: Callable[[str], Awaitable[None]] | None,
) -> ChatResult:
    import litellm

    started = time.monotonic()
    result = ChatResult(model=config.litellm_model)
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage = None
    first = False
    try:
        response = await litellm.acompletion(**kwargs)
        async for chunk in response:
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
    except GatewayError:
        raise
    except _CallbackError as wrapped:
        # The caller's own error (e.g. StreamAborted): not the provider's, never retried.
        raise wrapped.original from None
    except Exception as exc:
        error = _classify(exc, config)
        if first:
            raise _StreamStarted(error) from exc
        raise error from exc

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
) -> ChatResult:
    """Stream one chat completion from ``config``'s model; return the finished answer.

    ``messages``/``tools`` are OpenAI-format lists. ``on_delta`` is awaited with
    each text delta as it arrives. ``max_tokens`` defaults to
    ``config.max_output_tokens``. Retries up to ``TOLLGATE_LLM_MAX_RETRIES``
    times on retryable errors before the first token, honouring ``Retry-After``
    (capped at ``TOLLGATE_LLM_MAX_RETRY_WAIT`` seconds; a longer wait fails at
    once). Raises ``GatewayError``.
    """
    from tenacity import (
        AsyncRetrying,
        RetryCallState,
        retry_if_exception,
        stop_after_attempt,
        wait_exponential_jitter,
    )

    from conversations.demo import demo_register

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

    max_wait = float(settings.TOLLGATE_LLM_MAX_RETRY_WAIT)
    backoff = wait_exponential_jitter(initial=0.5, max=max_wait, jitter=0.5)

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
