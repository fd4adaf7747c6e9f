"""Template filters for the chat page."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from conversations.rendering import render_markdown, render_untrusted

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Sanitised HTML of Markdown ``text``."""
    return render_markdown(text)


@register.filter
def untrusted(text: str) -> SafeString:
    """``text`` escaped verbatim (tool output)."""
    return render_untrusted(text)
