"""The import graph of the three packages: no circle anywhere, counting every import statement (module level,
under TYPE_CHECKING, and inside functions), and the layering DESIGN.md draws (policies imports neither of the
others; the engine's core never imports exporters: only the composition roots, supervisor/cli.py and the
Ray integration supervisor/ray/, may).

An edge goes from a module to each module it names: `from a.b import c` is an edge to a.b.c when that is a
module, else to a.b. The implicit import of a parent package (importing a.b runs a/__init__.py) is not an
edge: it is how packages work, and a package's __init__ re-exporting its submodules is not a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "policies", "exporters")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = _graph()
    assert "supervisor._types" in graph["supervisor._child"]
    assert "supervisor.forkserver.protocol" in graph["supervisor.forkserver.server"]
    assert "supervisor._child" in graph["supervisor._monitor"]  # under TYPE_CHECKING
    assert "supervisor._errors" in graph["supervisor._plan"]  # inside a function


def test_the_tree_has_no_import_circle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("policies"):
            assert not {t for t in targets if not t.startswith("policies")}, name
        # The composition roots may wire exporters in: the CLI, and a Ray node (it serves its metrics).
        if (
            name.startswith("supervisor")
            and name != "supervisor.cli"
            and not name.startswith("supervisor.ray")
        ):
            assert not {t for t in targets if t.startswith("exporters")}, name
