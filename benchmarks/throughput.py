"""Throughput: N sandboxed /bin/true at concurrency C through one Supervisor, against the same N bare
asyncio subprocesses at the same concurrency, in the same run (a benchmark, not a test).

    .venv/bin/python benchmarks/throughput.py [--n 1000] [--concurrency 32] [--memory 64M] [--rounds 5]
                                              [--json out.json]

Every corral child gets the full workspace-write sandbox (user/pid/net/mount/ipc/uts/cgroup namespaces,
read-only root, Landlock, seccomp, dropped capabilities) and a cgroup leaf of its own (`--memory` also writes
a memory limit into it; "none" leaves the leaf without limits). The two take turns in `rounds` rounds of
n/rounds spawns each (bare, then corral), so that both see the same machine: on this VM the bare rate alone
drifts by 20% within minutes. Prints spawns per second for each over all rounds, the ratio corral/bare of
those totals, and the range of the per-round ratios. Target (issue 3): >= 0.4x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spawn import _on_asyncio  # benchmarks/spawn.py: which backend runs

from policies import profiles
from supervisor import DEVNULL, Supervisor

TRUE = "/bin/true"


async def _pool(n: int, concurrency: int, once: Callable[[], Awaitable[None]]) -> float:
    """Run `once` n times, at most `concurrency` at a time; returns the wall seconds."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            await once()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return time.perf_counter() - t0


def _cpu() -> dict[str, float]:
    """CPU seconds (user+system) of this process, of the fork server (our child running
    supervisor.forkserver.server), and of our reaped children: the sandbox inits (CLONE_PARENT makes them
    ours) with the commands they reaped."""
    me = psutil.Process()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"supervisor": sum(me.cpu_times()[:2]), "sandboxes": kids.ru_utime + kids.ru_stime}
    for c in me.children():
        try:
            if any("supervisor.forkserver.server" in part for part in c.cmdline()):
                out["fork_server"] = out.get("fork_server", 0.0) + sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return out


async def bare_once() -> None:
    if not _on_asyncio():  # trio: the backend's own spawn (through anyio) is the baseline there
        await anyio.run_process([TRUE], stdout=DEVNULL, stderr=DEVNULL, check=True)
        return
    p = await asyncio.create_subprocess_exec(
        TRUE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await p.wait() != 0:
        raise RuntimeError("/bin/true failed")


async def main(n: int, concurrency: int, memory: str | None, rounds: int = 5) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws, memory=memory)
        # max_concurrency above the pool's, so the pool alone sets the concurrency for both sides.
        async with Supervisor(max_concurrency=concurrency * 2) as sup:

            async def corral_once() -> None:
                child = await sup.start([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                r = await child.wait()
                if r.exit_code != 0:
                    raise RuntimeError(r)

            # Warm-up for both: page cache, the policy's first compile, the fork server's first fork.
            await _pool(min(50, n), concurrency, bare_once)
            await _pool(min(50, n), concurrency, corral_once)
            per_round = max(1, n // rounds)
            bare_times: list[float] = []
            corral_times: list[float] = []
            cpu: dict[str, float] = {}
            for _ in range(rounds):
                bare_times.append(await _pool(per_round, concurrency, bare_once))
                cpu0 = _cpu()
                corral_times.append(await _pool(per_round, concurrency, corral_once))
                for k, v in _cpu().items():
                    cpu[k] = cpu.get(k, 0.0) + v - cpu0.get(k, 0.0)
            cgroups = sup.cgroups.controllers if sup.cgroups is not None else {}
            started = sup.totals["started"]
    n = per_round * rounds
    bare_s, corral_s = sum(bare_times), sum(corral_times)
    ratios = [b / c for b, c in zip(bare_times, corral_times, strict=True)]
    report: dict[str, object] = {
        "n": n,
        "backend": "asyncio" if _on_asyncio() else "trio",
        "concurrency": concurrency,
        "memory_limit": memory,
        "bare_per_s": round(n / bare_s, 1),
        "corral_per_s": round(n / corral_s, 1),
        "ratio_corral_vs_bare": round(bare_s / corral_s, 3),
        "rounds": rounds,
        "ratio_per_round": [round(r, 3) for r in ratios],
        "bare_wall_s": round(bare_s, 3),
        "corral_wall_s": round(corral_s, 3),
        # Where the CPU went during the corral run (seconds): the supervisor process (event loop + worker
        # threads: cgroup creation/removal, reaping), the single-threaded fork server, and the sandboxes
        # (each init's confinement, the command, the init's exit; the bare run's /bin/true are in the
        # baseline before cpu0, so not counted here).
        "corral_cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cgroup_controllers": cgroups,
        "corral_children_started": started,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
    }
    print(
        f"{n} x /bin/true at concurrency {concurrency}, in {rounds} alternating rounds "
        f"(corral memory limit: {memory or 'none'})"
    )
    bare = "bare asyncio subprocess" if report["backend"] == "asyncio" else "bare trio (anyio.run_process)"
    print(f"  {bare:25}  {n / bare_s:8.1f} /s   ({bare_s:.2f} s)")
    print(f"  corral workspace-write   {n / corral_s:8.1f} /s   ({corral_s:.2f} s)")
    print(
        f"  corral / bare throughput = {bare_s / corral_s:.3f}  (target >= 0.4; per round "
        f"{min(ratios):.3f}-{max(ratios):.3f})"
    )
    cpu = report["corral_cpu_s"]
    print(f"  CPU during the corral run: {cpu}  (wall {corral_s:.2f} s, {os.cpu_count()} cpus)")
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--memory", default="64M", help='memory limit per child, or "none" (default 64M)')
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of bare and corral (default 5)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="anyio backend")
    a = ap.parse_args()
    report = anyio.run(
        main, a.n, a.concurrency, None if a.memory == "none" else a.memory, a.rounds, backend=a.backend
    )
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
