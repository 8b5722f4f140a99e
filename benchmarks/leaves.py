"""Cgroup leaf lifecycle: what a child's leaf costs the supervisor and the kernel when it is made and removed
for every child, against a leaf kept and reused (docs/cgroups.md, "Reused leaves"), in the same run (a
benchmark, not a test). Root, cgroup v1 (leaves are reused there only).

    .venv/bin/python benchmarks/leaves.py [--n 500] [--rounds 4] [--memory 64M]

Each cycle is what the supervisor does per child: take a leaf with the memory limit written (create_leaf,
on the event loop), place a process in it (a forked child, its pid written to every `tasks` file, as the
init does), let it exit, reap it, and give the leaf back (Leaf.release: kept, or removed). The two modes
take turns in `rounds` rounds. Prints, per cycle: the wall time, this process's CPU (user+system, the
supervisor's share), and the whole machine's CPU from /proc/stat (which includes the kernel's deferred
work of removing a cgroup, run by kworkers: css_killed_work_fn, css_free_rwork_fn), minus nothing: on a
loaded machine the last one carries other processes' CPU too.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import ResourcePolicy, parse_size
from supervisor.sandbox.cgroups import CgroupManager


def _machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cycles(mgr: CgroupManager, n: int, tag: str, resources: ResourcePolicy) -> tuple[float, float, float]:
    """n leaf cycles; returns (wall, own CPU, machine CPU) seconds."""
    w0, c0, m0 = time.perf_counter(), _own_cpu(), _machine_cpu()
    for i in range(n):
        leaf = mgr.create_leaf(f"{tag}{i}", resources)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # waits until placed, then exits in its leaf
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        for path in leaf.placement_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
        os.close(w)
        os.waitpid(pid, 0)
        leaf.release()
    return time.perf_counter() - w0, _own_cpu() - c0, _machine_cpu() - m0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--memory", default="64M")
    args = ap.parse_args()
    resources = ResourcePolicy(memory=parse_size(args.memory))
    new, kept = CgroupManager(pool=0), CgroupManager()
    new.open("corralbench")
    kept.open("corralbench")
    totals = {"new": [0.0, 0.0, 0.0], "kept": [0.0, 0.0, 0.0]}
    per = args.n // args.rounds
    try:
        if any(v != 1 for v in kept.controllers.values()):
            print("leaves are reused on cgroup v1 only; this host's controllers:", kept.controllers)
            return
        _cycles(kept, 20, "warm", resources)  # the kept mode starts from a pool with a leaf in it
        for rnd in range(args.rounds):
            for mode, mgr in (("new", new), ("kept", kept)):
                got = _cycles(mgr, per, f"r{rnd}", resources)
                for k in range(3):
                    totals[mode][k] += got[k]
    finally:
        new.close()
        kept.close()
    n = per * args.rounds
    print(f"{n} leaf cycles per mode (memory limit {args.memory}), {args.rounds} alternating rounds")
    for mode in ("new", "kept"):
        wall, own, machine = (x / n * 1e6 for x in totals[mode])
        shown = f"wall {wall:6.0f} us, this process CPU {own:5.0f} us, machine CPU {machine:6.0f} us"
        print(f"  {mode:5} per cycle: {shown}")
    print(f"  kept leaves reused: {kept.pool.reused}")
    nw, kw = totals["new"], totals["kept"]
    names = ("wall", "process CPU", "machine CPU")
    print("  kept/new: " + ", ".join(f"{k} {kw[i] / nw[i]:.3f}" for i, k in enumerate(names)))


if __name__ == "__main__":
    main()
