"""Scrape corral's Prometheus metrics from a running supervisor.

    .venv/bin/python examples/metrics_scrape.py [--port N] [--all]

Starts a Supervisor, serves its metrics on a free loopback port (exporters.serve_metrics, inside the event
loop), runs some sandboxed work (quick commands, one that breaks its memory limit, one still running at
scrape time), then fetches /metrics with urllib as Prometheus would and prints the corral_* samples
(histogram buckets and zero-valued series only with --all).
docs/metrics.md describes every metric. Exits 0 when the page has the metrics this work must produce.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.request
from functools import partial
from pathlib import Path

import anyio

# Run as a script, this directory comes first on sys.path, and examples/policies/ (the TOML files) would
# shadow the `policies` package as a namespace package: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters import serve_metrics
from policies import profiles
from supervisor import Supervisor

EXPECTED = (
    "corral_children_started_total",
    "corral_children_exited_total",
    "corral_violations_total",
    "corral_spawn_latency_seconds_bucket",
    "corral_child_memory_bytes",
)


def fetch(url: str) -> str:
    """GET the metrics page (blocking: run it in a worker thread)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


async def main(port: int, show_all: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="corral-metrics-", dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws, memory="64M", pids=32, timeout=30)
        async with Supervisor() as sup, serve_metrics(sup, port=port) as server:
            print(f"serving {server.url}\n")
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(
                        partial(sup.run, ["/bin/sh", "-c", f"echo job {i}"], policy=policy, name="echo")
                    )
            await sup.run(["/bin/sh", "-c", "exit 3"], policy=policy, name="fails")
            await sup.run(
                ["/usr/bin/python3", "-c", "b = [bytearray(8 << 20) for _ in range(32)]"],
                policy=policy,
                name="memory-hog",
            )
            sleeper = await sup.start(["/bin/sleep", "30"], policy=policy, name="sleeper")
            await anyio.sleep(0.6)  # let the sampler take a sample of the sleeper
            text = await anyio.to_thread.run_sync(fetch, server.url)
            sleeper.kill()
            await sleeper.wait()
    samples = [line for line in text.splitlines() if line.startswith("corral_")]
    shown = samples if show_all else [s for s in samples if not _quiet(s)]
    print("\n".join(shown))
    hidden = len(samples) - len(shown)
    print(
        f"\n{len(samples)} corral_* samples"
        + (f" ({hidden} zero or bucket lines hidden; --all)" if hidden else "")
    )
    missing = [name for name in EXPECTED if not any(s.startswith(name) for s in samples)]
    if missing:
        print(f"missing from the page: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _quiet(sample: str) -> bool:
    """Histogram buckets and zero-valued series: present on the page, but noise when reading it."""
    name, _, value = sample.rpartition(" ")
    return "_bucket{" in name or float(value) == 0.0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    ap.add_argument("--all", action="store_true", help="also print histogram buckets and zero-valued series")
    args = ap.parse_args()
    sys.exit(anyio.run(main, args.port, args.all))
