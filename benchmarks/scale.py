"""Many concurrent sandboxes through one Supervisor (a benchmark, not a test; issue 13).

    .venv/bin/python benchmarks/scale.py [--children 2000] [--idle 1000] [--idle-seconds 20]
        [--interval 0.25] [--memory 64M] [--json out.json]

1. Starts `--children` sandboxed `sleep` commands at once (Supervisor(max_concurrency=children), stdio to
   /dev/null, each with a memory limit and so its own cgroup leaf) and reports how long until every one
   runs, with the supervisor's and the fork server's RSS and the supervisor's open fds then.
2. Ends all but `--idle` of them, waits until they are reaped, then measures the supervisor process's CPU
   (user + system, every thread: the sampler's worker thread included) over `--idle-seconds` with those
   children alive and sleeping, at the monitor interval `--interval` (the Supervisor default: 0.25 s), as a
   percentage of one core.
3. Leaves the Supervisor (kills and reaps the rest) and reports the teardown time, then the leftovers:
   processes still running the benchmark's command, zombies of this process, corral cgroup directories
   of this supervisor, and mounts added to this process's mount namespace (each should be 0).

The soft RLIMIT_NOFILE is raised to the hard one (the Supervisor does it too, at start): the supervisor
holds eight fds per memory-limited child (pidfd, status pipe, the cgroup files it samples: docs/cgroups.md,
"Fds per child"); ten until session 9, when 2,000 children reached the host's hard limit of 20,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import DEVNULL, Child, Supervisor

TOKEN = "86399.25"  # the sleep's argument: how leftovers are recognised


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _token_procs() -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if TOKEN.encode() in f.read():
                        out.append(int(name))
            except OSError:
                pass
    return out


def _zombies_of(pid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                n += 1
    return n


def _mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


async def main(a: argparse.Namespace) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict[str, object] = {"children": a.children, "idle_children": a.idle, "interval": a.interval}
    mounts_before = _mounts()
    ws = tempfile.mkdtemp(prefix="corral-scale-", dir="/var/tmp")
    policy = profiles.workspace_write(ws, memory=a.memory)
    parents: list[str] = []
    sup = Supervisor(max_concurrency=a.children + 16, monitor_interval=a.interval)
    async with sup:
        assert sup._forkserver is not None
        assert sup._forkserver._proc is not None
        fs_pid = sup._forkserver._proc.pid
        if sup.cgroups is not None:
            parents = sup.cgroups.parents
        children: list[Child] = []
        errors: list[str] = []

        async def one() -> None:
            try:
                children.append(
                    await sup.start(["/bin/sleep", TOKEN], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                )
            except Exception as err:  # reported, not raised: the count is the result
                errors.append(repr(err))

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(a.children):
                tg.start_soon(one)
        out["start_s"] = round(time.monotonic() - t0, 2)
        out["started"] = len(children)
        out["errors"] = len(errors)
        if errors:
            out["first_error"] = errors[0]
        out["supervisor_rss_mib"] = round(_rss_kib(os.getpid()) / 1024, 1)
        out["forkserver_rss_mib"] = round(_rss_kib(fs_pid) / 1024, 1)
        out["supervisor_fds"] = len(os.listdir("/proc/self/fd"))
        print(json.dumps(out), flush=True)

        # Down to `idle` children, reaped, then the idle CPU with those alive.
        for c in children[a.idle :]:
            c.kill()
        for c in children[a.idle :]:
            await c.wait()
        keep = children[: a.idle]
        # The ended children's leaves are removed in batches off the loop: not part of the idle figure.
        mgr = sup.cgroups
        with anyio.move_on_after(60):
            while mgr is not None and len(mgr.leaves()) > a.idle:  # noqa: ASYNC110 (no event for it)
                await anyio.sleep(0.1)
        await anyio.sleep(1)
        c0, t1 = _cpu_s(), time.monotonic()
        await anyio.sleep(a.idle_seconds)
        cpu, wall = _cpu_s() - c0, time.monotonic() - t1
        out["idle_alive"] = sum(1 for c in keep if c.running)
        out["idle_cpu_percent"] = round(100 * cpu / wall, 2)
        out["supervisor_fds_idle"] = len(os.listdir("/proc/self/fd"))
        t2 = time.monotonic()
    out["teardown_s"] = round(time.monotonic() - t2, 2)
    out.update(_leftovers(parents, mounts_before))
    os.rmdir(ws)
    return out


def _leftovers(parents: list[str], mounts_before: int) -> dict[str, int]:
    """What the supervisor left after its exit (each should be 0). Blocking: the event loop is done."""
    deadline = time.monotonic() + 5  # the last SIGKILLed sleeps leave /proc after their reaping
    while _token_procs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "leftover_processes": len(_token_procs()),
        "leftover_zombies": _zombies_of(os.getpid()),
        "leftover_cgroups": sum(1 for p in parents if os.path.isdir(p)),
        "leftover_mounts": _mounts() - mounts_before,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--memory", default="64M")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = anyio.run(main, args)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
