"""The layers of docs/architecture.md, kept by tests.

Imports and model foreign keys point one way, down the order in
:data:`LAYERS`: an app may use the apps after it, never those before it. No
app has an import cycle among its own modules, and an import left inside a
function says why on its line or the line above. Each check is a plain
function over source text or models, run here on the repository and on a
planted violation, so a check that sees nothing cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import models
from django.test.utils import isolate_apps

ROOT = Path(__file__).resolve().parents[1]

#: Top first. An app may import, call and point foreign keys at the apps after it.
LAYERS = (
    "api",
    "conversations",
    "prompts",
    "knowledge",
    "approvals",
    "tools",
    "accounts",
    "audit",
    "project",
)

#: Modules of ``project`` that Django starts from (``ROOT_URLCONF``,
#: ``ASGI_APPLICATION``, ``WSGI_APPLICATION``): they gather every app's URLs and
#: consumers, so they sit above all apps; no app imports them.
ENTRY_POINTS = frozenset({"project.urls", "project.routing", "project.asgi", "project.wsgi"})

#: Packages of this repository that are no app's to import.
OUTSIDE = frozenset({"tests", "bench"})


# --- reading imports --------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement of ``module``. ``names``: the dotted names it may load;
    for ``from a.b import c`` (``is_from``) they are ``a.b`` and ``a.b.c``, as
    ``c`` may be a module."""

    module: str
    line: int
    end_line: int
    names: tuple[str, ...]
    is_from: bool
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    """``tools/mcp/bridge.py`` → ``tools.mcp.bridge``; a package's ``__init__`` → the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    """Every import statement of ``module`` (its ``source``), at module level and
    inside functions, relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - child.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                names = [base] + [f"{base}.{alias.name}" for alias in child.names]
            if names:
                end = child.end_lineno or child.lineno
                is_from = isinstance(child, ast.ImportFrom)
                found.append(Import(module, child.lineno, end, tuple(names), is_from, in_function))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(source), False)
    return found


def app_modules(root: Path, *, migrations: bool = False) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of the apps in :data:`LAYERS` under ``root``."""
    for app in LAYERS:
        for path in sorted((root / app).rglob("*.py")):
            if migrations or "migrations" not in path.relative_to(root).parts:
                yield module_name(path, root), path


def _imports(root: Path, *, migrations: bool = False) -> Iterator[Import]:
    for module, path in app_modules(root, migrations=migrations):
        source = path.read_text(encoding="utf-8")
        yield from imports_of(source, module, is_package=path.name == "__init__.py")


# --- (a) no import cycle inside an app ----------------------------------------------


def app_import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules of its own app it imports (module- and function-level),
    migrations left out."""
    real = {module for module, _ in app_modules(root)}
    graph: dict[str, set[str]] = {module: set() for module in real}
    for found in _imports(root):
        app = found.module.split(".")[0]
        for name in found.names:
            if name in real and name != found.module and name.split(".")[0] == app:
                graph[found.module].add(name)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (its strongly connected components of more than one
    module, each sorted), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_no_import_cycle_inside_an_app():
    graph = app_import_graph(ROOT)
    assert "tools.mcp.bridge" in graph["tools.selectors"]  # the graph sees function bodies too
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    assert import_cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [
        ["a.x", "a.y", "a.z"]
    ]
    app = tmp_path / "tools"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "selectors.py").write_text("from tools.services import record\n")
    (app / "services.py").write_text("def record():\n    from tools import selectors\n")
    (app / "models.py").write_text("from django.db import models\n")
    assert import_cycles(app_import_graph(tmp_path)) == [["tools.selectors", "tools.services"]]


# --- (b) imports point down ------------------------------------------------------------


def layer(module: str) -> int:
    """The module's place in :data:`LAYERS` (0 is the top); entry points are above all."""
    if module in ENTRY_POINTS:
        return -1
    return LAYERS.index(module.split(".")[0])


def _unit(module: str) -> str:
    return "entry points" if module in ENTRY_POINTS else module.split(".")[0]


