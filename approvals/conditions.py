"""Conditions on tool-call arguments: a JSON-path-style field, an operator, a value.

Paths are a small, documented subset of JSONPath: ``path.to.key``,
``items[0].name``, ``items.0.name``, an optional leading ``$.``, and
``["key with.dots"]``. No wildcards or filters: a path names one value.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"""\.?([A-Za-z_][A-Za-z0-9_\-]*|\d+)|\[(\d+)\]|\[(["'])(.*?)\3\]""")
_MISSING = object()


def parse_path(path: str) -> list[str | int]:
    """Split a field path into keys (str) and list indexes (int).

    Raises ``ValueError`` with a readable message for a malformed path.
    """
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    if not text:
        raise ValueError("The field path is empty.")
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"Cannot read the field path {path!r} at position {pos + 1}.")
        name, index, _quote, quoted = match.groups()
        if index is not None:
            parts.append(int(index))
        elif quoted is not None:
            parts.append(quoted)
        elif name is not None and name.isdigit():
            parts.append(int(name))
        else:
            parts.append(name)
        pos = match.end()
    return parts


def resolve_path(data: Any, path: str) -> Any:
    """Return the value at ``path`` in ``data``, or ``MISSING`` when absent."""
    current = data
    for part in parse_path(path):
        if isinstance(part, int) and isinstance(current, list):
            if part >= len(current):
                return _MISSING
            current = current[part]
        elif isinstance(current, dict):
            key = str(part)
            if key not in current:
                return _MISSING
            current = current[key]
        else:
            return _MISSING
    return current


def _json_equal(a: Any, b: Any) -> bool:
    # JSON has no 1 == true: keep booleans apart from numbers.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def condition_matches(*, arguments: Any, path: str, operator: str, value: Any) -> bool:
    """Whether a rule's condition holds for ``arguments``.

    ``equals``: the field equals ``value`` (JSON equality). ``in``: the field
    is one of the list ``value``. ``matches``: the field is a string (numbers
    are compared as their JSON text) and ``re.search(value, field)`` finds a
    match (anchor with ``^``/``$`` for a full match). A missing field never
    matches. A malformed path or regex does not match (admin ``clean()``
    rejects them before saving).
    """
    try:
        field = resolve_path(arguments, path)
    except ValueError:
        return False
    if field is _MISSING:
        return False
    if operator == "equals":
        return _json_equal(field, value)
    if operator == "in":
        return isinstance(value, list) and any(_json_equal(field, v) for v in value)
    if operator == "matches":
        if isinstance(field, bool) or not isinstance(field, str | int | float):
            return False
        if not isinstance(value, str):
            return False
        try:
            return re.search(value, str(field)) is not None
        except re.error:
            return False
    return False
