"""Metrics end to end: real sandboxed children, the exporter's HTTP endpoint, a real Prometheus server
(Debian's `prometheus` package) scraping it every second, the Grafana dashboard's queries run against that
Prometheus, and `corral run --metrics-port`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters import serve_metrics
from policies import profiles
from supervisor import Child, Supervisor

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).absolute().parents[2]
SCRATCH = Path("/var/tmp/corral-tests")
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PY = "/usr/bin/python3"  # by absolute path: no pyenv shim start-up cost
HOG = "b = []\nwhile True:\n    b.append(bytearray(1 << 20))\n"
WW = "workspace-write"

Page = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"prom-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def scrape(url: str) -> Page:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(fetch(url)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(page: Page, name: str, /, **labels: str) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))


async def workload(sup: Supervisor, ws: Path) -> Child:
    """3 ok, 1 error, 1 memory violation; returns a long-running child named "sleeper" (still running)."""
    policy = profiles.workspace_write(ws)
    for _ in range(3):
        assert (await sup.run(["/bin/true"], policy=policy, name="true")).exit_code == 0
    assert (await sup.run(["/bin/false"], policy=policy, name="false")).exit_code == 1
    hog = await sup.run([PY, "-c", HOG], policy=profiles.workspace_write(ws, memory="32M"), name="hog")
    assert hog.violation is not None
    assert hog.violation.kind == "memory"
    # A fd limit, so that the sleeper's open fds are sampled (the dashboard's fds query has data).
    limited = profiles.workspace_write(ws, max_fds=256)
    return await sup.start(["/bin/sleep", "60"], policy=limited, name="sleeper")


async def wait_for(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if await anyio.to_thread.run_sync(predicate):  # type: ignore[arg-type]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await anyio.sleep(0.25)


async def test_endpoint_reports_real_children_and_drops_their_series(ws: Path) -> None:
    async with Supervisor(max_concurrency=8) as sup, serve_metrics(sup, port=0) as server:
        sleeper = await workload(sup, ws)
        await wait_for(lambda: sleeper.last_stats is not None, 10, "the sleeper's first sample")
        await wait_for(lambda: sup.totals["exited"] == 5, 10, "five exits")
        page = await anyio.to_thread.run_sync(scrape, server.url)
        assert sample(page, "corral_violations_total", kind="memory") == 1
        assert sample(page, "corral_children_started_total", profile=WW) == 6
        assert sample(page, "corral_children_exited_total", profile=WW, outcome="ok") == 3
        assert sample(page, "corral_children_exited_total", profile=WW, outcome="error") == 1
        assert sample(page, "corral_children_exited_total", profile=WW, outcome="violation") == 1
        assert sample(page, "corral_children", state="running", profile=WW) == 1
        assert (sample(page, "corral_child_memory_bytes", profile=WW, name="sleeper") or 0) > 0
        assert sample(page, "corral_child_pids", profile=WW, name="sleeper") == 2  # the init and sleep
        assert sample(page, "corral_spawn_latency_seconds_count", profile=WW) == 6
        assert sample(page, "corral_isolation_layer_info", layer="seccomp", available="true") == 1
        assert not [k for k in page if ("pid", str(sleeper.pid)) in k[1]]
        sleeper.kill()
        await sleeper.wait()
        page = await anyio.to_thread.run_sync(scrape, server.url)
        assert not [k for k in page if k[0].startswith("corral_child_") and "duration" not in k[0]]
        assert sample(page, "corral_children", state="running", profile=WW) == 0


@dataclass
class Prometheus:
    api: str
    corral_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, object]]:
        url = f"{self.api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(fetch(url))
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        assert isinstance(result, list)
        return result

    def value(self, expr: str) -> float | None:
        """The value of an instant query that returns at most one series."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus on loopback scraping 127.0.0.1:<corral_port> every second."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"the prometheus binary is absent ({PROMETHEUS}); .ci/run installs Debian's `prometheus`")
    corral_port = free_port()
    api_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: corral\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{corral_port}']\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{api_port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        api = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch(f"{api}/-/ready", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"prometheus did not become ready:\n{log.read_text()}")
                time.sleep(0.1)
        yield Prometheus(api, corral_port, proc, log)
    finally:
        proc.kill()  # by its pid, never by name: other Prometheus servers may run here
        proc.wait(timeout=10)