def upward_imports(found: Iterable[Import]) -> list[str]:
    """Imports from one of our apps into another that is not below it, of the entry
    points from anywhere else, and of the test suite or the benchmarks, as
    ``module:line imports name``."""
    bad = []
    for each in found:
        # ``from a import b, c``: the package ``a``, or an entry point named as ``b``.
        targets = each.names[:1] + tuple(n for n in each.names[1:] if n in ENTRY_POINTS)
        for name in targets if each.is_from else each.names:
            top = name.split(".")[0]
            if top in OUTSIDE or (
                top in LAYERS
                and _unit(name) != _unit(each.module)
                and layer(name) <= layer(each.module)
            ):
                bad.append(f"{each.module}:{each.line} imports {name}")
    return bad


def test_the_order_names_every_app():
    ours = {path.parent.name for path in ROOT.glob("*/apps.py")} | {"project"}
    assert ours == set(LAYERS)
    assert ours - {"project"} <= set(settings.INSTALLED_APPS)
    assert settings.ROOT_URLCONF in ENTRY_POINTS
    for dotted in (settings.ASGI_APPLICATION, settings.WSGI_APPLICATION):
        assert dotted.rpartition(".")[0] in ENTRY_POINTS
    assert all((ROOT / f"{name.replace('.', '/')}.py").is_file() for name in ENTRY_POINTS)


def test_imports_point_down_the_layers():
    found = list(_imports(ROOT, migrations=True))
    crossing = {
        (each.module, each.names[0])
        for each in found
        if _unit(each.names[0]) in LAYERS and _unit(each.names[0]) != _unit(each.module)
    }
    assert ("conversations.toolphase", "approvals.services") in crossing  # it sees the apps
    assert ("tools.services", "audit.services") in crossing
    assert upward_imports(found) == []


def test_the_import_check_finds_upward_imports():
    source = (
        "from __future__ import annotations\n"
        "import accounts.models\n"
        "from audit.services import audit_record\n"
        "from . import signals\n"
        "from .mcp import bridge\n"
        "import json, conversations.models\n"
        "def f():\n"
        "    from approvals.services import gate_decide\n"
    )
    found = imports_of(source, "tools.selectors")
    assert found[4].names == ("tools.mcp", "tools.mcp.bridge")
    assert upward_imports(found) == [
        "tools.selectors:6 imports conversations.models",
        "tools.selectors:8 imports approvals.services",
    ]
    assert upward_imports(imports_of("from project import urls\n", "audit.x")) == [
        "audit.x:1 imports project.urls"
    ]
    assert upward_imports(imports_of("from project.urls import x\n", "project.health")) == [
        "project.health:1 imports project.urls"
    ]
    assert upward_imports(imports_of("from tests.factories import X\n", "audit.x")) == [
        "audit.x:1 imports tests.factories"
    ]
    assert upward_imports(imports_of("from conversations import views\n", "project.urls")) == []
    assert upward_imports(imports_of("from .routing import x\n", "project.asgi")) == []
    assert upward_imports(imports_of("import project.pushes\n", "project.db")) == []
    package = imports_of("from . import views\n", "conversations", is_package=True)
    assert package[0].names == ("conversations", "conversations.views")
    assert upward_imports(package) == []


def test_the_import_check_reads_planted_files(tmp_path):
    (tmp_path / "audit" / "migrations").mkdir(parents=True)
    (tmp_path / "audit" / "services.py").write_text("from accounts.models import User\n")
    (tmp_path / "audit" / "migrations" / "0009_x.py").write_text(
        "def forwards(apps, schema_editor):\n    from tools.services import tools_sync\n"
    )
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "urls.py").write_text("from audit import views\n")
    assert upward_imports(_imports(tmp_path, migrations=True)) == [
        "audit.migrations.0009_x:2 imports tools.services",
        "audit.services:1 imports accounts.models",
    ]


# --- (c) foreign keys point down -------------------------------------------------------


