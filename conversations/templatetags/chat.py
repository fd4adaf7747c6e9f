"""Template filters for the chat page."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from conversations.rendering import StreamFrame, markdown_blocks, render_markdown, render_untrusted

register = template.Library()

#: What a guardrail of each stage acted on, as the chat says it.
STAGE_LABELS = {
    "user_input": "your message",
    "model_output": "the answer",
    "tool_arguments": "the tool call's arguments",
    "tool_output": "the tool's output",
}


@register.filter
def markdown(text: str) -> SafeString:
    """Sanitised HTML of Markdown ``text``."""
    return render_markdown(text)


@register.filter
def markdown_stream(text: str) -> StreamFrame:
    """Markdown ``text`` of a reply still being streamed, split as its stream splits
    it: ``.blocks`` (the finished blocks' sanitised HTML, a list) and ``.tail``."""
    return markdown_blocks(text)


@register.filter
def untrusted(text: str) -> SafeString:
    """``text`` escaped verbatim (tool output)."""
    return render_untrusted(text)


@register.filter
def guardrail_stage(stage: str) -> str:
    """What a guardrail's stage acted on, in words (``conversations.guarding``)."""
    return STAGE_LABELS.get(stage, stage)
