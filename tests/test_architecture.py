"""The engine's import structure, read from its source: no import cycles among nurture/'s
modules, and nurture/ — except nurture/cli/, the composition root — imports neither prefect,
flows/ nor integrations/ (it receives integrations through its registry).

What counts as "module B imports module A" (the rule this file checks):
- every `import` and `from … import` statement in B's source: at module level, inside
  functions and methods, inside `try` / `if` — except in an `if TYPE_CHECKING:` block (never
  executed). An import moved into a function to dodge a cycle still is one: it only defers
  the failure to the first call, so the cycle must be broken by restructuring instead;
- `from a.b import c` imports a.b.c when that is a module, else a.b; relative imports are
  resolved against B's package;
- importing a.b.c first runs the `__init__` of every enclosing package (a, a.b), so B also
  imports each enclosing package it does not itself live in — as that package initialises:
  the module-level imports of its `__init__.py`. (An import of the package itself, `from
  nurture.runtime import Runtime`, is an import of all of its `__init__.py`, lazy
  `__getattr__` re-exports included.)
Modules loaded by a computed name (importlib.import_module, multiprocessing preload lists)
are not seen. nurture/migrations/ holds Alembic scripts loaded by path, not modules.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("prefect", "flows", "integrations")  # for nurture/ outside nurture/cli/
COMPOSITION_ROOT = "nurture.cli"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # imported module → first line
    init_imports: dict[str, int] = field(default_factory=dict)  # module-level only (package __init__)
    external: dict[str, int] = field(default_factory=dict)  # top-level names outside nurture → first line


def engine_modules(repo: Path = REPO) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((repo / "nurture").rglob("*.py")):
        rel = path.relative_to(repo).with_suffix("")
        if "migrations" in rel.parts:
            continue
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package)
    for module in modules.values():
        _read_imports(module, modules)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.Module):
    """(import statement, at module level?) for every import outside TYPE_CHECKING blocks."""
    def walk(node: ast.AST, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk_one(other, top)
                continue
            yield from walk_one(child, top)

    def walk_one(node: ast.AST, top: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
            return
        # A class body runs at import time; a function body when called.
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from walk(node, inner)

    yield from walk(tree, True)


def _read_imports(module: Module, modules: dict[str, Module]) -> None:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for stmt, top in _statements(tree):
        targets: list[str] = []
        if isinstance(stmt, ast.Import):
            targets = [alias.name for alias in stmt.names]
        else:
            if stmt.level:
                base = package.split(".")[:len(package.split(".")) - (stmt.level - 1)]
                source = ".".join(base + ([stmt.module] if stmt.module else []))
            else:
                source = stmt.module or ""
            for alias in stmt.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in modules else source)
        for target in targets:
            top_name = target.partition(".")[0]
            if top_name != "nurture":
                module.external.setdefault(top_name, stmt.lineno)
                continue
            if target not in modules or target == module.name:
                continue
            module.imports.setdefault(target, stmt.lineno)
            if top:
                module.init_imports.setdefault(target, stmt.lineno)


def _initialising(package: str) -> str:
    return f"{package} (package initialisation)"


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """node → {node it imports: line}. Nodes: the modules, plus "<package> (package
    initialisation)" for the implicit run of a package's __init__ (see the module docstring)."""
    graph: dict[str, dict[str, int]] = {}

    def add(source: str, imports: dict[str, int], inside: str) -> None:
        edges = graph.setdefault(source, {})
        for target, line in imports.items():
            edges.setdefault(target, line)
            parts = target.split(".")
            for i in range(1, len(parts)):
                package = ".".join(parts[:i])
                if package in modules and not (inside == package or inside.startswith(package + ".")):
                    edges.setdefault(_initialising(package), line)

    for module in modules.values():
        add(module.name, module.imports, module.name)
        if module.is_package:
            add(_initialising(module.name), module.init_imports, module.name)
    return graph