def upward_relations(model_classes: Iterable[type[models.Model]]) -> list[str]:
    """Foreign keys, one-to-one and many-to-many fields declared on a model of one of
    our apps whose target belongs to another of our apps that is not below it."""
    bad = []
    for model in model_classes:
        source = model._meta.app_label
        if source not in LAYERS:
            continue
        for field in model._meta.get_fields(include_hidden=True):
            if not field.is_relation or field.auto_created or field.related_model is None:
                continue
            target = field.related_model._meta.app_label  # type: ignore[union-attr]
            if target in LAYERS and target != source and layer(target) <= layer(source):
                bad.append(f"{model._meta.label}.{field.name} → {target}")
    return bad


def test_foreign_keys_point_down_the_layers():
    ours = [model for model in apps.get_models() if model._meta.app_label in LAYERS]
    assert {"tools.ToolInvocation", "approvals.ApprovalRequest"} <= {m._meta.label for m in ours}
    assert upward_relations(ours) == []


@isolate_apps("conversations", "audit")
def test_the_foreign_key_check_finds_upward_ones():
    class Up(models.Model):  # noqa: DJ008 - planted, never shown
        class Meta:
            app_label = "conversations"

    class Down(models.Model):  # noqa: DJ008 - planted, never shown
        up = models.ForeignKey(Up, on_delete=models.CASCADE, db_constraint=False)
        one = models.OneToOneField(Up, on_delete=models.CASCADE, related_name="+")
        many = models.ManyToManyField(Up, related_name="+")

        class Meta:
            app_label = "audit"

    class Fine(models.Model):  # noqa: DJ008 - planted, never shown
        down = models.ForeignKey(Down, on_delete=models.CASCADE)

        class Meta:
            app_label = "conversations"

    assert upward_relations([Up, Down, Fine]) == [
        "audit.Down.up → conversations",
        "audit.Down.one → conversations",
        "audit.Down.many → conversations",
    ]


# --- (d) function-local imports say why ------------------------------------------------


def uncommented_local_imports(source: str) -> list[int]:
    """Lines of the imports inside functions with no comment on their line(s) or on
    the line above; a run of consecutive imports shares the comment of its first."""
    comments = {
        token.start[0]
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    local = sorted(
        (each for each in imports_of(source, "m") if each.in_function), key=lambda i: i.line
    )
    covered_ends: dict[int, bool] = {}
    bad = []
    for each in local:
        said = any(line in comments for line in range(each.line - 1, each.end_line + 1))
        said = said or covered_ends.get(each.line - 1, False)
        covered_ends[each.end_line] = said
        if not said:
            bad.append(each.line)
    return bad


def uncommented_imports_in(root: Path) -> list[str]:
    """``path:line`` of every function-local import of the apps under ``root`` that
    does not say why (migrations left out)."""
    return [
        f"{path.relative_to(root)}:{line}"
        for _, path in app_modules(root)
        for line in uncommented_local_imports(path.read_text(encoding="utf-8"))
    ]


def test_function_local_imports_say_why():
    assert uncommented_imports_in(ROOT) == []


def test_the_comment_check_finds_an_import_that_does_not_say_why(tmp_path):
    source = (
        "import json\n"  # module level: never asked
        "def ready():\n"
        "    # Here, not at the top: models load only once the registry is ready.\n"
        "    from tools.models import Tool\n"
        "    from tools.services import (\n"
        "        tools_sync,\n"
        "    )\n"
        "\n"
        "    from tools import builtin\n"
        "    import litellm  # seconds at import\n"
        "async def handler():\n"
        "    x = 1\n"
        "    from tools.mcp import bridge\n"
        "    from tools.mcp import (  # the MCP client: see dispatch\n"
        "        errors,\n"
        "    )\n"
    )
    assert uncommented_local_imports(source) == [9, 13]
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "apps.py").write_text(source)
    assert uncommented_imports_in(tmp_path) == ["tools/apps.py:9", "tools/apps.py:13"]
