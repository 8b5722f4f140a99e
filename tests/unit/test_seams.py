"""No module of the three packages uses another module's private names, except through a documented seam: a
module-level `SEAM = frozenset({...})` that lists the names and says who uses them and why (today one:
supervisor/_child.py, the Supervisor's hold on a Child's lifecycle). Private modules (`_cinit`, `_ops`) are
the packages' own parts and may be imported; their private names may not.

Static and conservative: `x._name` where `x` is not self/cls is allowed when `_name` is defined in the
module itself (a class of its own, an attribute it sets), is listed in a seam, or is the standard library's
(NamedTuple._replace, os._exit)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "policies", "exporters")
STDLIB = {"_replace", "_asdict", "_fields", "_exit", "_getframe"}
#: Private names of third-party objects corral reaches into, each a risk at the library's next release:
#: the MCP SDK's FastMCP._lowlevel_server (supervisor/mcp_server.py feeds its stdio loop bounded lines);
#: its JSONRPCDispatcher's _InFlight and _JSONRPCDispatchContext and ServerRunner._make_context
#: (supervisor/_mcp_stdio.py's fast lane for a plain tools/call, which is off when the SDK lacks them).
THIRD_PARTY = {"_lowlevel_server", "_InFlight", "_JSONRPCDispatchContext", "_make_context"}


def _files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _seams() -> set[str]:
    names: set[str] = set()
    for path in _files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["SEAM"]:
                assert isinstance(node.value, ast.Call)
                names |= set(ast.literal_eval(node.value.args[0]))
    return names


def _defined(tree: ast.Module) -> set[str]:
    """The private names a module defines: its functions, classes, assignments and attributes it sets."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return {n for n in out if _private(n)}


def _module_exists(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or base.with_suffix(".pyi").exists() or base.is_dir()


def _violations(path: Path, seams: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    defined = _defined(tree)
    rel = path.relative_to(ROOT)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name in THIRD_PARTY and not node.module.startswith(PACKAGES):
                    continue
                if _private(alias.name) and not _module_exists(f"{node.module}.{alias.name}"):
                    out.append(f"{rel}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in defined or node.attr in seams or node.attr in STDLIB | THIRD_PARTY:
                continue
            if isinstance(node.value, ast.Name) and _module_exists(node.value.id):
                continue
            out.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_the_checker_sees_a_foreign_private_name(tmp_path: Path) -> None:
    probe = ROOT / "supervisor" / "_seams_probe_does_not_exist.py"
    assert not probe.exists()
    sample = tmp_path / "m.py"
    sample.write_text("from supervisor._monitor import _x\ndef f(c):\n    return c._secret\n")
    tree_paths = [sample]
    found = []
    for p in tree_paths:
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in _defined(tree):
                found.append(node.attr)
            if isinstance(node, ast.ImportFrom):
                found += [a.name for a in node.names if not _module_exists(f"{node.module}.{a.name}")]
    assert found == ["_x", "_secret"]


def test_the_child_seam_is_declared() -> None:
    assert {"_reap", "_collect", "_then"} <= _seams()


def test_no_module_uses_another_modules_private_names_outside_a_seam() -> None:
    seams = _seams()
    found = [v for path in _files() for v in _violations(path, seams)]
    assert found == []