def _dashboard_queries() -> list[str]:
    dash = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_real_prometheus_scrapes_the_exporter(ws: Path, prometheus: Prometheus) -> None:
    prom = prometheus
    async with Supervisor(max_concurrency=8) as sup, serve_metrics(sup, port=prom.corral_port):
        sleeper = await workload(sup, ws)
        await wait_for(lambda: sleeper.last_stats is not None, 10, "the sleeper's first sample")

        def scraped_everything() -> bool:
            running = prom.value('corral_child_memory_bytes{job="corral",name="sleeper"}')
            exited = prom.value('sum(corral_children_exited_total{job="corral"})')
            # A few scrapes since: rate() and increase() need two samples in their window.
            scrapes = prom.value('count_over_time(corral_max_concurrency{job="corral"}[1m])')
            fds = prom.value('corral_child_open_fds{job="corral",name="sleeper"}')
            return running is not None and fds is not None and exited == 5 and (scrapes or 0) >= 3

        await wait_for(scraped_everything, 30, "Prometheus to scrape the workload")
        q = prom.value
        assert q('up{job="corral"}') == 1
        assert q('corral_violations_total{kind="memory"}') == 1
        assert q('sum(corral_violations_total{kind!="memory"})') == 0
        assert q('sum(corral_children_started_total{job="corral"})') == 6
        assert q(f'corral_children_started_total{{profile="{WW}"}}') == 6
        assert q(f'corral_children_exited_total{{profile="{WW}",outcome="ok"}}') == 3
        assert q(f'corral_children_exited_total{{profile="{WW}",outcome="error"}}') == 1
        assert q(f'corral_children_exited_total{{profile="{WW}",outcome="violation"}}') == 1
        assert q('sum(corral_children{state="running"})') == 1
        assert q('corral_child_pids{name="sleeper"}') == 2
        assert (q('corral_child_memory_bytes{name="sleeper"}') or 0) > 0
        assert q("sum(corral_spawn_latency_seconds_count)") == 6
        p90 = q("histogram_quantile(0.9, sum by (le) (corral_spawn_latency_seconds_bucket))")
        assert p90 is not None
        assert 0 < p90 < 5
        assert q('corral_isolation_layer_info{layer="seccomp",available="true"}') == 1
        assert (q('process_resident_memory_bytes{job="corral"}') or 0) > 0
        # No series carries a pid (bounded labels only).
        assert not prom.query(f'{{job="corral",pid="{sleeper.pid}"}}')

        # The per-tool counters outlive the millisecond children they count.
        assert q(f'corral_tool_spawns_total{{profile="{WW}",name="true"}}') == 3
        assert q(f'corral_tool_exits_total{{profile="{WW}",name="false",outcome="error"}}') == 1
        assert q(f'corral_tool_violations_total{{profile="{WW}",name="hog",kind="memory"}}') == 1
        assert (q(f'corral_tool_cpu_seconds_total{{profile="{WW}",name="hog"}}') or 0) > 0

        # Every query of the Grafana dashboard is valid PromQL on this Prometheus AND has data after the
        # workload: no panel of the dashboard stays empty.
        for expr in _dashboard_queries():
            concrete = expr.replace("$__rate_interval", "1m").replace("$job", "corral")
            assert prom.query(concrete), f"dashboard query without data: {expr}"

        # Once the child is gone its series go stale: an instant query no longer returns them.
        sleeper.kill()
        await sleeper.wait()

        def sleeper_gone() -> bool:
            gone = prom.value('corral_child_memory_bytes{name="sleeper"}') is None
            return (
                gone and prom.value(f'corral_children_exited_total{{profile="{WW}",outcome="signal"}}') == 1
            )

        await wait_for(sleeper_gone, 15, "the sleeper's series to go stale and its exit to be counted")
        assert q('sum(corral_children{state="running"})') == 0
        # The exporter attached before the first child: nothing to count under "unknown".
        assert not prom.query('{job="corral",profile="unknown"}')


def corral(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this tree's corral, whatever is installed
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_corral_run_serves_metrics_while_the_command_runs(ws: Path) -> None:
    port = free_port()
    p = corral("run", "--metrics-port", str(port), "--", "/bin/sleep", "3", cwd=ws)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 15
        page: Page = {}
        while time.monotonic() < deadline:
            try:
                page = scrape(url)
            except OSError:
                time.sleep(0.1)
                continue
            if sample(page, "corral_children", state="running", profile=WW) == 1:
                break
            time.sleep(0.1)
        assert sample(page, "corral_children", state="running", profile=WW) == 1
        assert sample(page, "corral_max_concurrency") == 1
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_corral_run_metrics_options_fail_cleanly(ws: Path) -> None:
    p = corral("run", "--metrics-addr", "127.0.0.1", "--", "/bin/true", cwd=ws)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 125
    assert err.strip().splitlines() == ["corral: --metrics-addr needs --metrics-port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = corral("run", "--metrics-port", str(port), "--", "/bin/true", cwd=ws)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 125
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("corral: ")
    assert f"cannot serve metrics on 127.0.0.1:{port}" in lines[0]
    assert "Address already in use" in lines[0]
