"""Docstrings and comments cite only what exists: a file path (docs/cgroups.md,
supervisor/forkserver/server.py, tests/kernel/test_spawn.py), a bare file name (_cinit.c, prefork.py), a
dotted module path (supervisor.sandbox._sys), or a `module.name` in backticks whose module is one of the
tree's (`mounts.fingerprint`, `client.ForkServer`, `_plan.compile_policy`). A rename that leaves a citation
behind fails here.

Static: names are looked up in each module's source (its functions, classes, their methods and attributes,
its assignments), so nothing is imported."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = frozenset({"supervisor", "policies", "exporters"})
TOP = ("supervisor", "policies", "exporters", "tests", "docs", "benchmarks", "examples", "tools")

PATH_RE = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP)})/[\w./-]*\w\.(?:py|pyi|md|c|sh|toml))")
FILE_RE = re.compile(r"(?<![\w./-])(_?[A-Za-z]\w*\.(?:py|pyi|md|c))\b")
DOTTED_RE = re.compile(r"(?<![\w.])((?:supervisor|policies|exporters)(?:\.\w+)+)")
TICKED_RE = re.compile(r"`(_?[a-z]\w*(?:\.\w+)+)(?:\(\))?`")
#: Libraries whose names are also short names of the tree's modules (supervisor.ray).
EXTERNAL = {"ray"}


@cache
def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py*"):
            if path.suffix not in (".py", ".pyi"):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.setdefault(".".join(parts), path)
    return found


@cache
def _file_names() -> frozenset[str]:
    names = set()
    for path in ROOT.rglob("*"):
        if ".venv" in path.parts or ".git" in path.parts or "build" in path.parts:
            continue
        names.add(path.name)
    return frozenset(names)


@cache
def _names(module: str) -> dict[str, frozenset[str]]:
    """{name: its own names} for a module: its top-level names, and for each class its members."""
    tree = ast.parse(_modules()[module].read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = out.setdefault(node.name, set())
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    members.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    members.add(sub.attr)
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    members.add(sub.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.setdefault(node.name, set())
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out.setdefault(name.id, set())
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                out.setdefault((alias.asname or alias.name).split(".")[0], set())
        elif isinstance(node, ast.If):  # TYPE_CHECKING imports, platform branches
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom | ast.Import):
                    for alias in sub.names:
                        out.setdefault((alias.asname or alias.name).split(".")[0], set())
                elif isinstance(sub, ast.FunctionDef):
                    out.setdefault(sub.name, set())
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    out.setdefault(sub.id, set())
    return {k: frozenset(v) for k, v in out.items()}


def _short_names() -> dict[str, list[str]]:
    """The last component of every module (`mounts`, `client`, `_plan`) -> the modules with it."""
    out: dict[str, list[str]] = {}
    for module in _modules():
        out.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    return out


def _resolves(module: str, rest: list[str]) -> bool:
    """Whether `rest` (a name, or Class.member) exists in `module`, or names a submodule of it."""
    if not rest:
        return True
    if f"{module}.{rest[0]}" in _modules():
        return _resolves(f"{module}.{rest[0]}", rest[1:])
    names = _names(module)
    if rest[0] not in names:
        return False
    return len(rest) == 1 or rest[1] in names[rest[0]] or not names[rest[0]]


def _dotted_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in _modules():
            return _resolves(".".join(parts[:i]), parts[i:])
    return False


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment of a module."""
    source = path.read_text()
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc and node.body:
                out.append((node.body[0].lineno, doc))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def _broken(text: str) -> list[str]:
    bad = []
    for m in PATH_RE.finditer(text):
        if not (ROOT / m.group(1)).exists():
            bad.append(m.group(1))
    for m in FILE_RE.finditer(text):
        if m.group(1) not in _file_names() and not PATH_RE.search(text[max(0, m.start() - 60) : m.end()]):
            bad.append(m.group(1))
    for m in DOTTED_RE.finditer(text):
        if not _dotted_exists(m.group(1).rstrip(".")):
            bad.append(m.group(1))
    shorts = _short_names()
    for m in TICKED_RE.finditer(text):
        first, *rest = m.group(1).split(".")
        if FILE_RE.fullmatch(m.group(1)) or first in ("self", "os", "sys") or first in PACKAGES | EXTERNAL:
            continue
        if first not in shorts:
            if re.fullmatch(r"_[a-z]\w*", first):  # a private module's name: it must be one of ours
                bad.append(m.group(1))
            continue
        if not any(_resolves(module, rest) for module in shorts[first]):
            bad.append(m.group(1))
    return bad


def _all_broken() -> list[str]:
    found = []
    for _module, path in sorted(_modules().items()):
        if path.suffix != ".py":
            continue
        for line, text in _texts(path):
            found += [f"{path.relative_to(ROOT)}:{line}: {ref}" for ref in _broken(text)]
    return found


def test_the_checker_finds_what_is_not_there() -> None:
    assert _broken("see docs/nowhere.md and supervisor/_zygote.py") == [
        "docs/nowhere.md",
        "supervisor/_zygote.py",
    ]
    assert _broken("(`mounts.no_such_function`) in supervisor.sandbox.nothing") == [
        "supervisor.sandbox.nothing",
        "mounts.no_such_function",
    ]
    assert _broken("_zygote.py, `_zygote._confinement`") == ["_zygote.py", "_zygote._confinement"]
    assert (
        _broken("`mounts.fingerprint`, supervisor.sandbox._sys.SetupFailure, docs/cgroups.md, _cinit.c") == []
    )
    assert _broken("`client.ForkServer.spawn`, `server._confinement`") == []


def test_docstrings_and_comments_cite_what_exists() -> None:
    assert _all_broken() == []
