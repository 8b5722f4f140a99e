"""`make bench`: measure spawn latency and monitoring cost, write docs/benchmarks.md with plots.

    .venv/bin/python benchmarks/report.py [--n 200] [--children 0,50,100,200] [--out docs]

Spawn latency: /bin/true from start to reaped, sequentially, `n` times per method in one process, the
methods taking turns in blocks of 20 (each after a short warm-up), with benchmarks/spawn.py's measurement
functions, twice: back-to-back, and paced 20 ms apart (untimed), as an agent's tool calls come. The
methods: a bare asyncio spawn; corral (workspace-write, every layer: namespaces, mounts, Landlock, seccomp,
a cgroup per child); bubblewrap (`bwrap --unshare-all`); and an nsjail-like namespace baseline (`unshare
--user --map-root-user --pid --fork --net --mount --ipc --uts --mount-proc`: nsjail itself is not packaged
for Debian 12).

Monitoring cost: N idle sandboxed children (`sleep`, each in its own cgroup with memory and pids limits)
under one Supervisor, for each N: the time of one sampling round of every child
(`supervisor._monitor.sample_all`, what the supervisor's sampler runs every monitor_interval, in a worker
thread), the time psutil would take to read the same processes instead, and the supervisor process's CPU
while the children idle (its sampler running every 0.25 s).

Writes docs/benchmarks.md, docs/img/spawn_latency.png and docs/img/monitoring_cost.png (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import matplotlib
import psutil

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import monitoring  # noqa: E402 - benchmarks/monitoring.py: the psutil baseline
import spawn  # noqa: E402 - benchmarks/spawn.py: the spawn measurement functions

from policies import profiles  # noqa: E402
from supervisor import DEVNULL, Child, Supervisor  # noqa: E402
from supervisor._monitor import sample_all  # noqa: E402

UNSHARE = [
    "unshare", "--user", "--map-root-user", "--pid", "--fork", "--net", "--mount", "--ipc", "--uts",
    "--mount-proc", spawn.TRUE,
]  # fmt: skip

BARE = "bare asyncio spawn"
CORRAL = "corral workspace-write"
BWRAP = "bwrap --unshare-all"
NSJAIL_LIKE = "unshare (nsjail-like)"


async def unshare_once() -> None:
    p = await asyncio.create_subprocess_exec(*UNSHARE, stdout=asyncio.subprocess.DEVNULL)
    if await p.wait() != 0:
        raise RuntimeError("unshare failed")


PACE = 0.02  # seconds between spawns in the paced run


async def measure_spawn(
    n: int, block: int = 20, pause: float = 0.0
) -> tuple[dict[str, list[float]], tuple[str, ...]]:
    """Spawn-to-reaped latency samples in ms, per method, and the layers corral enforced. The methods take
    turns in blocks of `block` spawns (each block after its own short warm-up), so that a change in the
    machine's load during the run weighs on all of them alike; `pause` seconds (untimed) after each."""
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws)
        async with Supervisor() as sup:
            enforced: tuple[str, ...] = ()

            async def corral_once() -> None:
                nonlocal enforced
                child = await sup.start([spawn.TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                r = await child.wait()
                if r.exit_code != 0:
                    raise RuntimeError(r)
                enforced = r.enforced

            methods: dict[str, Callable[[], Awaitable[None]]] = {BARE: spawn.bare_once, CORRAL: corral_once}
            if shutil.which("bwrap"):
                methods[BWRAP] = spawn.bwrap_once
            if shutil.which("unshare"):
                methods[NSJAIL_LIKE] = unshare_once
            done = 0
            while done < n:
                k = min(block, n - done)
                for name, once in methods.items():
                    samples.setdefault(name, []).extend(await spawn._time(k, once, pause))
                done += k
    return samples, enforced


@dataclass
class MonitorPoint:
    children: int
    processes: int
    sample_ms: float  # one sample_all round over every child, median
    psutil_ms: float  # psutil reading the same processes, median
    idle_cpu_pct: float  # the supervisor's CPU while the children idle, % of one core


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


async def measure_monitoring(counts: Sequence[int], rounds: int, idle_window: float) -> list[MonitorPoint]:
    """Grow the number of idle children step by step and measure the monitoring cost at each step."""
    me = psutil.Process()
    points: list[MonitorPoint] = []
    interval = 0.25
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws, memory="64M", pids=16)
        async with Supervisor(max_concurrency=max(counts) + 8, monitor_interval=interval) as sup:
            for _ in range(5):  # warm-up: the policy's compile, the fork server, worker threads
                await sup.run([spawn.TRUE], policy=policy)
            children: list[Child] = []

            async def one() -> None:
                children.append(
                    await sup.start(["/bin/sleep", "3600"], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                )

            try:
                for n in sorted(counts):
                    async with anyio.create_task_group() as tg:
                        for _ in range(n - len(children)):
                            tg.start_soon(one)
                    await anyio.sleep(4 * interval)  # the sampler has seen every child: its fds are open
                    procs: list[psutil.Process] = []
                    for c in children:
                        leaf_pids = c.leaf.pids() if c.leaf is not None else [c.pid]
                        for pid in leaf_pids:
                            with contextlib.suppress(psutil.Error):
                                procs.append(psutil.Process(pid))
                    sample_ms = _median_ms(partial(sample_all, children, False), rounds)
                    psutil_ms = _median_ms(partial(monitoring.psutil_round, procs), max(3, rounds // 3))
                    cpu0, w0 = sum(me.cpu_times()[:2]), time.perf_counter()
                    await anyio.sleep(idle_window)
                    idle = (sum(me.cpu_times()[:2]) - cpu0) / (time.perf_counter() - w0)
                    points.append(MonitorPoint(n, len(procs), sample_ms, psutil_ms, idle * 100))
                    print(
                        f"  {n:4d} children ({len(procs):4d} processes): "
                        f"sample_all {sample_ms:7.3f} ms/round, psutil {psutil_ms:7.3f} ms/round, "
                        f"supervisor idle CPU {idle * 100:5.2f}% of a core"
                    )
            finally:
                for c in children:
                    c.kill()
                for c in children:
                    await c.wait()
    return points


# ------------------------------------------------ plots ---------------------------------------------------


def plot_spawn(samples: dict[str, list[float]], path: Path, title: str) -> None:
    names = list(samples)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    data = [samples[k] for k in names]
    major_minor = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if major_minor >= (3, 10) else {"vert": False}
    ax.boxplot(data, whis=(5, 95), showfliers=False, widths=0.55, **horizontal)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    for i, k in enumerate(names, start=1):
        med = statistics.median(samples[k])
        p95 = statistics.quantiles(samples[k], n=20)[18]
        ax.annotate(f"median {med:.2f} ms", (p95, i), xytext=(6, 0), textcoords="offset points", va="center")
    ax.set_xlabel("spawn to reaped, /bin/true (ms): box = quartiles, whiskers = 5th-95th percentile")
    ax.set_xlim(0, max(statistics.quantiles(v, n=20)[18] for v in data) * 1.25)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def plot_monitoring(points: list[MonitorPoint], path: Path) -> None:
    xs = [p.children for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    a.plot(xs, [p.sample_ms for p in points], "o-", label="corral sampler (cgroup files, sample_all)")
    a.plot(xs, [p.psutil_ms for p in points], "s--", label="psutil per process (for comparison)")
    a.set_xlabel("idle sandboxed children")
    a.set_ylabel("ms per sampling round (all children)")
    a.set_title("One sampling round")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.plot(xs, [p.idle_cpu_pct for p in points], "o-", color="tab:green")
    b.set_xlabel("idle sandboxed children")
    b.set_ylabel("supervisor CPU, % of one core")
    b.set_title("Supervisor CPU, children idle (sampled every 0.25 s)", fontsize=10)
    b.set_ylim(bottom=0)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# ------------------------------------------------ report --------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cgroup_layout() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "cgroup v2"
    if Path("/sys/fs/cgroup/unified").exists() or Path("/sys/fs/cgroup/memory").exists():
        return "cgroup v1 / hybrid"
    return "unknown"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=110, break_on_hyphens=False, break_long_words=False)


def _spawn_rows(samples: dict[str, list[float]], what: dict[str, str]) -> str:
    med = {k: statistics.median(v) for k, v in samples.items()}
    p90 = {k: statistics.quantiles(v, n=10)[8] for k, v in samples.items()}
    c = med[CORRAL]
    return "\n".join(
        f"| {k} | {med[k]:.2f} | {p90[k]:.2f} | {med[k] / med[BARE]:.1f}x | {c / med[k]:.2f} | {what[k]} |"
        for k in samples
    )


def _ratios(samples: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in samples.items()}
    c = med[CORRAL]
    out = [f"**{c / med[BARE]:.1f}x** a bare spawn"]
    if BWRAP in med:
        out.append(f"**{c / med[BWRAP]:.2f}x** bubblewrap")
    if NSJAIL_LIKE in med:
        out.append(f"**{c / med[NSJAIL_LIKE]:.2f}x** the nsjail-like `unshare` baseline")
    return ", ".join(out)


def render(
    samples: dict[str, list[float]],
    paced: dict[str, list[float]],
    enforced: tuple[str, ...],
    points: list[MonitorPoint],
    n: int,
    elapsed: float,
    load: tuple[float, float],
    idle_window: float,
) -> str:
    what = {
        BARE: "fork+exec, no isolation",
        CORRAL: "user/pid/net/mount/ipc/uts/cgroup namespaces, read-only root, private /tmp, Landlock, "
        "seccomp, no capabilities, rlimits, a cgroup per child",
        BWRAP: "user/pid/net/ipc/uts/cgroup namespaces, read-only bind of /, /dev, /proc, tmpfs /tmp",
        NSJAIL_LIKE: "user/pid/net/mount/ipc/uts namespaces, a fresh /proc; no seccomp, Landlock or cgroup",
    }
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = _spawn_rows(samples, what)
    paced_rows = _spawn_rows(paced, what)
    mrows = "\n".join(
        f"| {p.children} | {p.processes} | {p.sample_ms:.3f} | "
        f"{(p.sample_ms / p.children * 1000) if p.children else 0:.1f} | {p.psutil_ms:.3f} | "
        f"{p.idle_cpu_pct:.2f} |"
        for p in points
    )
    top = points[-1] if points else None
    mon_summary = ""
    if top is not None and top.children:
        per_child = top.sample_ms / top.children * 1000
        mon_summary = (
            f"With {top.children} idle children, one sampling round of all of them takes "
            f"**{top.sample_ms:.2f} ms** (**{per_child:.1f} µs per child**), against {top.psutil_ms:.2f} ms "
            f"for psutil to read the same {top.processes} processes "
            f"(**{top.psutil_ms / top.sample_ms:.0f}x** more); the supervisor then uses "
            f"**{top.idle_cpu_pct:.1f}%** of one core while they idle."
        )
    enforced_text = ", ".join(f"`{x}`" for x in enforced)
    spawn_summary = _wrap(
        f"Back-to-back, corral costs {_ratios(samples)}; paced {PACE * 1000:g} ms apart, {_ratios(paced)}. "
        f"It sets up more than these baselines: the layers enforced in this run were {enforced_text}."
    )
    nsjail_note = _wrap(
        f'The "nsjail-like" row is `{" ".join(UNSHARE)}`: nsjail is not packaged for Debian 12, and this is '
        "the namespace part of what nsjail does by default (user, pid, net, mount, ipc and uts namespaces, a "
        "fresh `/proc`), without its seccomp policy, rlimits or cgroups. For reference, measured on this "
        "machine while planning (not by this script): nsjail ~8 ms and firejail ~40 ms per `/bin/true`."
    )
    return f"""# Benchmarks

Generated by `make bench` (`benchmarks/report.py`) on {now}, in {elapsed:.0f} s. Re-run it to refresh
this page and its plots; the figures move by some percent from run to run.

Machine: {_cpu_model()}, {os.cpu_count()} CPUs, Linux {os.uname().release}, {_cgroup_layout()},
Python {platform.python_version()}; 1-minute load average {load[0]:.1f} before the run, {load[1]:.1f} after.
Every method runs in the same process and the same run, `{n}` times each, the methods taking turns in
blocks of 20 spawns (each block after a warm-up of 10), so that load changes during the run weigh on all
of them alike.

## Spawn latency

Time from starting `/bin/true` to having its Result, sequentially: `Supervisor.start()` to `Child.wait()`
returning for corral, spawn to reaped for the others. Two runs: back-to-back (each spawn the moment the
previous one is done), and paced, {PACE * 1000:g} ms apart (untimed), the way an agent's tool calls come. In
the paced run corral's sandbox for the next call is built and confined between calls (docs/architecture.md,
"Pre-forked sandboxes"), so a call costs the hand-over of the command, its exec and the final cgroup sample.
Back-to-back there is no time between calls: two sandboxes per policy are built ahead, but the builds
compete with the calls for the 2 CPUs, and a call that finds none ready has one built on the spot.

Back-to-back:

![spawn latency](img/spawn_latency.png)

| method | median ms | p90 ms | vs bare | corral / this | what it sets up |
|---|---:|---:|---:|---:|---|
{rows}

Paced, {PACE * 1000:g} ms apart:

![spawn latency, paced](img/spawn_latency_paced.png)

| method | median ms | p90 ms | vs bare | corral / this | what it sets up |
|---|---:|---:|---:|---:|---|
{paced_rows}

{spawn_summary}

{nsjail_note}

## Monitoring cost against the number of children

N idle sandboxed children (`sleep`, each with a memory and a pids limit, so each has its own cgroup) under
one `Supervisor`. For each N: the median time of one `supervisor._monitor.sample_all` round over all
children (the sampler runs it every `monitor_interval`, 0.25 s by default, in a worker thread: a few
`pread(2)`s per cgroup on files kept open), the time psutil takes to read memory, CPU, fds and threads of
the same processes (what a psutil-based monitor would do), and the supervisor process's own CPU while the
children idle, measured over a window of {idle_window:g} s (its resolution is one clock tick, 10 ms, so
{1 / idle_window:.2f}% of a core).

![monitoring cost](img/monitoring_cost.png)

| children | processes | sample_all ms/round | µs per child | psutil ms/round | supervisor CPU % |
|---:|---:|---:|---:|---:|---:|
{mrows}

{_wrap(mon_summary)}

## Reproducing

```sh
make bench                                            # this page and docs/img/*.png
.venv/bin/python benchmarks/report.py --n 500 --children 0,100,200,400
.venv/bin/python benchmarks/spawn.py --n 200          # spawn latency only, printed
```

Caveats: a small shared machine is noisy (other jobs' load moves the medians, by up to 40% between runs
here); the runs are sequential, so this is latency, not throughput; corral here runs as root on a hybrid
cgroup v1/v2 host, where cgroup creation and removal are part of every spawn. Throughput (many children at
once) and the supervisor's memory per child are in [benchmarks-engine.md](benchmarks-engine.md).
"""


async def main(n: int, counts: list[int], out: Path, rounds: int, idle_window: float) -> None:
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    print(f"spawn latency, n={n} each ...")
    samples, enforced = await measure_spawn(n)
    print(f"spawn latency paced {PACE * 1000:g} ms apart, n={n} each ...")
    paced, _ = await measure_spawn(n, pause=PACE)
    for label, got in (("back-to-back", samples), ("paced", paced)):
        for k, v in got.items():
            med, p90 = statistics.median(v), statistics.quantiles(v, n=10)[8]
            print(f"  {label:12} {k:26} median {med:7.3f} ms  p90 {p90:7.3f} ms")
    print(f"monitoring cost, children {counts} ...")
    points = await measure_monitoring(counts, rounds, idle_window)
    plot_spawn(samples, img / "spawn_latency.png", "Spawn latency, back-to-back, same machine and run")
    plot_spawn(paced, img / "spawn_latency_paced.png", f"Spawn latency, {PACE * 1000:g} ms apart, same run")
    plot_monitoring(points, img / "monitoring_cost.png")
    load = (load_before, os.getloadavg()[0])
    text = render(samples, paced, enforced, points, n, time.perf_counter() - t0, load, idle_window)
    (out / "benchmarks.md").write_text(text)
    for label, got in (("back-to-back", samples), ("paced", paced)):
        med = {k: statistics.median(v) for k, v in got.items()}
        print(f"{label}: corral / bare = {med[CORRAL] / med[BARE]:.2f}", end="")
        if BWRAP in med:
            print(f", corral / bwrap = {med[CORRAL] / med[BWRAP]:.2f}", end="")
        if NSJAIL_LIKE in med:
            print(f", corral / unshare = {med[CORRAL] / med[NSJAIL_LIKE]:.2f}", end="")
        print()
    print(f"wrote {out / 'benchmarks.md'} and the plots in {img}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="spawns per method (default 200)")
    ap.add_argument("--children", default="0,50,100,200", help="children counts for the monitoring sweep")
    ap.add_argument("--rounds", type=int, default=30, help="sampling rounds timed per count")
    ap.add_argument("--idle-window", type=float, default=3.0, help="seconds the supervisor's CPU is measured")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.md and img/ go")
    a = ap.parse_args()
    counts = sorted({int(x) for x in a.children.split(",")})
    anyio.run(main, a.n, counts, Path(a.out), a.rounds, a.idle_window)
