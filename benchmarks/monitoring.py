"""Monitoring cost with many idle children (a benchmark, not a test).

    .venv/bin/python benchmarks/monitoring.py [--children 500] [--rounds 48] [--idle 12] [--json out.json]

Starts N sandboxed `sleep 60` through one Supervisor(max_concurrency=600), each with a memory limit so that
each has its own cgroup, then measures, in the same run:
- the cgroup part of one full monitoring sample per child: `supervisor._monitor.sample_all` over all
  children, exactly as the supervisor's sampler runs it (with its kernel notifiers, and with each child's
  rotation of the files read less often: docs/architecture.md, "The sampler"), divided by N. Target
  (issue 13): <= 10 us per child per sample. It is timed three ways, because the kernel's side of the
  reads depends on what the CPU caches still hold (the same code gave 5.5-19.5 us in one session):
  - cold, the figure of record: before each timed round a 64 MiB copy evicts the CPU caches (the kernel's
    cgroup and file structures of every leaf, and the interpreter's objects), as the other work of a busy
    machine does in the second between two full rounds;
  - warm: the rounds back to back;
  - the supervisor's own full rounds during the idle window (its worker thread, timed by a wrapper);
  each over a number of rounds that is a multiple of every rotation's length (3 and 4), so that every file
  of every child is read as often as the sampler reads it; median and min;
- `Leaf.stats()` alone (every file, as the final sample reads them);
- what the sampler does per child per round on average: one full round in `FULL_EVERY`, and between them
  `sample_due` (here one pread of the OOM counter per child, the memory limits being the kernel's, or none
  where cgroup v1 OOM notifiers serve);
- psutil oneshot per process for comparison (memory_info, cpu_times, num_fds, num_threads in one oneshot),
  over every process of every child (the sandbox init and the sleep), divided by the process count
  (measured here while planning: ~106 us);
- the supervisor's RSS per child: (RSS with N children - RSS with 0, after warm-up) / N. Target <= 50 KiB;
- the supervisor's CPU while idle with N children (the sampler every monitor_interval), as % of one core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import supervisor._supervisor as _supervisor_module
from policies import profiles
from supervisor import DEVNULL, Child, ChildStats, Supervisor
from supervisor._monitor import FULL_EVERY, sample_all, sample_due

if TYPE_CHECKING:
    from supervisor.sandbox.cgroups._notify import Notifiers

KiB = 1024


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _time_rounds(
    rounds: int, fn: object, before: object = None, cpu: list[float] | None = None
) -> list[float]:
    """Each round's wall time; with `cpu`, its CPU time (this thread's) appended there too: what the rounds
    cost without the time other processes of a loaded machine took the CPU."""
    out = []
    for _ in range(rounds):
        if before is not None:
            before()  # type: ignore[operator]
        c = time.thread_time()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.thread_time() - c)
    return out


class Evictor:
    """Evicts the CPU caches: a copy of 64 MiB (twice this machine's last-level cache) between two buffers
    whose pages are all written first (a fresh bytearray's pages would all be the kernel's one zero page)."""

    def __init__(self, size: int = 64 << 20) -> None:
        self._src = bytearray(b"\x5a") * size
        self._dst = bytearray(b"\xa5") * size

    def __call__(self) -> None:
        self._dst[:] = self._src


def psutil_round(procs: list[psutil.Process]) -> None:
    """What a psutil-based monitor reads per process each round: memory, CPU, fds, threads."""
    for p in procs:
        try:
            with p.oneshot():
                p.memory_info()
                p.cpu_times()
                p.num_fds()
                p.num_threads()
        except psutil.Error:
            pass


async def main(n: int, rounds: int, interval: float, idle: float) -> dict[str, object]:
    me = psutil.Process()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws, memory="64M")
        async with Supervisor(max_concurrency=600, monitor_interval=interval) as sup:
            # Warm-up: the policy's compile, the fork server, worker threads, a child's full life.
            for _ in range(5):
                await sup.run(["/bin/true"], policy=policy)
            warm = await sup.start(["/bin/sleep", "60"], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
            await anyio.sleep(2 * interval)
            warm.kill()
            await warm.wait()
            await anyio.sleep(0.5)
            rss0 = _rss()

            children: list[Child] = []
            t0 = time.perf_counter()

            async def one() -> None:
                children.append(
                    await sup.start(["/bin/sleep", "60"], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                )

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            start_s = time.perf_counter() - t0
            assert sup.cgroups is not None
            assert all(c.leaf is not None and c.running for c in children)
            await anyio.sleep(max(1.0, 4 * interval))  # a few sampler rounds: every leaf's fds are open
            rss1 = _rss()

            # The cgroup part: exactly what the sampler does per full round, with the supervisor's notifiers
            # (armed at each child's first sample, during the sleep above).
            # Cold first: each round after the caches were evicted (the figure of record), then warm.
            evict = Evictor()
            # with_fds=True, as the supervisor calls it (no child here has an fd limit: none is counted).
            sample_all(children, True, sup._oom)
            cold_cpu: list[float] = []
            cold_round = _time_rounds(rounds, lambda: sample_all(children, True, sup._oom), evict, cold_cpu)
            per_round = _time_rounds(rounds, lambda: sample_all(children, True, sup._oom))
            leaves = [c.leaf for c in children]
            stats_round = _time_rounds(rounds, lambda: [leaf.stats() for leaf in leaves])  # type: ignore[union-attr]

            # What the sampler does on average per round: one full round (sample_all) in FULL_EVERY, the
            # rounds between only what the children's limits need (sample_due: here, memory limits the
            # kernel enforces, so one pread of the OOM counter per child, or, where an OOM notifier is
            # registered (cgroup v1), one epoll_wait for all of them).
            def cycle() -> None:
                sample_all(children, True, sup._oom)
                for _ in range(FULL_EVERY - 1):
                    sample_due(children, sup._oom)

            cycle()
            per_cycle = [t / FULL_EVERY for t in _time_rounds(rounds, cycle)]
            # psutil, per process: the init (pid 1 of the sandbox) and the sleep under it.
            procs: list[psutil.Process] = []
            for c in children:
                for pid in c.leaf.pids():  # type: ignore[union-attr]
                    procs.append(psutil.Process(pid))
            ps_round = _time_rounds(max(3, rounds // 5), lambda: psutil_round(procs))
            del evict
            # The supervisor's CPU while idle, sampler included; and its own full rounds, timed in its
            # worker thread by a wrapper around the sample_all it calls.
            own: list[float] = []
            own_cpu: list[float] = []
            real = sample_all

            def timed(
                children: Sequence[Child], with_fds: bool, notifiers: Notifiers[Child] | None = None
            ) -> list[ChildStats]:
                c, t = time.thread_time(), time.perf_counter()
                try:
                    return real(children, with_fds, notifiers)
                finally:
                    own.append(time.perf_counter() - t)
                    own_cpu.append(time.thread_time() - c)

            _supervisor_module.sample_all = timed  # type: ignore[attr-defined]
            cpu0, w0 = sum(me.cpu_times()[:2]), time.perf_counter()
            try:
                await anyio.sleep(idle)
            finally:
                _supervisor_module.sample_all = real  # type: ignore[attr-defined]
            idle_cpu = (sum(me.cpu_times()[:2]) - cpu0) / (time.perf_counter() - w0)
            samples_seen = sum(1 for c in children if c.last_stats is not None)
            controllers = sup.cgroups.controllers
            for c in children:
                c.kill()
            for c in children:
                await c.wait()

    def us(xs: list[float], k: int) -> dict[str, float]:
        return {"median": round(statistics.median(xs) / k * 1e6, 2), "min": round(min(xs) / k * 1e6, 2)}

    report: dict[str, object] = {
        "children": n,
        "processes": len(procs),
        "rounds": rounds,
        "monitor_interval_s": interval,
        "start_all_s": round(start_s, 2),
        "cgroup_sample_all_us_per_child": us(cold_round, n),
        "cgroup_sample_all_cpu_us_per_child": us(cold_cpu, n),
        "cgroup_sample_all_warm_us_per_child": us(per_round, n),
        "cgroup_sample_all_own_rounds_us_per_child": us(own, n) if own else None,
        "cgroup_sample_all_own_rounds_cpu_us_per_child": us(own_cpu, n) if own else None,
        "own_rounds": len(own),
        "cgroup_sampler_us_per_child_per_round": us(per_cycle, n),
        "cgroup_leaf_stats_us_per_child": us(stats_round, n),
        "psutil_oneshot_us_per_process": us(ps_round, len(procs)),
        "rss_before_kib": rss0 // KiB,
        "rss_after_kib": rss1 // KiB,
        "rss_per_child_kib": round((rss1 - rss0) / n / KiB, 1),
        "idle_supervisor_cpu_pct_of_one_core": round(idle_cpu * 100, 2),
        "children_sampled": samples_seen,
        "cgroup_controllers": controllers,
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "kernel": os.uname().release,
    }
    cg, ps = us(cold_round, n), us(ps_round, len(procs))

    def line(label: str, d: dict[str, float], note: str = "") -> None:
        print(f"  {label:<48s} median {d['median']} us, min {d['min']} us{note}")

    print(
        f"{n} idle sandboxed children ({len(procs)} processes), memory limit each; started in {start_s:.1f}s"
    )
    line("cgroup sample (sample_all) per child per sample:", cg, "  (target <= 10 us)")
    line(f"  cold: caches evicted before each of {rounds} rounds", cg)
    line("    the same rounds' CPU time (the sampling thread's)", us(cold_cpu, n))
    line("  warm: the rounds back to back", us(per_round, n))
    if own:
        line(f"  the supervisor's own {len(own)} full rounds (idle)", us(own, n))
        line("    their CPU time (the worker thread's)", us(own_cpu, n))
    line(f"sampler, average per child per round (1 full in {FULL_EVERY}):", us(per_cycle, n))
    line("Leaf.stats() alone per child (every file):", us(stats_round, n))
    line("psutil oneshot per process:", ps)
    print(f"  ratio psutil/cgroup (median): {ps['median'] / cg['median']:.1f}x")
    print(
        f"  supervisor RSS: {rss0 // KiB} KiB with 0 children, {rss1 // KiB} KiB with {n}: "
        f"{report['rss_per_child_kib']} KiB per child  (target <= 50 KiB)"
    )
    print(
        f"  supervisor CPU while idle (sampler every {interval}s): "
        f"{report['idle_supervisor_cpu_pct_of_one_core']}% of one core"
    )
    print(f"  load average during the run: {os.getloadavg()}")
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=48, help="timed rounds (default 48: a multiple of 3 and 4)")
    ap.add_argument("--interval", type=float, default=0.25, help="Supervisor monitor_interval (default 0.25)")
    ap.add_argument("--idle", type=float, default=12.0, help="the idle window, seconds (default 12)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    report = anyio.run(main, a.children, a.rounds, a.interval, a.idle)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