def tangles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan): sets of modules
    each of which imports, directly or not, every other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth ≤ the number of modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per tangle, from its smallest name back to it."""
    return [_one_cycle(graph, set(c), c[0]) for c in tangles(graph)]


def _one_cycle(graph: dict[str, dict[str, int]], members: set[str], start: str) -> list[str]:
    """A shortest path from `start` back to itself inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " → ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" → {cycle[-1]}"


# ------------------------------------------------------------------------- the checks


def test_every_module_of_the_engine_imports():
    failures = []
    for name in engine_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # pragma: no cover - the failure is the report
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_there_is_no_import_cycle_among_the_engines_modules():
    graph = import_graph(engine_modules())
    found = tangles(graph)
    assert not found, "import cycles in nurture/ (restructure: a function-level import is still an import):\n" + \
        "\n".join(f"{describe(graph, _one_cycle(graph, set(c), c[0]))}   [all in this tangle: {', '.join(c)}]"
                  for c in found)


def test_the_engine_imports_neither_prefect_nor_flows_nor_integrations_except_in_its_composition_root():
    offending = [f"{m.name} (line {m.external[name]}) imports {name}"
                 for m in engine_modules().values()
                 if not (m.name == COMPOSITION_ROOT or m.name.startswith(COMPOSITION_ROOT + "."))
                 for name in FORBIDDEN if name in m.external]
    assert not offending, "\n".join(offending)


def test_importing_every_engine_module_outside_the_cli_loads_no_prefect_flows_or_integrations():
    """The same promise at run time, in a fresh interpreter: what the engine really loads."""
    names = [n for n in engine_modules() if not (n == COMPOSITION_ROOT or n.startswith(COMPOSITION_ROOT + "."))]
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n    importlib.import_module(name)\n"
              f"print(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loaded by importing nurture/ (not cli): {out.stdout.strip()}"


# ------------------------------------------------------------------------- the checker itself


def _graph_of(sources: dict[str, str], tmp_path: Path) -> dict[str, dict[str, int]]:
    for rel, text in sources.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(engine_modules(tmp_path))


@pytest.mark.parametrize("sources, expected", [
    pytest.param({"nurture/__init__.py": "", "nurture/a.py": "from nurture.b import x\n",
                  "nurture/b.py": "def f():\n    from nurture import a\n"},
                 [["nurture.a", "nurture.b", "nurture.a"]], id="a function-level import closes a cycle"),
    pytest.param({"nurture/__init__.py": "", "nurture/a.py": "from nurture.p.b import x\n",
                  "nurture/p/__init__.py": "from nurture.p.c import y\n", "nurture/p/b.py": "",
                  "nurture/p/c.py": "import nurture.a\n"},
                 [["nurture.a", "nurture.p (package initialisation)", "nurture.p.c", "nurture.a"]],
                 id="a package __init__ runs before its module"),
    pytest.param({"nurture/__init__.py": "", "nurture/a.py": "from nurture.p.b import x\n",
                  "nurture/p/__init__.py": "def __getattr__(n):\n    from nurture.p.c import y\n",
                  "nurture/p/b.py": "", "nurture/p/c.py": "import nurture.a\n"},
                 [], id="a lazy re-export runs only when asked for"),
    pytest.param({"nurture/__init__.py": "", "nurture/a.py": "from typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n    from nurture.b import x\n", "nurture/b.py": "from nurture import a\n"},
                 [], id="TYPE_CHECKING imports are not run"),
    pytest.param({"nurture/__init__.py": "", "nurture/p/__init__.py": "from .b import x\n",
                  "nurture/p/b.py": "from . import c\n", "nurture/p/c.py": "from nurture.p import b\n"},
                 [["nurture.p.b", "nurture.p.c", "nurture.p.b"]], id="relative imports are resolved"),
])
def test_the_cycle_check_sees_what_python_runs(sources, expected, tmp_path):
    assert cycles(_graph_of(sources, tmp_path)) == expected
