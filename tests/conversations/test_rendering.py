"""Markdown → sanitised HTML (``conversations.rendering``)."""

from __future__ import annotations

from conversations.rendering import render_markdown


def test_links_get_rel_and_only_web_or_mail_schemes():
    html = render_markdown(
        "[a](https://example.com) [b](mailto:x@example.com) [c](javascript:alert(1))"
    )
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">a</a>' in html
    assert 'href="mailto:x@example.com"' in html
    assert 'href="javascript:' not in html


def test_raw_html_is_text_and_unlisted_tags_do_not_pass():
    html = render_markdown('![x](https://e.x/a.png) <b onclick="alert(1)">ok</b>')
    assert "<img" not in html  # Markdown makes one; the sanitiser's allow-list drops it
    assert "&lt;b onclick=" in html and "<b" not in html  # raw HTML is shown, never parsed


def test_table_alignment_is_the_only_style_kept():
    html = render_markdown("| a | b |\n|:-:|--:|\n| 1 | 2 |")
    assert '<td style="text-align:center">1</td>' in html
    assert '<th style="text-align:right">b</th>' in html
    assert "<table>" in html


def test_code_is_highlighted_in_allowed_markup():
    html = render_markdown("```python\nprint('hi')\n```")
    assert '<pre class="highlight"><code class="language-python">' in html
    assert "<span" in html and "print" in html
