from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import Field

from tools.registry import ToolArgumentsInvalid, spec_from_function
from tools.validation import tool_arguments_parse


def _fn(key: Annotated[str, Field(max_length=5)], count: int = 1) -> str:
    return key


SPEC = spec_from_function(_fn, name="v.test")


def test_valid_arguments_are_returned():
    assert tool_arguments_parse(spec=SPEC, raw='{"key": "abc", "count": 2}') == {
        "key": "abc",
        "count": 2,
    }


def test_empty_string_means_no_arguments():
    def fn(x: int = 1) -> str:
        return ""

    spec = spec_from_function(fn, name="v.empty")
    assert tool_arguments_parse(spec=spec, raw="") == {}
    with pytest.raises(ToolArgumentsInvalid, match="'key' is a required property"):
        tool_arguments_parse(spec=SPEC, raw="  ")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"key": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got str"),
        ('{"key": 5}', "key: 5 is not of type 'string'"),
        ('{"key": "toolong"}', "key: 'toolong' is too long"),
        ('{"key": "a", "count": "two"}', "count: 'two' is not of type 'integer'"),
        ('{"key": "a", "extra": 1}', "Additional properties are not allowed ('extra'"),
        ("{}", "'key' is a required property"),
    ],
)
def test_invalid_arguments_give_a_message_for_the_model(raw, expected):
    with pytest.raises(ToolArgumentsInvalid) as excinfo:
        tool_arguments_parse(spec=SPEC, raw=raw)
    message = str(excinfo.value)
    assert message.startswith("Invalid arguments for tool v.test: ")
    assert expected in message


def test_several_problems_are_listed():
    with pytest.raises(ToolArgumentsInvalid) as excinfo:
        tool_arguments_parse(spec=SPEC, raw='{"key": 1, "count": "x", "other": true}')
    assert len(excinfo.value.errors) == 3


def test_oversized_arguments_are_refused():
    with pytest.raises(ToolArgumentsInvalid, match="longer than"):
        tool_arguments_parse(spec=SPEC, raw='{"key": "' + "a" * 300_000 + '"}')
