"""Prompt templates: Jinja's sandbox, strict variables, line numbers, limits."""

from __future__ import annotations

import pytest

from prompts.templating import (
    MAX_RANGE,
    MissingVariables,
    RenderFailed,
    TemplateInvalid,
    template_check,
    template_render,
)


def test_variables_are_found_in_order_and_loop_and_set_names_are_not():
    text = (
        "Write for {{ audience }} about {{ topic|upper }}.\n"
        "{% set tone = 'plain' %}{{ tone }}\n"
        "{% for item in points %}- {{ loop.index }} {{ item }}\n{% endfor %}"
        "{% if extra %}{{ extra }}{% endif %}{{ range(3)|list|length }}"
    )
    assert template_check(text) == ["audience", "topic", "points", "extra"]  # first use first


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("Hello {{ name", 1, "unexpected end of template"),
        ("line one\nline two\n{% if x %}open", 3, "Unexpected end of template"),
        ("a\nb\n{{ name|nosuch }}", 3, "No filter named 'nosuch'"),
        ("x\n{% for a in b %}{% endif %}", 2, "endif"),
        ("{{ x|center(100000000) }}", 1, "No filter named 'center'"),
        ("\n{% macro m() %}{% endmacro %}", 2, "macros are not supported"),
        ("{% include 'other' %}", 1, "include is not supported"),
        ("{% for a in b %}\n{% for c in a %}{% endfor %}{% endfor %}", 2, "loop inside a loop"),
        ("{% for a in b recursive %}{% endfor %}", 1, "recursive loops"),
        ("\n\n{{ name.ljust(10000000) }}", 3, "method calls are not supported"),
    ],
)
def test_a_template_that_does_not_compile_is_refused_with_its_line(text, line, says):
    with pytest.raises(TemplateInvalid) as caught:
        template_check(text)
    assert caught.value.line == line
    assert says.lower() in str(caught.value).lower()
    assert str(caught.value).startswith(f"Line {line}: ")


def test_render_refuses_a_missing_variable_by_name_before_rendering():
    with pytest.raises(MissingVariables) as caught:
        template_render("{{ b }} and {{ a }} and {{ c }}", {"a": "1"}, max_chars=1000)
    assert caught.value.names == ["b", "c"]
    assert str(caught.value) == "Missing variables: b, c."
    with pytest.raises(MissingVariables, match=r"^Missing variable: topic\.$"):
        template_render("About {{ topic }}", {}, max_chars=1000)


def test_render_fills_the_variables_and_ignores_extra_ones():
    text = "Explain {{ topic }} to {{ audience|default('everyone') }}.{% if 0 %}{% endif %}"
    out = template_render(text, {"topic": "DNS", "audience": "a child", "x": "y"}, max_chars=100)
    assert out == "Explain DNS to a child."
    # No HTML escaping: the text goes to a model, not a page.
    assert template_render("{{ a }}", {"a": "<b>&"}, max_chars=100) == "<b>&"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{{ name.__class__ }}", "unsafe"),
        ("{{ 'a' * 100000 }}", "repeated value"),
        ("{{ [1] * 100000 }}", "repeated value"),
        ("{{ 10 ** 1000 }}", "exponent"),
        (f"{{% for i in range({MAX_RANGE + 1}) %}}{{% endfor %}}", "range()"),
        ("{{ name.missing }}", "does not allow"),
        ("{% for i in range(1000) %}{{ name }}{% endfor %}", "longer than"),
    ],
)
def test_the_sandbox_refuses_what_would_escape_or_exhaust_it(text, says):
    with pytest.raises(RenderFailed) as caught:
        template_render(text, {"name": "abcdefghij"}, max_chars=5000)
    assert says in str(caught.value)
