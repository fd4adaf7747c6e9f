"""The audit app is the bottom app layer: it imports no other Tollgate app.

DESIGN.md's order is api, conversations → prompts, knowledge, approvals,
tools → accounts → audit → project. Every app writes through ``audit``, so an
import from ``audit`` upward would be a cycle waiting to happen; this test
reads every module of the app (management commands and migrations included)
and fails on such an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "audit"
#: Below audit in DESIGN.md's layer order, so audit may use it.
BELOW = {"project"}


def _packages() -> set[str]:
    """The top-level Python packages of this repository (the apps, project, tests, bench)."""
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def _imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) for every absolute import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _upward_imports(source: str, forbidden: set[str]) -> list[tuple[int, str]]:
    return [
        (line, name) for line, name in _imported_modules(source) if name.split(".")[0] in forbidden
    ]


def test_the_check_sees_the_apps_and_catches_an_upward_import():
    forbidden = _packages() - {"audit"} - BELOW
    assert {"accounts", "approvals", "tools", "conversations"} <= forbidden
    source = (
        "from __future__ import annotations\n"
        "import accounts.models\n"
        "from django.db import models\n"
        "from audit.models import AuditEvent\n"
        "from . import signals\n"
        "def f():\n"
        "    from approvals.services import gate_decide\n"
    )
    assert _upward_imports(source, forbidden) == [
        (2, "accounts.models"),
        (7, "approvals.services"),
    ]


def test_audit_imports_no_other_tollgate_app():
    forbidden = _packages() - {"audit"} - BELOW
    modules = sorted(AUDIT.rglob("*.py"))
    assert AUDIT / "services.py" in modules
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules
        for line, name in _upward_imports(path.read_text(encoding="utf-8"), forbidden)
    ]
    assert upward == []
