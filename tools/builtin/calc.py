"""``calc.evaluate``: arithmetic over a safe expression evaluator (``simpleeval``).

The expression is parsed by ``simpleeval`` (an AST walker, never ``eval``)
with a closed set of operators, functions and constants. Attribute access,
subscripts, strings, f-strings, assignments and comprehensions are refused, and
sizes are bounded: the expression length, exponents, and the magnitude of
integer results (so ``9**9**9`` is refused instead of eating the worker).
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from typing import Annotated, Any

import simpleeval
from pydantic import Field

from tools.registry import ToolError, tool

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 10_000
MAX_RESULT_DIGITS = 1_000  # integers beyond 10**1000 are refused

_FUNCTIONS = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": lambda n: _factorial(n),
}
_NAMES = {"pi": math.pi, "e": math.e, "tau": math.tau, "True": True, "False": False}
# Node types the evaluator will not walk at all.
_REFUSED_NODES = (
    "Attribute",
    "Subscript",
    "Slice",
    "Index",
    "JoinedStr",
    "FormattedValue",
    "Assign",
    "AugAssign",
    "Import",
    "ListComp",
    "SetComp",
    "DictComp",
    "GeneratorExp",
    "List",
    "Tuple",
    "Dict",
    "Set",
    "Str",
)


def _check_int(value: Any) -> Any:
    too_big = isinstance(value, int) and value.bit_length() > MAX_RESULT_DIGITS * 3.33
    if too_big:
        raise ToolError(f"Result too large (more than {MAX_RESULT_DIGITS} digits).")
    return value


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or n < 0 or n > 450:
        raise ToolError("factorial() takes a whole number from 0 to 450.")
    return math.factorial(n)


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"Exponent {exponent} is larger than {MAX_EXPONENT}.")
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        digits = exponent * math.log10(abs(base))
        if digits > MAX_RESULT_DIGITS:
            raise ToolError(f"Result too large (about {int(digits)} digits).")
    return base**exponent


def _binary(fn: Any) -> Any:
    def checked(a: Any, b: Any) -> Any:
        return _check_int(fn(a, b))

    return checked


_OPERATORS = {
    ast.Add: _binary(operator.add),
    ast.Sub: _binary(operator.sub),
    ast.Mult: _binary(operator.mul),
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def calc_evaluate_expression(expression: str) -> int | float | bool:
    """Evaluate ``expression`` safely. Raises :class:`ToolError` with the reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"Expression longer than {MAX_EXPRESSION_CHARS} characters.")
    evaluator = simpleeval.SimpleEval(
        operators=dict(_OPERATORS), functions=dict(_FUNCTIONS), names=dict(_NAMES)
    )
    for node_name in _REFUSED_NODES:
        node_type = getattr(ast, node_name, None)
        if node_type is not None:
            evaluator.nodes.pop(node_type, None)

    def constant(node: ast.Constant) -> Any:
        if not isinstance(node.value, int | float) or isinstance(node.value, complex):
            raise ToolError("Only numbers are allowed in expressions (no strings).")
        return node.value

    evaluator.nodes[ast.Constant] = constant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", simpleeval.MultipleExpressions)
            result = evaluator.eval(expression)
    except simpleeval.MultipleExpressions as exc:
        raise ToolError("Only one expression is allowed.") from exc
    except ToolError:
        raise
    except ZeroDivisionError as exc:
        raise ToolError("Division by zero.") from exc
    except SyntaxError as exc:
        raise ToolError(f"Not a valid expression: {exc.msg}.") from exc
    except KeyError as exc:
        # simpleeval looks node handlers up by type; a refused node type lands here.
        raise ToolError(f"Unsupported syntax: {exc.args[0].__name__}.") from exc
    except simpleeval.FunctionNotDefined as exc:
        raise ToolError(
            f"Unknown function {exc.func_name!r}. Available: {', '.join(sorted(_FUNCTIONS))}."
        ) from exc
    except simpleeval.NameNotDefined as exc:
        raise ToolError(f"Unknown name {exc.name!r}. Available constants: pi, e, tau.") from exc
    except simpleeval.InvalidExpression as exc:
        raise ToolError(f"Refused: {exc}") from exc
    except (ValueError, OverflowError, TypeError) as exc:
        raise ToolError(f"Cannot evaluate: {exc}.") from exc
    if not isinstance(result, int | float):
        raise ToolError("The expression did not produce a number.")
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolError("The result is not a finite number.")
    return _check_int(result)


@tool(name="calc.evaluate", read_only=True, idempotent=True, open_world=False, timeout_seconds=5)
def calc_evaluate(
    expression: Annotated[
        str,
        Field(
            description=(
                "Arithmetic expression, e.g. '17*23', '(2+3)**2 / 7', 'sqrt(2) * pi'. "
                "Operators: + - * / // % ** and comparisons; functions: "
                + ", ".join(sorted(_FUNCTIONS))
                + "; constants: pi, e, tau."
            ),
            min_length=1,
            max_length=MAX_EXPRESSION_CHARS,
        ),
    ],
) -> dict[str, Any]:
    """Evaluate an arithmetic expression exactly and safely (no code execution)."""
    result = calc_evaluate_expression(expression)
    return {"expression": expression, "result": result}
