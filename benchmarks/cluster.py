"""Cluster mode: N sandboxed /bin/true through RaySupervisor over a two-node local Ray cluster, against the
same N through a local Supervisor, in the same run (a benchmark, not a test).

    .venv/bin/python benchmarks/cluster.py [--n 1000] [--concurrency 32] [--latency 200] [--rounds 4]
                                           [--json out.json]

Starts its own two-node cluster on this machine (ray.cluster_utils: head + one more raylet, one CPU each, no
dashboard) and stops it at the end. Both nodes share this machine's cores, so the cluster has no more CPU than
the local supervisor: the throughput ratio here measures what Ray's dispatch costs, not what more machines
give (docs/cluster.md works that out on paper from these figures).

Three arms, in the same run: the local Supervisor; the cluster client as it is (`run` over each node's direct
channel, supervisor/ray/_channel.py); and the cluster client with direct_calls=False (every call a Ray actor
task), so that what the channel saves is measured against the same machine state.

Reports:
- latency: `--latency` sequential calls of each arm, taking turns call by call, p10/median/p90/p99 ms; the
  per-call overhead the cluster adds is the difference of the medians (target, issue 20: <= 2 ms), and its
  distribution, call by call (each cluster call less the local call just before it);
- throughput: N calls at concurrency C per arm, the arms taking turns in `rounds` rounds (the machine's
  rate drifts), calls per second for each and the ratios to local;
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
from typing import Any

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


async def _interleaved(n: int, arms: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, list[float]]:
    """`n` sequential calls of each arm, taking turns call by call (the machine's load drifts: each arm
    sees the same moments), in ms."""
    out: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(n):
        for name, once in arms.items():
            t0 = time.perf_counter()
            await once()
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def _dist(values: list[float]) -> dict[str, float]:
    return {
        "p10": round(_pct(values, 0.1), 3),
        "median": round(statistics.median(values), 3),
        "p90": round(_pct(values, 0.9), 3),
        "p99": round(_pct(values, 0.99), 3),
    }


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
    settings: dict[str, Any] = {
        "namespace": "corral-bench",
        "workspace_root": WORKSPACES,
        "max_concurrency": concurrency,
        "refresh_interval": 1.0,
    }
    async with (
        Supervisor(max_concurrency=concurrency) as local,
        RaySupervisor(**settings) as cluster,
        RaySupervisor(**settings, direct_calls=False) as via_ray,
    ):

        def runner(sup: Supervisor | RaySupervisor) -> Callable[[], Awaitable[None]]:
            async def once() -> None:
                r = await sup.run([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                assert r.exit_code == 0, r

            return once

        arms = {"local": runner(local), "cluster": runner(cluster), "ray_calls": runner(via_ray)}
        # Warm-up: policy compiles, pre-forked pools on the nodes and here, the channels, Ray's connections.
        for once in arms.values():
            await _pool(min(64, n), concurrency, once)
        lat = await _interleaved(latency_n, arms)
        added = [c - loc for c, loc in zip(lat["cluster"], lat["local"], strict=True)]
        added_ray = [c - loc for c, loc in zip(lat["ray_calls"], lat["local"], strict=True)]
        per_round = max(1, n // rounds)
        took: dict[str, list[float]] = {name: [] for name in arms}
        driver_cpu = 0.0
        for _ in range(rounds):
            for name, once in arms.items():
                c0 = _self_cpu()
                took[name].append(await _pool(per_round, concurrency, once))
                if name == "cluster":
                    driver_cpu += _self_cpu() - c0
        per_node = await cluster.totals(per_node=True)
        assert isinstance(per_node, dict)
        spread = {nid[:12]: c["started"] for nid, c in per_node.items()}
        await cluster.shutdown()
    total = per_round * rounds
    secs = {name: sum(t) for name, t in took.items()}
    return {
        "n": total,
        "concurrency": concurrency,
        "nodes": 2,
        "latency_calls": latency_n,
        "local_latency_ms": _dist(lat["local"]),
        "cluster_latency_ms": _dist(lat["cluster"]),
        "ray_calls_latency_ms": _dist(lat["ray_calls"]),
        "ray_overhead_ms_median": round(
            statistics.median(lat["cluster"]) - statistics.median(lat["local"]), 3
        ),
        "ray_calls_overhead_ms_median": round(
            statistics.median(lat["ray_calls"]) - statistics.median(lat["local"]), 3
        ),
        "added_ms_paired": _dist(added),
        "added_ms_paired_ray_calls": _dist(added_ray),
        "local_per_s": round(total / secs["local"], 1),
        "cluster_per_s": round(total / secs["cluster"], 1),
        "ray_calls_per_s": round(total / secs["ray_calls"], 1),
        "ratio_cluster_vs_local": round(secs["local"] / secs["cluster"], 3),
        "ratio_ray_calls_vs_local": round(secs["local"] / secs["ray_calls"], 3),
        "rounds": rounds,
        "ratio_per_round": [round(a / b, 3) for a, b in zip(took["local"], took["cluster"], strict=True)],
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
    print(
        f"{head}, two local Ray nodes vs one Supervisor "
        f"(latency: {report['latency_calls']} calls each, interleaved)"
    )
    print(f"  latency ms, local     {report['local_latency_ms']}")
    print(f"  latency ms, cluster   {report['cluster_latency_ms']}  (run over the direct channel)")
    print(f"  latency ms, ray calls {report['ray_calls_latency_ms']}  (direct_calls=False)")
    print(
        f"  added per call (median difference): {report['ray_overhead_ms_median']} ms "
        f"(Ray actor calls: {report['ray_calls_overhead_ms_median']} ms)"
    )
    print(f"  added per call, paired call by call: {report['added_ms_paired']}")
    print(
        f"  throughput local {report['local_per_s']}/s, cluster {report['cluster_per_s']}/s, "
        f"ratio {report['ratio_cluster_vs_local']} (per round {report['ratio_per_round']}); "
        f"ray calls {report['ray_calls_per_s']}/s, ratio {report['ratio_ray_calls_vs_local']}"
    )
    print(f"  driver CPU per cluster call: {report['driver_cpu_ms_per_call']} ms")
    print(f"  calls per node: {report['calls_per_node']}")
    print(f"  load average (1 min) at the end: {report['loadavg_1m']} on {report['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
