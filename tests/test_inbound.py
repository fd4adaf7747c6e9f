"""Reading untrusted input (``project.inbound``): JSON, ids and text (issue 20's examples)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from project.inbound import Id, InboundError, Text, id_parse, json_parse


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"key": "meeting"}', {"key": "meeting"}),
        ("[1, 2.5, true, null]", [1, 2.5, True, None]),
        ('"caf\\u00e9 \\ud83d\\ude00"', "café 😀"),  # a surrogate pair is one character
        ("12345678901234567890123", 12345678901234567890123),
        ("[[[]]]", [[[]]]),
    ],
)
def test_plain_json_is_read(text, value):
    assert json_parse(text, max_chars=1000) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "Not valid JSON: EOF while parsing"),
        ('{"key": "m",}', "trailing comma"),
        ("{'key': 'm'}", "Not valid JSON"),
        ('{"key": NaN}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": Infinity}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": -Infinity}', "NaN and Infinity are not numbers JSON can hold"),
        ("NaN", "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": 1e999}', "a number is too large to hold"),
        ('{"key": -1e999}', "a number is too large to hold"),
        ('{"key": "a\\u0000b"}', "Null characters are not allowed."),
        ('{"\\u0000": 1}', "Null characters are not allowed."),
        ('["\\u0000"]', "Null characters are not allowed."),
        ('{"key": "\\ud800"}', "Not valid JSON: unexpected end of hex escape"),
        ('{"key": "\\udfff"}', "Not valid JSON: lone leading surrogate"),
        ("[" * 33 + "]" * 33, "nested more than 32 levels deep"),
        ('{"a":' * 33 + "1" + "}" * 33, "nested more than 32 levels deep"),
        ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),  # no RecursionError
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested more than 32 levels deep"),
        ("\ud800", "the text is not valid Unicode"),
    ],
)
def test_bad_json_is_refused_with_a_message(text, message):
    with pytest.raises(InboundError) as refused:
        json_parse(text, max_chars=10_000_000)
    assert message in str(refused.value)


def test_the_length_is_checked_before_parsing(monkeypatch):
    import project.inbound

    def never(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(project.inbound, "from_json", never)
    with pytest.raises(InboundError, match=r"Too long: 1,001 characters \(the limit is 1,000\)"):
        json_parse("[" + "1," * 499 + "1]", max_chars=1000)


def test_the_depth_limit_is_the_callers():
    assert json_parse('{"a": {"b": 1}}', max_chars=99, max_depth=2) == {"a": {"b": 1}}
    with pytest.raises(InboundError, match="nested more than 1 levels deep"):
        json_parse('{"a": {"b": 1}}', max_chars=99, max_depth=1)


def test_nul_characters_may_be_left_to_the_fields():
    assert json_parse('{"content": "a\\u0000"}', max_chars=99, allow_nul=True) == {
        "content": "a\x00"
    }


class _Row(BaseModel):
    id: Id
    text: Text = ""


@pytest.mark.parametrize("value", [1, 42, "7", "0042", 2**63 - 1, str(2**63 - 1)])
def test_ids_are_whole_numbers_from_one(value):
    assert _Row(id=value).id == int(value)
    assert id_parse(value) == int(value)


@pytest.mark.parametrize(
    "value",
    [
        "²",  # str.isdigit() says yes, int() says no
        "\u0661",  # an Arabic-Indic one: int() reads it as 1
        " 7",
        "7 ",
        "+7",
        "-5",
        "1e3",
        "0x10",
        "7\x00",
        "",
        "9" * 400,
        0,
        -1,
        2**63,
        True,
        False,
        1.0,
        1.5,
        None,
        [1],
        {"a": 1},
    ],
)
def test_anything_else_is_not_an_id(value):
    with pytest.raises(ValidationError, match="Expected an id"):
        _Row(id=value)
    assert id_parse(value) is None


def test_text_refuses_nul_characters():
    assert _Row(id=1, text="tab\tand newline\n").text == "tab\tand newline\n"
    with pytest.raises(ValidationError, match=r"Null characters are not allowed\."):
        _Row(id=1, text="a\x00b")
