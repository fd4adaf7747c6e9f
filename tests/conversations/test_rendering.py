"""Markdown → sanitised HTML (``conversations.rendering``)."""

from __future__ import annotations

import pytest

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


# -- MarkdownStream: a growing reply rendered piece by piece ------------------------

REPLIES = {
    "paragraphs with breaks": (
        "Hello **world**,\nthis is a second line of the same paragraph.\n\n"
        "A new paragraph with `code`, ~~strike~~ and [a link](https://example.com).\n"
        "Soft break here\nand here.\n"
    ),
    "headings": (
        "# Title\nIntro right under it.\n\n## Section\n\nSetext one\n===\n\n"
        "Setext two\nover two lines\n---\ntext\n***\n***bold***, not a rule\n"
    ),
    "nested lists": (
        "Steps:\n\n- first\n- second\n  - nested a\n  - nested b\n    1. deeper\n    2. deeper\n"
        "- third\n\nAfter the list.\n1. starts a list that interrupts\n2. two\n"
    ),
    "loose lists": (
        "1. one\n\n2. two\n\n   more of two\n\n3. three\nlazy line\n\n"
        "* a\n\n  b\n* c\n\n\n- d\n+ e\n\n10. ten\n11) eleven\n\nend"
    ),
    "code fences": (
        "Run this:\n\n```python\ndef f(x):\n    return x * 2\n```\nThen:\n```\nplain\n```\n"
        "~~~bash\necho hi\n~~~\n\n    indented\n\n    code\n\nNot a fence: ```a`\n```` \nlast,"
        " left open:\n```js\nconst a = 1;\nconst b = [a,"
    ),
    "tables": (
        "| a | b |\n|:-:|--:|\n| 1 | 2 |\n| 3 | 4 |\n\nAfter the table\npara\n"
        "| x | y |\n|---|---|\n| 5 | 6 |\nrow without pipes\n\n| only | header |\n|-"
    ),
    "blockquotes": (
        "> quoted\nlazy continuation\n> > nested\n>\n> - list in quote\n\n> second quote\n\n"
        "para\n> quote interrupts\n\nend\n"
    ),
    "lines that change kind when they grow": (
        "para\n#\n#x not a heading\n# heading\npara\n[x]: https://example.com\n[x] and [x][]\n"
        "a\r\nb\r\n\r\nc\rd\0e\n"
    ),
}


def _pieces(stream, *texts):
    """Feed ``texts`` one render() each; return (blocks handed out, last tail)."""
    handed: list[str] = []
    tail = ""
    for text in texts:
        stream.feed(text)
        frame = stream.render()
        handed += frame.blocks
        tail = frame.tail
    return handed, tail


@pytest.mark.parametrize("name", REPLIES)
def test_pieces_split_at_every_position_join_to_the_whole_render(name):
    from conversations.rendering import MarkdownStream

    text = REPLIES[name]
    whole = render_markdown(text)
    assert whole  # the reply renders to something
    for i in range(len(text) + 1):
        stream = MarkdownStream()
        blocks, tail = _pieces(stream, text[:i], text[i:])
        assert "".join(blocks) + tail == whole, (i, text[:i])
        assert blocks == stream.blocks  # each finished block handed out once, in order


@pytest.mark.parametrize("name", REPLIES)
def test_every_frame_fed_character_by_character_is_the_whole_render_so_far(name):
    from conversations.rendering import MarkdownStream

    text = REPLIES[name]
    stream = MarkdownStream()
    blocks: list[str] = []
    for n, char in enumerate(text, start=1):
        stream.feed(char)
        frame = stream.render()
        blocks += frame.blocks
        assert "".join(blocks) + frame.tail == render_markdown(text[:n]), text[:n]
    assert blocks  # every reply has finished blocks before its tail
    assert stream.finished_html == "".join(blocks)


@pytest.mark.parametrize("name", REPLIES)
def test_a_page_drawn_mid_reply_is_split_as_the_stream_was(name):
    """``markdown_blocks`` (a page loaded mid-reply) gives the same finished blocks as
    a stream that got the same text in pieces, so the stream's next frame continues it."""
    from conversations.rendering import MarkdownStream, markdown_blocks

    text = REPLIES[name]
    for i in range(0, len(text) + 1, 7):
        stream = MarkdownStream()
        _pieces(stream, *[text[j : min(j + 3, i)] for j in range(0, i, 3)])
        drawn = markdown_blocks(text[:i])
        assert drawn.blocks == stream.blocks
        assert "".join(drawn.blocks) + drawn.tail == render_markdown(text[:i])


def test_finished_blocks_are_parsed_and_rendered_once(monkeypatch):
    """A frame parses only the text after the finished blocks (what it parses does
    not grow with the reply) and renders each finished block once, plus the tail."""
    from conversations import rendering

    md = rendering._markdown()
    parsed: list[int] = []
    real_parse = md.parse

    def parse(src, env=None):
        parsed.append(len(src))
        return real_parse(src, env)

    renders = 0
    real_render = rendering._render_tokens

    def render_tokens(tokens):
        nonlocal renders
        renders += 1
        return real_render(tokens)

    monkeypatch.setattr(md, "parse", parse)
    monkeypatch.setattr(rendering, "_render_tokens", render_tokens)
    stream = rendering.MarkdownStream()
    frames = 0
    for i in range(200):
        for word in f"Paragraph {i} has some words, enough to matter.\n\n".split(" "):
            stream.feed(word + " ")
            stream.render()
            frames += 1
    assert len(stream.blocks) == 199  # the last paragraph is the tail
    assert max(parsed) < 120  # two paragraphs at most, never the whole reply
    assert renders == frames + len(stream.blocks)  # one tail per frame, each block once


def test_reference_definitions_are_text_in_both_renders():
    """A ``[x]: url`` line later in a reply would turn an earlier, finished ``[x]``
    into a link; the rule is off, in the one configuration both renders use."""
    from conversations.rendering import markdown_blocks

    text = "See [x].\n\nMore.\n\n[x]: https://example.com\n"
    html = render_markdown(text)
    assert "<a" not in html
    assert "[x]: https://example.com" in html
    drawn = markdown_blocks(text)
    assert "".join(drawn.blocks) + drawn.tail == html
