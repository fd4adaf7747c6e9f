"""Message text → safe HTML: Markdown (markdown-it-py), highlighted code (Pygments),
sanitised with nh3 (an allow-list HTML sanitiser; raw HTML in the source is
never passed through). Tool output is not Markdown: it is escaped as-is.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

_ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "span", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "span": {"class"},
    "code": {"class"},
    "pre": {"class"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}


def _highlight(code: str, lang: str, _attrs: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(lang) if lang else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return f'<pre class="highlight"><code>{escape(code)}</code></pre>'
    body = highlight(code, lexer, HtmlFormatter(nowrap=True))
    return f'<pre class="highlight"><code class="language-{escape(lang)}">{body}</code></pre>'


@lru_cache(maxsize=1)
def _markdown():  # type: ignore[no-untyped-def]
    from markdown_it import MarkdownIt

    return (
        MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "breaks": True})
        .enable("table")
        .enable("strikethrough")
    )


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    # Built once: nh3.clean() converts its allow-lists on every call, which
    # cost about as much as rendering a short message's Markdown.
    return nh3.Cleaner(
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )


def render_markdown(text: str) -> SafeString:
    """Render Markdown ``text`` to sanitised HTML safe to put in a page."""
    clean = _cleaner().clean(_markdown().render(text or ""))
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above


def render_untrusted(text: str) -> SafeString:
    """Escape tool output verbatim (shown in a ``<pre>``, never interpreted)."""
    return escape(text or "")


def pygments_css() -> str:
    """CSS for highlighted code blocks (class ``highlight``)."""
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="friendly").get_style_defs(".highlight")
