"""Parsing and validating the arguments a model sent for a tool call.

Validation uses the ``jsonschema`` library (Draft 2020-12, the dialect pydantic
emits) against the tool's ``parameters``, before anything else happens to the
call. A failure is a :class:`~tools.registry.ToolArgumentsInvalid` whose message
is written for the model, so the agent loop can return it as the tool result.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from tools.registry import ToolArgumentsInvalid, ToolSpec

MAX_ARGUMENTS_CHARS = 200_000
MAX_REPORTED_ERRORS = 5


@lru_cache(maxsize=512)
def _validator(spec: ToolSpec) -> Draft202012Validator:
    return Draft202012Validator(spec.parameters)


def tool_arguments_validate(*, spec: ToolSpec, arguments: Any) -> dict[str, Any]:
    """Check already-decoded ``arguments`` against ``spec.parameters``.

    Returns the same dict. Raises :class:`ToolArgumentsInvalid` listing up to
    five problems, each prefixed with the JSON path of the offending value.
    """
    if not isinstance(arguments, dict):
        raise ToolArgumentsInvalid(
            f"Invalid arguments for tool {spec.name}: expected a JSON object, "
            f"got {type(arguments).__name__}."
        )
    errors = sorted(_validator(spec).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if errors:
        problems = []
        for error in errors[:MAX_REPORTED_ERRORS]:
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        more = len(errors) - len(problems)
        message = f"Invalid arguments for tool {spec.name}: " + "; ".join(problems)
        if more:
            message += f" (and {more} more)"
        raise ToolArgumentsInvalid(message + ".", errors=problems)
    return arguments


def tool_arguments_parse(*, spec: ToolSpec, raw: str) -> dict[str, Any]:
    """Decode the model's JSON argument string and validate it against the schema.

    ``raw`` is the ``function.arguments`` string of an OpenAI-format tool call;
    an empty or blank string means ``{}``. Returns the arguments dict. Raises
    :class:`ToolArgumentsInvalid` (message fit for the model) when ``raw`` is
    longer than ``MAX_ARGUMENTS_CHARS``, is not JSON, is not an object, or does
    not match ``spec.parameters``.
    """
    if len(raw) > MAX_ARGUMENTS_CHARS:
        raise ToolArgumentsInvalid(
            f"Invalid arguments for tool {spec.name}: longer than {MAX_ARGUMENTS_CHARS} characters."
        )
    if not raw.strip():
        arguments: Any = {}
    else:
        try:
            arguments = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ToolArgumentsInvalid(
                f"Invalid arguments for tool {spec.name}: not valid JSON ({exc.msg} at "
                f"line {exc.lineno} column {exc.colno}). Send a JSON object."
            ) from exc
    return tool_arguments_validate(spec=spec, arguments=arguments)
