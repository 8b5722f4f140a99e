"""CPU per sandboxed /bin/true, by where it is spent (a benchmark, not a test): the sandbox's cgroup
(Result.cpu_s: the init and the command up to the S record), the sandbox inits with their commands in full
(this process's reaped children: CLONE_PARENT makes the inits ours; with their exit, the view's teardown),
the supervisor (this process, every thread) and the fork server (its schedstat). CPU, not wall time: the
machine may be shared.

    .venv/bin/python benchmarks/spawn_cpu.py [--n 300] [--warmup 30] [--prefork N] [--workdir DIR]
                                             [--json out.json]

Sequential runs of the default profile (workspace-write) in one workdir; `--prefork 0`: every sandbox built on
the spot (the default, 2, has most runs served by a pre-forked one). To compare two trees, run each tree's
copy in turn, alternately, in one sitting (docs/security.md's overlay cost figures were taken so).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import DEVNULL, Supervisor


def _sched_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _self_us() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e6


def _children_us() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1e6


async def _measure(n: int, warmup: int, workdir: str, prefork: int) -> dict[str, float]:
    pol = profiles.workspace_write(workdir)
    async with Supervisor(prefork=prefork) as sup:
        for _ in range(warmup):
            await sup.run(["/bin/true"], policy=pol, stdout=DEVNULL, stderr=DEVNULL)
        fs = sup._forkserver
        assert fs is not None
        assert fs.server_pid is not None
        pid = fs.server_pid
        cg: list[float] = []
        s0, c0, f0 = _self_us(), _children_us(), _sched_ns(pid)
        for _ in range(n):
            r = await sup.run(["/bin/true"], policy=pol, stdout=DEVNULL, stderr=DEVNULL)
            assert r.exit_code == 0, r
            cg.append(r.cpu_s * 1e6)
        s1, f1 = _self_us(), _sched_ns(pid)
    c1 = _children_us()  # (the last inits are reaped by the time the Supervisor has closed)
    return {
        "sandbox_cgroup_median_us": statistics.median(cg),
        "inits_and_commands_per_run_us": (c1 - c0) / n,
        "supervisor_per_run_us": (s1 - s0) / n,
        "fork_server_per_run_us": (f1 - f0) / 1e3 / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--prefork", type=int, default=2, help="Supervisor(prefork=...); 2 is its default")
    ap.add_argument("--workdir", default=None, help="default: a new directory under /var/tmp")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-spawn-cpu-", dir="/var/tmp") as scratch:
        out = anyio.run(_measure, args.n, args.warmup, args.workdir or scratch, args.prefork)
    for key, value in out.items():
        print(f"{key:34} {value:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
