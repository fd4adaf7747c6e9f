from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from tools.registry import ToolArgumentsInvalid, ToolError, registry
from tools.validation import tool_arguments_parse

from .conftest import call


def test_time_now_in_tokyo_and_utc():
    tokyo = call("time.now", user_id=1, timezone="Asia/Tokyo")
    assert tokyo["timezone"] == "Asia/Tokyo"
    assert tokyo["utc_offset"] == "+09:00"
    parsed = dt.datetime.fromisoformat(tokyo["iso"])
    assert parsed.utcoffset() == dt.timedelta(hours=9)
    # The same instant as "now" in UTC, give or take the call itself.
    assert abs(parsed - dt.datetime.now(tz=ZoneInfo("UTC"))) < dt.timedelta(minutes=5)
    assert call("time.now", user_id=1)["utc_offset"] == "+00:00"


def test_time_now_negative_offset_formatting():
    result = call("time.now", user_id=1, timezone="America/St_Johns")  # -03:30 / -02:30
    assert result["utc_offset"] in {"-03:30", "-02:30"}


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime"])
def test_time_now_refuses_unknown_zones(zone):
    with pytest.raises(ToolError, match="Unknown time zone"):
        call("time.now", user_id=1, timezone=zone)


def test_time_now_hints():
    spec = registry.get("time.now")
    assert (spec.read_only, spec.idempotent, spec.open_world, spec.destructive) == (
        True,
        True,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("17*23", 391),
        ("(2 + 3) ** 2 / 5", 5.0),
        ("7 // 2 + 7 % 2", 4),
        ("max(3, 9) - abs(-2)", 7),
        ("round(sqrt(2) * 1000)", 1414),
        ("2 ** 100", 2**100),
        ("factorial(10)", 3628800),
    ],
)
def test_calculator_evaluates(expression, result):
    assert call("calc.evaluate", user_id=1, expression=expression) == {
        "expression": expression,
        "result": result,
    }


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "Refused"),
        ("__import__('os')", "Unknown function '__import__'"),
        ("().__class__.__bases__", "Refused"),
        ("(1).real", "Refused"),
        ("open('/etc/passwd')", "Unknown function 'open'"),
        ("'a' * 10", "Only numbers"),
        ("[1] * 10", "Refused"),
        ("9 ** 9 ** 9", "Exponent"),
        ("2 ** 5000", "Result too large"),
        ("10**900 * 10**900", "Result too large"),
        ("factorial(10000)", "factorial()"),
        ("1 / 0", "Division by zero"),
        ("x + 1", "Unknown name 'x'"),
        ("a = 1", "Refused"),
        ("1; 2", "Only one expression"),
        ("1e308 * 10", "not a finite number"),
        ("lambda: 1", "Refused"),
        ("(", "Not a valid expression"),
    ],
)
def test_calculator_refuses_dangerous_or_bad_input(expression, reason):
    with pytest.raises(ToolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        call("calc.evaluate", user_id=1, expression=expression)


def test_calculator_expression_length_is_limited_by_the_schema():
    spec = registry.get("calc.evaluate")
    with pytest.raises(ToolArgumentsInvalid, match="too long"):
        tool_arguments_parse(spec=spec, raw='{"expression": "' + "1+" * 300 + '1"}')
