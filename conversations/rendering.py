"""Message text → safe HTML: Markdown (markdown-it-py), highlighted code (Pygments),
sanitised with nh3 (an allow-list HTML sanitiser; raw HTML in the source is
never passed through). Tool output is not Markdown: it is escaped as-is.

Two ways in, one configuration: ``render_markdown`` renders a whole text once
(a finished message); ``MarkdownStream`` renders a growing text piece by piece
(a reply being streamed), and the pieces it hands out join to exactly what
``render_markdown`` makes of the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

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
    try:
        lexer = get_lexer_by_name(lang) if lang else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return f'<pre class="highlight"><code>{escape(code)}</code></pre>'
    body = highlight(code, lexer, HtmlFormatter(nowrap=True))
    return f'<pre class="highlight"><code class="language-{escape(lang)}">{body}</code></pre>'


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    """The one parser and renderer of message Markdown (both ways in use it).

    The ``reference`` rule is off: a link reference definition (``[x]: url``)
    anywhere in a text turns every ``[x]`` before it into a link, which would
    change blocks a stream has already finished. Without it ``[x]: url`` is a
    paragraph of plain text and ``[x]`` stays as typed, in a finished message
    and a streamed one alike (inline links ``[x](url)`` are unaffected).
    """
    return (
        MarkdownIt("commonmark", {"html": False, "highlight": _highlight, "breaks": True})
        .enable("table")
        .enable("strikethrough")
        .disable("reference")
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


def _sanitised(html: str) -> SafeString:
    return mark_safe(_cleaner().clean(html))  # noqa: S308 - sanitised by nh3 right here


def render_markdown(text: str) -> SafeString:
    """Render Markdown ``text`` to sanitised HTML safe to put in a page (one full render).

    Equal to the pieces ``MarkdownStream`` hands out for the same text, joined.
    """
    return _sanitised(_markdown().render(text or ""))


def _render_tokens(tokens: list[Token]) -> SafeString:
    md = _markdown()
    return _sanitised(md.renderer.render(tokens, md.options, {}))


def _top_level_starts(tokens: list[Token]) -> list[tuple[int, int]]:
    """``(token index, first source line)`` of each top-level block in ``tokens``:
    the level-0 tokens with a line range (closing tokens and inline content have none)."""
    return [
        (i, token.map[0])
        for i, token in enumerate(tokens)
        if token.level == 0 and token.map is not None
    ]


def _normalised(text: str) -> str:
    """``text`` with markdown-it's own input normalisation (each line break to
    LF, NUL to U+FFFD), so that its line numbers index this string's lines."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")


_EMPTY = mark_safe("")


@dataclass(frozen=True)
class StreamFrame:
    """What changed since the previous ``MarkdownStream.render()``.

    ``blocks``: the HTML of each top-level block finished since then, in order
    (each sanitised; empty when none was). ``tail``: the sanitised HTML of
    everything after the finished blocks; it replaces the previous tail.
    """

    blocks: list[SafeString]
    tail: SafeString


class MarkdownStream:
    """Render a growing Markdown text so that each step costs O(new text), not O(text).

    ``feed(delta)`` appends text; ``render()`` returns a ``StreamFrame``. For
    any text, fed in any number of pieces and rendered after any of them::

        "".join(stream.blocks) + stream.render().tail == render_markdown(text)

    How: the text is cut at top-level block boundaries (markdown-it tokens of
    level 0 with a line range). The stream keeps only the text after the
    finished prefix, and ``render()`` parses only that. Every top-level block
    but the last is finished (a later top-level block has started, so nothing
    later can change it): it is rendered once, from its own tokens (the
    renderer's output for a token slice is what it makes of those tokens in
    the whole text), sanitised, appended to ``blocks``, and its text dropped.
    The last block is the unfinished tail, rendered again on every call.

    Edge cases, and what keeps the pieces equal to the whole render:

    - Only complete lines finish a block. The line still being typed can change
      the kind of block it starts, and so whether the block before it ended:
      "para" + LF + "#" is a paragraph and an empty heading, but with "x" added
      it is one paragraph; "***" (a rule) becomes "***bold***"; an opening code
      fence stops being one when its info string gets a backtick; a table's
      delimiter row decides whether the line above it is the table's header or
      the paragraph's last line. So blocks are found in the text up to its last
      line break, and the part-line always stays in the tail.
    - Setext headings (an underline of ``=`` or ``-``), lazy continuation lines,
      loose lists (blank lines between or inside items) and tables: the
      underline, the continuation, the next item and the next row all belong to
      the last block, which stays the tail until a later top-level block starts.
    - A code fence left open runs to the end of the text in both renders: it is
      the tail.
    - ``breaks: True`` only changes line breaks inside a block.
    - Reference-style links are off in the shared configuration (``_markdown``).
    - CR LF, CR and NUL are normalised on the way in as markdown-it does; a CR
      that ends one delta and an LF that starts the next are one line break.

    The tail is still O(its own length) on every call: one huge code fence, a
    long paragraph without a blank line, a long list (a whole list is one
    top-level block until something else starts at its left margin), a long
    table or blockquote. Finding the last line break is an O(tail) scan too.
    """

    def __init__(self) -> None:
        self._rest = ""  # the normalised text after the finished blocks
        self._pending_cr = False  # the last delta ended with CR
        self._new_line = False  # a line break arrived since the last render()
        self._handed_out = 0  # how many of ``blocks`` render() has returned
        #: Sanitised HTML of every finished block, in order.
        self.blocks: list[SafeString] = []
        self._finished_html = ""  # "".join(blocks), grown as they come

    def feed(self, delta: str) -> None:
        """Append ``delta`` (any piece of text, e.g. a provider's token) to the text."""
        if self._pending_cr and delta.startswith("\n"):
            delta = delta[1:]  # the LF of a CR LF split across deltas
        if delta:
            self._pending_cr = delta.endswith("\r")
        delta = _normalised(delta)
        self._new_line = self._new_line or "\n" in delta
        self._rest += delta

    @property
    def finished_html(self) -> SafeString:
        """Every finished block's HTML, joined: kept as made, nothing is rendered."""
        return mark_safe(self._finished_html)  # noqa: S308 - joined sanitised pieces

    def render(self) -> StreamFrame:
        """Finish the blocks that complete lines have closed, then render the tail.

        Returns the blocks finished since the previous call and the tail's HTML.
        Cost, in characters of the text after the finished blocks (``t``): a
        parse of it up to its last line break (only when a line break arrived
        since the previous call), one render of each newly finished block, and
        a parse and render of the tail (skipped when the text ends at a line
        break: the first parse's last block is the tail).
        """
        tail_tokens = None
        if self._new_line:
            self._new_line = False
            tail_tokens = self._finish()
        if tail_tokens is not None:
            tail = _render_tokens(tail_tokens)
        elif self._rest:
            tail = _render_tokens(_markdown().parse(self._rest))
        else:
            tail = _EMPTY
        new = self.blocks[self._handed_out :]
        self._handed_out = len(self.blocks)
        return StreamFrame(blocks=new, tail=tail)

    def _finish(self) -> list[Token] | None:
        """Move the finished blocks out of the text into ``blocks``.

        Returns the tail's tokens when the text ends at a line break (the parse
        of the complete lines was then the parse of the whole text), else None.
        """
        end = self._rest.rfind("\n") + 1
        whole = end == len(self._rest)
        tokens = _markdown().parse(self._rest[:end])
        starts = _top_level_starts(tokens)
        if len(starts) >= 2:
            for (first, _), (after, _) in pairwise(starts):
                html = _render_tokens(tokens[first:after])
                self.blocks.append(html)
                self._finished_html += html
            last, line = starts[-1]
            cut = 0
            for _ in range(line):  # to the start of the tail's first line
                cut = self._rest.index("\n", cut) + 1
            self._rest = self._rest[cut:]
            tokens = tokens[last:]
        return tokens if whole else None


