"""Template filters for the chat page."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from conversations.rendering import (
    StreamFrame,
    citations_link,
    markdown_blocks,
    render_markdown,
    render_untrusted,
    sources_cited,
)

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
def citations(html: str, sources: list) -> SafeString:
    """An answer's rendered ``html`` with its ``[n]`` markers linked to the passages
    ``sources`` numbers (``rendering.citations_link``)."""
    return citations_link(html, sources)


@register.filter
def cited(text: str, sources: list) -> tuple[list, bool]:
    """``(sources, cited)``: those of ``sources`` the answer ``text`` cites, or all of
    them when it cites none (``rendering.sources_cited``)."""
    return sources_cited(text, sources)


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
