"""The public surface of `exporters`, and the direction of the data flow: exporters read the supervisor's
public API only; the supervisor's core never imports exporters (only the CLI, the composition root, does)."""

from __future__ import annotations

import ast
from pathlib import Path

import exporters
import supervisor

EXPORTERS_DIR = Path(exporters.__file__).parent
SUPERVISOR_DIR = Path(supervisor.__file__).parent


def test_all_is_pinned() -> None:
    assert exporters.__all__ == [
        "DURATION_BUCKETS",
        "METRICS",
        "SPAWN_LATENCY_BUCKETS",
        "MetricSpec",
        "MetricsServer",
        "SupervisorCollector",
        "attach_metrics",
        "serve_metrics",
    ]
    for name in exporters.__all__:
        assert getattr(exporters, name) is not None


def _imports(path: Path) -> set[str]:
    """Every absolute module imported by `path`, in full (`supervisor._child`, not `supervisor`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_exporters_use_only_the_public_api_of_supervisor_and_policies() -> None:
    for path in sorted(EXPORTERS_DIR.glob("*.py")):
        for module in _imports(path):
            top = module.split(".")[0]
            if top in ("supervisor", "policies"):
                assert module == top, f"{path.name} imports {module}: use the package's public API"


def test_the_supervisor_core_never_imports_exporters() -> None:
    for path in sorted(SUPERVISOR_DIR.rglob("*.py")):
        # The composition roots: the CLI, and cluster mode (supervisor/ray, an optional extra whose node
        # actors serve each node's metrics). The core imports neither.
        if path.name == "cli.py" or path.parent.name == "ray":
            continue
        assert not {m for m in _imports(path) if m.split(".")[0] == "exporters"}, path
        assert not {m for m in _imports(path) if m.startswith(("supervisor.ray", "ray"))}, path
