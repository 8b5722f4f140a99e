"""What users read about the metrics cannot drift from the code: the reference table in docs/metrics.md is
generated from exporters.METRICS, and the Grafana dashboard only queries metrics and labels that exist.

Regenerate the table after changing METRICS: CORRAL_UPDATE_DOCS=1 pytest tests/unit/test_exporter_docs.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from exporters import METRICS, attach_metrics
from tests.unit.test_exporter_fakes import FakeCgroups, FakeChild, FakeSupervisor, result, settle, stats

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
BEGIN = "<!-- metrics-table: generated from exporters.METRICS by tests/unit/test_exporter_docs.py -->"
END = "<!-- end of metrics-table -->"
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}


def render_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        name = f"`{m.name}`"
        if m.type == "histogram":
            name += " (`_bucket`, `_sum`, `_count`)"
        labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
        rows.append(f"| {name} | {m.type} | {labels} | {m.help} |")
    return "\n".join([BEGIN, *rows, END])


def test_docs_metric_table_is_generated_from_the_code() -> None:
    text = DOC.read_text()
    assert BEGIN in text
    assert END in text
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    expected = render_table()
    if current != expected and os.environ.get("CORRAL_UPDATE_DOCS") == "1":
        DOC.write_text(text.replace(current, expected))
        current = expected
    assert current == expected, "docs/metrics.md is stale: rerun with CORRAL_UPDATE_DOCS=1"


def test_metric_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert re.fullmatch(r"corral_[a-z][a-z0-9_]*", m.name), m.name
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert m.name.endswith("_info") == (m.type == "info"), m.name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)(_|$)", m.name), "base units only"
        assert "pid" not in m.labels, "never a pid"
        assert m.help.endswith((".", ")")), m.name


async def _exported() -> dict[str, set[str]]:
    """Every sample name the endpoint exports (corral's, with data in every metric, and process_*), with
    its label names."""
    sup = FakeSupervisor(cgroups=FakeCgroups())
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        sup.start(FakeChild("workspace-write", "grep", last_stats=stats(fds=4)))
        sup.exit(sup.start(FakeChild("read-only")), result(137, 9, "memory"))
        await settle()
        out: dict[str, set[str]] = {}
        for fam in reg.collect():
            for s in fam.samples:
                out.setdefault(s.name, set()).update(s.labels)
    assert "process_cpu_seconds_total" in out
    return out


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


async def test_dashboard_queries_only_exported_metrics_and_labels() -> None:
    exported = await _exported()
    exprs = _exprs()
    assert exprs
    for expr in exprs:
        used = set(re.findall(r"\b((?:corral|process)_[a-z0-9_]+)\b", expr))
        assert used, f"queries no corral metric: {expr}"
        for name in used:
            assert name in exported, f"{name} (in {expr!r}) is not exported"
        available = set().union(*(exported[n] for n in used)) | TARGET_LABELS
        for name, matchers in re.findall(r"\b([a-z_][a-z0-9_]*)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[name] | TARGET_LABELS, f"{name} has no label {label}: {expr}"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in available, f"no metric in {expr!r} has label {label}"
        for label in re.findall(r"label_values\([a-z0-9_]+, *([a-z_]+)\)", expr):
            assert label in available


def test_dashboard_covers_what_operators_watch() -> None:
    exprs = "\n".join(_exprs())
    assert "corral_children{" in exprs
    assert "rate(corral_children_started_total" in exprs
    assert "sum by (kind) (increase(corral_violations_total" in exprs
    assert "sum by (name) (corral_child_memory_bytes" in exprs
    # Per-tool panels from counters that outlive the children (millisecond tool calls are never scraped
    # while running): CPU, calls and violations by tool name.
    assert "sum by (name) (rate(corral_tool_cpu_seconds_total" in exprs
    assert "sum by (name) (rate(corral_tool_spawns_total" in exprs
    assert "sum by (name, kind) (increase(corral_tool_violations_total" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(corral_spawn_latency_seconds_bucket" in exprs


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "job"]


@pytest.mark.parametrize("expr", _exprs())
def test_dashboard_queries_select_by_job(expr: str) -> None:
    # Several corral jobs (or other exporters' process_* metrics) may share one Prometheus.
    if not expr.startswith("label_values("):
        for selector in re.findall(r"\b(?:corral|process)_[a-z0-9_]+(\{[^}]*\})?", expr):
            assert 'job=~"$job"' in selector, expr
