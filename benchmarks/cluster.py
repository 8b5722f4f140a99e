"""Cluster mode: N sandboxed /bin/true through RaySupervisor over a two-node local Ray cluster, against the
same N through a local Supervisor, in the same run (a benchmark, not a test).

    .venv/bin/python benchmarks/cluster.py [--n 1000] [--concurrency 32] [--latency 200] [--rounds 4]
                                           [--json out.json]

Starts its own two-node cluster on this machine (ray.cluster_utils: head + one more raylet, one CPU each, no
dashboard) and stops it at the end. Both nodes share this machine's cores, so the cluster has no more CPU than
the local supervisor: the throughput ratio here measures what Ray's dispatch costs, not what more machines
give (docs/cluster.md works that out on paper from these figures).

Reports:
- latency: `--latency` sequential calls each way, median and p90 ms; the per-call overhead Ray adds is the
  difference of the medians (target, issue 20: <= 2 ms);
- throughput: N calls at concurrency C, local and cluster taking turns in `rounds` rounds (the machine's
  rate drifts), calls per second for each and the ratio cluster/local;
- the driver's CPU seconds per cluster call (the client's share: what bounds one driver's rate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from ray.cluster_utils import Cluster
from throughput import _pool  # benchmarks/throughput.py: n calls at a given concurrency, timed

from policies import profiles
from supervisor import DEVNULL, Supervisor
from supervisor.ray import RaySupervisor

TRUE = "/bin/true"
WORKSPACES = "/var/tmp/corral-ray-bench"


async def _latencies(n: int, once: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await once()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def bench(n: int, concurrency: int, latency_n: int, rounds: int) -> dict[str, object]:
    workdir = anyio.Path("/var/tmp/corral-ray-bench-wd")
    await workdir.mkdir(parents=True, exist_ok=True)
    policy = profiles.workspace_write(str(workdir))
    async with (
        Supervisor(max_concurrency=concurrency) as local,
        RaySupervisor(
            namespace="corral-bench",
            workspace_root=WORKSPACES,
            max_concurrency=concurrency,
            refresh_interval=1.0,
        ) as cluster,
    ):

        async def local_once() -> None:
            r = await local.run([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
            assert r.exit_code == 0, r

        async def cluster_once() -> None:
            r = await cluster.run([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
            assert r.exit_code == 0, r

        # Warm-up: policy compiles, pre-forked pools on both nodes and locally, Ray's connections.
        await _pool(min(64, n), concurrency, local_once)
        await _pool(min(64, n), concurrency, cluster_once)
        lat_local = await _latencies(latency_n, local_once)
        lat_cluster = await _latencies(latency_n, cluster_once)
        per_round = max(1, n // rounds)
        local_t: list[float] = []
        cluster_t: list[float] = []
        driver_cpu = 0.0
        for _ in range(rounds):
            local_t.append(await _pool(per_round, concurrency, local_once))
            c0 = _self_cpu()
            cluster_t.append(await _pool(per_round, concurrency, cluster_once))
            driver_cpu += _self_cpu() - c0
        per_node = await cluster.totals(per_node=True)
        assert isinstance(per_node, dict)
        spread = {nid[:12]: c["started"] for nid, c in per_node.items()}
        await cluster.shutdown()
    total = per_round * rounds
    local_s, cluster_s = sum(local_t), sum(cluster_t)
    return {
        "n": total,
        "concurrency": concurrency,
        "nodes": 2,
        "latency_calls": latency_n,
        "local_latency_ms": {
            "median": round(statistics.median(lat_local), 3),
            "p90": round(_pct(lat_local, 0.9), 3),
        },
        "cluster_latency_ms": {
            "median": round(statistics.median(lat_cluster), 3),
            "p90": round(_pct(lat_cluster, 0.9), 3),
        },
        "ray_overhead_ms_median": round(statistics.median(lat_cluster) - statistics.median(lat_local), 3),
        "local_per_s": round(total / local_s, 1),
        "cluster_per_s": round(total / cluster_s, 1),
        "ratio_cluster_vs_local": round(local_s / cluster_s, 3),
        "rounds": rounds,
        "ratio_per_round": [round(a / b, 3) for a, b in zip(local_t, cluster_t, strict=True)],
        "driver_cpu_ms_per_call": round(driver_cpu / total * 1000, 3),
        "calls_per_node": spread,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 80 << 20},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
        report = anyio.run(bench, args.n, args.concurrency, args.latency, args.rounds)
    finally:
        ray.shutdown()
        cluster.shutdown()
    head = f"{report['n']} x /bin/true at concurrency {report['concurrency']}"
    print(f"{head}, two local Ray nodes vs one Supervisor")
    print(f"  latency median local {report['local_latency_ms']}, cluster {report['cluster_latency_ms']} (ms)")
    print(f"  Ray's overhead per call (median difference): {report['ray_overhead_ms_median']} ms")
    print(
        f"  throughput local {report['local_per_s']}/s, cluster {report['cluster_per_s']}/s, "
        f"ratio {report['ratio_cluster_vs_local']} (per round {report['ratio_per_round']})"
    )
    print(f"  driver CPU per cluster call: {report['driver_cpu_ms_per_call']} ms")
    print(f"  calls per node: {report['calls_per_node']}")
    print(f"  load average (1 min) at the end: {report['loadavg_1m']} on {report['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
