"""Fit a conversation into a model's context window by dropping the oldest turns.

Rules: leading system messages are always kept; an assistant message with
``tool_calls`` and the tool results that answer it are dropped together or not
at all; the newest group is always kept. Tokens are counted with
``litellm.token_counter`` for the model (overcounting slightly per message,
which errs on the side of fitting).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from conversations.gateway import GatewayError


@dataclass
class FitResult:
    """``messages`` to send, how many were ``dropped``, and the ``prompt_tokens`` estimate.

    ``kept_from``: the index, in the messages given, of the first message after the
    leading system ones that is sent (where the dropped ones stop).
    """

    messages: list[dict[str, Any]]
    dropped: int
    prompt_tokens: int
    kept_from: int = 0


def _groups(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into droppable units: a tool-calling assistant message with its results is one."""
    groups: list[list[dict[str, Any]]] = []
    for message in messages:
        if (
            message.get("role") == "tool"
            and groups
            and (groups[-1][0].get("role") == "assistant" and groups[-1][0].get("tool_calls"))
        ):
            groups[-1].append(message)
        else:
            groups.append([message])
    return groups


@functools.lru_cache(maxsize=16_384)
def _tokens(model: str, item: str, is_tools: bool) -> int:
    """``litellm.token_counter`` of one message (or a tools list), as JSON."""
    import litellm  # deliberately lazy: seconds at import (conversations.gateway.gateway_preload)

    value = json.loads(item)
    if is_tools:
        return litellm.token_counter(model=model, messages=[], tools=value)
    return litellm.token_counter(model=model, messages=[value])


def token_count(
    *, model: str, message: dict[str, Any] | None = None, tools: list | None = None
) -> int:
    """Tokens of one OpenAI-format ``message`` or of a ``tools`` list for ``model``.

    Memoised per process: every step of a run counts the whole history again,
    and all but the newest messages were counted at the step before.
    """
    if tools is not None:
        return _tokens(model, json.dumps(tools, sort_keys=True, default=str), True)
    return _tokens(
        model, json.dumps(_without_image_data(message), sort_keys=True, default=str), False
    )


def _without_image_data(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """``message`` with each image part's data URL left out: litellm counts an image
    of ``auto`` detail at a fixed number of tokens, whatever its data, and the memo's
    keys should not hold megabytes of base64."""
    content = (message or {}).get("content")
    if not isinstance(content, list):
        return message
    parts = [
        {**part, "image_url": {**part["image_url"], "url": "image"}}
        if isinstance(part, dict) and isinstance(part.get("image_url"), dict)
        else part
        for part in content
    ]
    return {**(message or {}), "content": parts}


def context_fit(
    *,
    messages: list[dict[str, Any]],
    model: str,
    context_window: int,
    max_output_tokens: int,
    tools: list[dict] | None = None,
) -> FitResult:
    """Drop the oldest turns until prompt + ``max_output_tokens`` fits ``context_window``.

    Arguments are OpenAI-format messages/tools and token counts. Raises
    ``GatewayError("context_too_long")`` when even the system prompt plus the
    newest turn do not fit.
    """

    def count(batch: list[dict[str, Any]]) -> int:
        return sum(token_count(model=model, message=m) for m in batch)

    head_len = 0
    while head_len < len(messages) and messages[head_len].get("role") == "system":
        head_len += 1
    head, rest = messages[:head_len], messages[head_len:]
    groups = _groups(rest)
    budget = context_window - max_output_tokens
    fixed = count(head) + 3
    if tools:
        fixed += token_count(model=model, tools=tools)
    sizes = [count(group) for group in groups]
    total = fixed + sum(sizes)
    dropped = 0
    first = 0
    while total > budget and first < len(groups) - 1:
        total -= sizes[first]
        dropped += len(groups[first])
        first += 1
    if total > budget:
        raise GatewayError(
            "context_too_long",
            f"The message is too long for this model: about {total} tokens plus "
            f"{max_output_tokens} for the answer exceed its {context_window}-token context "
            "window. Shorten it or pick a model with a larger context.",
        )
    kept = [m for group in groups[first:] for m in group]
    return FitResult(
        messages=head + kept, dropped=dropped, prompt_tokens=total, kept_from=head_len + dropped
    )