def markdown_blocks(text: str) -> StreamFrame:
    """Split ``text`` as a stream of it is split: its finished blocks and its tail.

    For drawing a reply that is still being streamed (a page loaded mid-reply),
    so that the frames which follow (blocks appended, the tail replaced)
    continue from what the page shows. ``blocks`` is every finished block.
    """
    stream = MarkdownStream()
    stream.feed(text or "")
    return stream.render()


def render_untrusted(text: str) -> SafeString:
    """Escape tool output verbatim (shown in a ``<pre>``, never interpreted)."""
    return escape(text or "")


def pygments_css() -> str:
    """CSS for highlighted code blocks (class ``highlight``)."""
    return HtmlFormatter(style="friendly").get_style_defs(".highlight")


#: A citation marker in an answer's text: ``[1]``, or several: ``[1, 3]``.
_CITATION_RE = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_TAG_RE = re.compile(r"(<[^>]*>)")
_TAG_NAME_RE = re.compile(r"</?([a-zA-Z0-9]+)")
#: Elements whose text is never linked: links already, and code.
_NO_CITATIONS = {"a", "code", "pre"}


def citations_link(html: str, sources: list[dict[str, Any]]) -> SafeString:
    """``html`` (a finished answer, sanitised) with each ``[n]`` of its text that
    numbers one of ``sources`` (``{"n", "name", "where", "url"}`` each: the passages
    the model was given, ``knowledge.tool.hits_sources``) made a link to that
    passage's page; text inside links and code is left alone. A source whose
    ``url`` is not a path of this site is not linked."""
    by_number = {
        int(s["n"]): s
        for s in sources or []
        if isinstance(s, dict)
        and str(s.get("url", "")).startswith("/")
        and not str(s.get("url", "")).startswith("//")
    }
    if not by_number:
        return mark_safe(html)  # noqa: S308 - the caller's sanitised HTML, unchanged

    def link(number: int) -> str:
        source = by_number[number]
        title = source.get("name", "") + (f", {source['where']}" if source.get("where") else "")
        return (
            f'<a class="citation" href="{escape(source["url"])}" title="{escape(title)}">'
            f"{number}</a>"
        )

    def cite(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*,\s*", match.group(1))]
        if not all(n in by_number for n in numbers):
            return match.group(0)
        return "[" + ", ".join(link(n) for n in numbers) + "]"

    out: list[str] = []
    inside = 0
    for piece in _TAG_RE.split(html):
        if piece.startswith("<"):
            name = _TAG_NAME_RE.match(piece)
            if name and name.group(1).lower() in _NO_CITATIONS and not piece.endswith("/>"):
                inside = max(0, inside + (-1 if piece.startswith("</") else 1))
            out.append(piece)
        else:
            out.append(piece if inside else _CITATION_RE.sub(cite, piece))
    return mark_safe("".join(out))  # noqa: S308 - sanitised input; the links are escaped here


def sources_cited(text: str, sources: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The sources an answer's ``text`` cites (``[n]``), in their order, and ``True``;
    or, when it cites none of them, all of ``sources`` and ``False`` (the passages
    it was given, for the page to list as such)."""
    markers = _CITATION_RE.finditer(text or "")
    numbers = {int(n) for match in markers for n in re.split(r"\s*,\s*", match[1])}
    cited = [s for s in sources or [] if isinstance(s, dict) and s.get("n") in numbers]
    return (cited, True) if cited else (list(sources or []), False)
