"""Prompt templates: Jinja2 in its sandbox, every variable required.

A template is compiled by :func:`template_check` when a version is saved (a
template that does not compile is refused with its line and Jinja's message)
and rendered by :func:`template_render` before anything is sent (a variable
with no value is refused with its name; ``StrictUndefined`` catches the ones
only reached at render time).

Templates are written by users and rendered on the server, so the language is
Jinja's sandbox (``SandboxedEnvironment``: no attribute of a Python object that
is private or unsafe, ``range`` bounded) narrowed further, each limit tested in
``tests/prompts/test_templating.py``:

- no macros, ``call`` blocks, ``include``/``import``/``extends`` or blocks, and
  no loop inside a loop or recursive loop: what is left is variables, filters,
  conditionals, ``set``/``with`` and single loops;
- no method calls (``name.upper()``: the ``upper`` filter does it) and only the
  filters in :data:`FILTERS`, none of which can be asked to make a long string
  from a short one (``center``, ``indent``, ``wordwrap``, ``format``,
  ``replace`` are left out);
- ``*`` and ``**`` refuse results past :data:`MAX_REPEAT` items or exponents past
  :data:`MAX_EXPONENT`, ``range`` gives at most :data:`MAX_RANGE` numbers;
- the output stops at ``max_chars`` (rendering is a generator, stopped there).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

#: Filters a template may use (Jinja's builtins, less the ones that can grow a
#: string by a number given to them, or that are not deterministic: ``random``).
FILTERS = frozenset(
    {
        "abs", "attr", "batch", "capitalize", "count", "d", "default", "dictsort", "e",
        "escape", "first", "float", "groupby", "int", "items", "join", "last", "length",
        "list", "lower", "map", "max", "min", "reject", "rejectattr", "reverse", "round",
        "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title",
        "tojson", "trim", "truncate", "unique", "upper", "urlencode", "wordcount",
    }
)  # fmt: skip
#: Statements a template may not use, with what to say.
REFUSED_NODES: dict[type[nodes.Node], str] = {
    nodes.Macro: "macros are not supported",
    nodes.CallBlock: "call blocks are not supported",
    nodes.Include: "include is not supported",
    nodes.Import: "import is not supported",
    nodes.FromImport: "import is not supported",
    nodes.Extends: "extends is not supported",
    nodes.Block: "blocks are not supported",
}
MAX_RANGE = 1000
MAX_REPEAT = 10_000
MAX_EXPONENT = 64


class PromptTemplateError(ValueError):
    """A template refused; ``str(error)`` says why, for people."""


class TemplateInvalid(PromptTemplateError):
    """The template does not compile, or uses what is not allowed (``line``: 1-based)."""

    def __init__(self, message: str, *, line: int | None) -> None:
        self.line = line
        self.detail = message
        super().__init__(f"Line {line}: {message}" if line else message)


class MissingVariables(PromptTemplateError):
    """Rendering needs values for ``names`` (in the template's order) that were not given."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)
        label = "variable" if len(self.names) == 1 else "variables"
        super().__init__(f"Missing {label}: {', '.join(self.names)}.")


class RenderFailed(PromptTemplateError):
    """The template compiled but could not be rendered with the values given."""


def _safe_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() may give at most {MAX_RANGE} numbers")
    return numbers


class _Environment(SandboxedEnvironment):
    """Jinja's sandbox, narrowed (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for items, times in ((left, right), (right, left)):
                repeated = isinstance(items, str | list | tuple) and isinstance(times, int)
                if repeated and len(items) * max(times, 0) > MAX_REPEAT:
                    raise SecurityError(f"a repeated value may be at most {MAX_REPEAT} long")
            return operator.mul(left, right)
        if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent may be at most {MAX_EXPONENT}")
        return operator.pow(left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # Data only: no methods (``text.ljust(10**9)``), the filters do that work.
        return not callable(value) and super().is_safe_attribute(obj, attr, value)


def _environment() -> _Environment:
    env = _Environment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,
    )
    env.filters = {name: env.filters[name] for name in FILTERS}
    env.globals = {"range": _safe_range, "dict": dict}
    return env


_ENV = _environment()


def _refusal(tree: nodes.Template) -> TemplateInvalid | None:
    """What the parsed template uses that is not allowed (the first found)."""
    for kind, message in REFUSED_NODES.items():
        for node in tree.find_all(kind):
            return TemplateInvalid(message, line=node.lineno)
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            return TemplateInvalid("recursive loops are not supported", line=loop.lineno)
        for inner in loop.find_all(nodes.For):
            return TemplateInvalid("a loop inside a loop is not supported", line=inner.lineno)
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Getattr):
            return TemplateInvalid(
                f"method calls are not supported (.{call.node.attr}(); use a filter)",
                line=call.lineno,
            )
    return None


def _parse(text: str) -> nodes.Template:
    try:
        tree = _ENV.parse(text)
    except TemplateSyntaxError as error:
        raise TemplateInvalid(error.message or "syntax error", line=error.lineno) from None
    refusal = _refusal(tree)
    if refusal is not None:
        raise refusal
    # Filters are looked up when the template compiles (an unknown one is refused there).
    try:
        _ENV.compile(tree)
    except TemplateSyntaxError as error:
        raise TemplateInvalid(error.message or "syntax error", line=error.lineno) from None
    return tree


def template_check(text: str) -> list[str]:
    """Compile ``text``; the variables it needs, in the order they are first used
    (the order a form asks for them).

    Raises ``TemplateInvalid`` (with ``line``) when it does not compile or uses
    a statement, filter or method call that is not allowed.
    """
    tree = _parse(text)
    needed = meta.find_undeclared_variables(tree) - set(_ENV.globals)
    ordered: dict[str, None] = {}
    for node in tree.find_all(nodes.Name):
        if node.name in needed:
            ordered.setdefault(node.name)
    return list(ordered)


def template_render(text: str, variables: Mapping[str, str], *, max_chars: int) -> str:
    """Render ``text`` with ``variables`` (name → value; extra names are ignored).

    Raises ``TemplateInvalid`` (it does not compile), ``MissingVariables`` (a
    variable it needs has no value: checked before rendering, by name),
    ``RenderFailed`` (the sandbox refused an operation, a value was used in a
    way it does not allow, or the output passed ``max_chars`` characters).
    """
    needed = template_check(text)
    missing = [name for name in needed if name not in variables]
    if missing:
        raise MissingVariables(missing)
    template = _ENV.from_string(text)
    out: list[str] = []
    length = 0
    try:
        for piece in template.generate({name: variables[name] for name in needed}):
            length += len(piece)
            if length > max_chars:
                raise RenderFailed(
                    f"The rendered text is longer than {max_chars:,} characters."
                ) from None
            out.append(piece)
    except UndefinedError as error:
        raise RenderFailed(f"A value is used in a way it does not allow: {_said(error)}") from None
    except SecurityError as error:
        raise RenderFailed(f"Not allowed in a prompt template: {_said(error)}") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError) as error:
        if isinstance(error, PromptTemplateError):
            raise
        raise RenderFailed(f"The template could not be rendered: {_said(error)}") from None
    return "".join(out)


def _said(error: Exception) -> str:
    """An exception's message as the end of a sentence (one full stop)."""
    return str(error).rstrip(".") + "."
