from __future__ import annotations

import threading
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

import pytest
from asgiref.sync import async_to_sync
from pydantic import BaseModel, Field

from tools.registry import (
    ToolAlreadyRegistered,
    ToolArgumentsInvalid,
    ToolContext,
    ToolRegistry,
    ToolSpec,
    registry,
    spec_from_function,
    tool,
)


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


def test_schema_is_derived_from_type_hints():
    local = ToolRegistry()

    @tool(name="demo.paint", into=local, read_only=False)
    def paint(
        ctx: ToolContext,
        colour: Colour,
        times: Annotated[int, Field(ge=1, le=5, description="How often.")] = 1,
        where: Point | None = None,
        mode: Literal["fast", "slow"] = "fast",
        tags: list[str] | None = None,
    ) -> str:
        """Paint something."""
        return "ok"

    spec = local.get("demo.paint")
    schema = spec.parameters
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"colour", "times", "where", "mode", "tags"}
    assert "ctx" not in schema["properties"]
    assert schema["required"] == ["colour"]
    assert schema["properties"]["times"] == {
        "default": 1,
        "description": "How often.",
        "maximum": 5,
        "minimum": 1,
        "title": "Times",
        "type": "integer",
    }
    assert schema["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert schema["$defs"]["Colour"]["enum"] == ["red", "blue"]
    assert schema["$defs"]["Point"]["required"] == ["x"]
    assert spec.description == "Paint something."
    assert paint.tool_spec is spec


def test_wire_name_and_openai_tool_shape():
    local = ToolRegistry()

    @tool(name="notes.delete_all", into=local)
    def fn(key: str) -> str:
        "Delete."
        return key

    spec = local.get("notes.delete_all")
    assert spec.wire_name == "notes__delete_all"
    assert local.get_by_wire_name("notes__delete_all") is spec
    assert spec.openai_tool() == {
        "type": "function",
        "function": {
            "name": "notes__delete_all",
            "description": "Delete.",
            "parameters": spec.parameters,
        },
    }


def test_builtin_wire_names_are_provider_safe():
    import re

    names = {spec.name for spec in registry.all()}
    assert {"time.now", "calc.evaluate", "http.get"} <= names
    assert {"notes.list", "notes.read", "notes.write", "notes.delete"} <= names
    for spec in registry.all():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", spec.wire_name), spec.wire_name


@pytest.mark.parametrize("name", ["", "has space", "a..b", "slash/name", "x" * 70, ".lead"])
def test_bad_tool_names_are_refused(name):
    def fn() -> str:
        return ""

    with pytest.raises(ValueError):
        spec_from_function(fn, name=name)


def test_name_and_wire_name_clashes_are_refused():
    local = ToolRegistry()

    def fn() -> str:
        return ""

    local.register(spec_from_function(fn, name="a.b"))
    with pytest.raises(ToolAlreadyRegistered):
        local.register(spec_from_function(fn, name="a.b"))
    with pytest.raises(ToolAlreadyRegistered, match="same wire name"):
        local.register(spec_from_function(fn, name="a__b"))
    assert local.unregister("a.b") is not None
    assert local.get_by_wire_name("a__b") is None
    local.register(spec_from_function(fn, name="a__b"))


def test_missing_type_hint_is_refused():
    def fn(x) -> str:  # type: ignore[no-untyped-def]
        return ""

    with pytest.raises(TypeError, match="type hint"):
        spec_from_function(fn, name="bad.hint")


def test_hint_defaults_follow_mcp_semantics():
    def fn() -> str:
        return ""

    plain = spec_from_function(fn, name="x.plain")
    assert (plain.read_only, plain.destructive, plain.idempotent, plain.open_world) == (
        False,
        True,
        False,
        True,
    )
    reader = spec_from_function(fn, name="x.reader", read_only=True)
    assert (reader.destructive, reader.idempotent) == (False, True)
    assert reader.hints() == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": True,
    }


def test_a_tools_own_cost_is_no_estimate_unless_declared():
    def fn() -> str:
        return ""

    assert spec_from_function(fn, name="x.free").cost_usd_estimate is None
    assert all(spec.cost_usd_estimate is None for spec in registry.all())  # no built-in has one
    local = ToolRegistry()
    tool(name="x.paid", into=local, cost_usd_estimate=Decimal("0.01"))(fn)
    assert local.get("x.paid").cost_usd_estimate == Decimal("0.01")
    assert spec_from_function(fn, name="x.str", cost_usd_estimate="0.5").cost_usd_estimate == (
        Decimal("0.5")
    )
    for bad in (Decimal(-1), Decimal("NaN"), 0.1, True, "cheap"):
        with pytest.raises(ValueError, match="cost_usd_estimate"):
            spec_from_function(fn, name="x.bad", cost_usd_estimate=bad)


def test_handler_coerces_with_pydantic_and_passes_context():
    seen = {}

    def fn(ctx: ToolContext, colour: Colour, where: Point) -> str:
        seen.update(ctx=ctx, colour=colour, where=where, thread=threading.current_thread())
        return "done"

    spec = spec_from_function(fn, name="x.coerce")
    ctx = ToolContext(user_id=7, run_id=3)
    result = async_to_sync(spec.handler)({"colour": "red", "where": {"x": 2}}, ctx)
    assert result == "done"
    assert seen["ctx"] is ctx
    assert seen["colour"] is Colour.RED
    assert seen["where"] == Point(x=2, y=0)
    # A sync handler runs in a worker thread, never on the event loop's thread.
    assert seen["thread"] is not threading.main_thread()

    with pytest.raises(ToolArgumentsInvalid, match="colour"):
        async_to_sync(spec.handler)({"colour": "green", "where": {"x": 2}}, ctx)


def test_dynamic_tools_are_resolved_by_name_and_never_listed():
    local = ToolRegistry()

    async def handler(arguments, ctx):
        return "ok"

    def resolve(name: str) -> ToolSpec | None:
        if not name.startswith("family_"):
            return None
        return ToolSpec(
            name=name,
            description="One of a family of tools made on demand.",
            parameters={"type": "object", "properties": {}},
            handler=handler,
            metadata={"dynamic": True},
        )

    local.dynamic_register(resolve)
    local.dynamic_register(resolve)  # added once
    assert local._dynamic == [resolve]
    one = local.get("family_one")
    assert one is not None and one.name == "family_one"
    two = local.get_by_wire_name("family_two")
    assert two is not None and two.name == "family_two"
    assert local.get("other") is None
    assert local.all() == []
