"""Reading untrusted input: JSON text, ids and text fields, with limits checked first.

Every inbound WebSocket frame and every JSON value a person sends in a form
(edited tool arguments) is parsed here, never with ``json.loads``, whose
decoder recurses once per nesting level (a deeply nested value raises
``RecursionError``) and accepts ``NaN`` and ``Infinity``, which neither JSON
nor PostgreSQL's ``jsonb`` can hold. The parser is pydantic-core's
(``from_json``, the Rust ``jiter`` parser): no recursion in Python, a nesting
limit of its own, strict JSON (no ``NaN``, no trailing commas, no lone
surrogates).

Ids and text go through the same rules on every path: :data:`Id` and
:data:`Text` for pydantic models (WebSocket frames); :func:`id_parse` (a form
field of ids calls it) and ``forms.CharField`` (which refuses NUL characters
with the validator :data:`Text` uses) for Django forms. PostgreSQL text
columns cannot hold NUL, so no NUL character reaches a query.

Errors are :class:`InboundError`, a ``ValueError`` whose message is written
for people.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import ProhibitNullCharactersValidator
from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError, from_json

#: Nesting levels a JSON value may have (a frame needs 3; tool arguments rarely 10).
JSON_MAX_DEPTH = 32
#: Ids are PostgreSQL ``bigint`` primary keys.
ID_RANGE = (1, 2**63 - 1)

_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
_JSON_POSITION = re.compile(r"at line (\d+) column (\d+)$")
_NOT_NUMBERS = ("NaN", "Infinity", "-Infinity")
_no_nul = ProhibitNullCharactersValidator()


class InboundError(ValueError):
    """Input refused; ``str(error)`` says why, for people."""


def json_parse(
    text: str,
    *,
    max_chars: int,
    max_depth: int = JSON_MAX_DEPTH,
    allow_nul: bool = False,
) -> Any:
    """Parse untrusted JSON ``text`` into plain Python values.

    Checks, in order: ``text`` is at most ``max_chars`` characters (before any
    parsing); it is strict JSON; values nest at most ``max_depth`` levels;
    every number is finite (``1e999`` parses to infinity); no string or key
    holds a NUL character, unless ``allow_nul`` (a frame whose fields are then
    checked one by one, with a message naming the field).

    Raises :class:`InboundError` for any of these; never ``RecursionError``.
    """
    if len(text) > max_chars:
        raise InboundError(f"Too long: {len(text):,} characters (the limit is {max_chars:,}).")
    try:
        value = from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise InboundError(_json_error_message(text, str(exc), max_depth)) from None
    except TypeError:  # a str with a lone surrogate, which no UTF-8 input decodes to
        raise InboundError("Not valid JSON: the text is not valid Unicode.") from None
    _json_check(value, max_depth=max_depth, allow_nul=allow_nul)
    return value


def _json_error_message(text: str, error: str, max_depth: int) -> str:
    if error.startswith("recursion limit exceeded"):
        return f"Not valid JSON: nested more than {max_depth} levels deep."
    found = _JSON_POSITION.search(error)
    if found:
        lines = text.splitlines() or [""]
        row, column = int(found.group(1)), int(found.group(2))
        line = lines[row - 1] if 0 < row <= len(lines) else ""
        # jiter points at the value it could not read, or just past a "-" sign.
        for start in (column - 1, column - 2):
            if start >= 0 and line[start:].startswith(_NOT_NUMBERS):
                return "Not valid JSON: NaN and Infinity are not numbers JSON can hold."
    return f"Not valid JSON: {error}."


def _json_check(value: Any, *, max_depth: int, allow_nul: bool) -> None:
    """Walk ``value`` without recursion: depth, finite numbers, NUL characters."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InboundError(f"Not valid JSON: nested more than {max_depth} levels deep.")
            for key, child in item.items():
                if not allow_nul and "\x00" in key:
                    raise InboundError(_nul_message())
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise InboundError(f"Not valid JSON: nested more than {max_depth} levels deep.")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InboundError("Not valid JSON: a number is too large to hold.")
        elif isinstance(item, str) and not allow_nul and "\x00" in item:
            raise InboundError(_nul_message())


def _nul_message() -> str:
    return str(_no_nul.message)


def _id(value: Any) -> int:
    """An id as pydantic reads it: an int, or a string of ASCII digits (what a form
    sends), within :data:`ID_RANGE`. Not a bool, a float, ``"²"`` or ``" 7"``."""
    if isinstance(value, str) and _ASCII_DIGITS.fullmatch(value):
        value = int(value)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and ID_RANGE[0] <= value <= ID_RANGE[1]
    ):
        return value
    raise PydanticCustomError("id", "Expected an id (a whole number from 1).")


def _text(value: str) -> str:
    try:
        _no_nul(value)
    except DjangoValidationError:
        raise PydanticCustomError("nul", _nul_message()) from None
    return value


def id_parse(value: Any) -> int | None:
    """``value`` as an id (see :data:`Id`), or ``None`` when it is not one."""
    try:
        return _id(value)
    except PydanticCustomError:
        return None


#: A row id in a pydantic model (see ``_id``).
Id = Annotated[int, BeforeValidator(_id)]
#: Text without NUL characters (Django's ``ProhibitNullCharactersValidator``).
Text = Annotated[str, AfterValidator(_text)]


def form_message(form: Any) -> str:
    """A Django form's errors as one line for people:
    ``"Title: Null characters are not allowed."`` (a field's label, then its errors)."""
    parts = []
    for field, errors in form.errors.items():
        text = " ".join(str(error) for error in errors)
        parts.append(text if field == "__all__" else f"{form[field].label}: {text}")
    return " ".join(parts)
