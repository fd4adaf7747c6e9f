"""Side-by-side diffs of two texts (two prompt versions, a draft and its rewrite).

``difflib.HtmlDiff`` draws the table (it escapes the texts); its output is then
passed through nh3 with an allow-list of the table's own tags and attributes,
so nothing else can reach the page whatever the texts hold.
"""

from __future__ import annotations

import difflib
import functools

import nh3
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# No links: the "next change" column's anchors are dropped (their text stays, in a
# column the stylesheet hides).
_TAGS = {"table", "colgroup", "col", "thead", "tbody", "tr", "th", "td", "span"}
_ATTRIBUTES = {
    "table": {"class", "summary"},
    "td": {"class", "nowrap"},
    "th": {"class", "colspan"},
    "span": {"class"},
}


@functools.cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(tags=_TAGS, attributes=_ATTRIBUTES, url_schemes=set(), link_rel=None)


def diff_table(
    before: str, after: str, *, before_title: str, after_title: str, context: bool = False
) -> SafeString:
    """The two texts side by side, line by line, changes marked within lines.

    ``context``: only the changed lines and a few around them (long texts).
    Returns sanitised HTML (a ``<table class="diff">``; its ``diff_next`` cells
    are for the stylesheet to hide).
    """
    table = difflib.HtmlDiff(tabsize=4, wrapcolumn=72).make_table(
        before.splitlines(),
        after.splitlines(),
        fromdesc=escape(before_title),  # put in as it is given
        todesc=escape(after_title),
        context=context,
        numlines=3,
    )
    return mark_safe(_cleaner().clean(table))  # noqa: S308 - sanitised by nh3 right here


def texts_equal(before: str, after: str) -> bool:
    """Whether two texts are the same once line endings are normalised."""
    return before.splitlines() == after.splitlines()
