"""The cost of denial reports under a flood (a benchmark, not a test).

    .venv/bin/python benchmarks/denials.py [--calls 100000] [--json out.json]

Runs, in one sandbox each, a small C loop of N syscalls and measures in the same run:
- `denied`: N refused `unshare(CLONE_NEWUSER)` (seccomp; each one notified to the sandbox init, answered,
  folded into one report); the Result must hold exactly one denial with count N;
- `allowed`: N `getppid()` (nothing refused, nothing reported): the baseline;
and for each, the command's wall time (from the init's records), the supervisor process's CPU (its own
rusage: the event loop and its worker threads; the fork server and the sandbox are other processes) as a
share of one core over the command's run, and the supervisor's RSS growth. The issue's bounds: the
supervisor's CPU under ~5% of a core while the denied loop runs, its memory bounded (the same as for
one denial). The command's own slowdown (denied / allowed per call) is reported, not bounded.
Then N/10 UDP connects to 127.0.0.1 (allowed, not reported): under network none each is watched (a round
trip through the init), under network host none is: the cost of the network layer's reports.
With --spawns K: K sandboxed /bin/true one after another with reports (the notifying filter, the listener,
the init's poll loop) and K without (the same supervisor told its kernel has no user notification),
alternating in rounds of 20: nothing is denied, so the ratio should be 1 within noise.
When the syscall-exit observer runs (root, BTF, built: docs/denials.md), also:
- `erofs`: N refused mkdir("/etc/corral-bench") (the read-only view's EROFS, folded in the kernel into one
  report with count N): the supervisor's CPU share and RSS growth, the command's per-call time;
- `host_getppid`: N getppid() by a process outside any sandbox with the observer attached and without (its
  program runs at every syscall exit on the host): the per-call ratio;
- `opens`: N opens of an ordinary file, of a missing one and of a denied one (reported) in a sandbox of
  the default profile, with the observer and without (the `opens` function);
- with --observer K: K sandboxed /bin/true with a supervisor that runs the observer and K with one that
  does not (each started per round of 20), alternating: the spawn ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import anyio
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import Supervisor

LOOP_C = r"""
#define _GNU_SOURCE
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <fcntl.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    int deny = argv[1][0] == 'd', conn = argv[1][0] == 'c', erofs = argv[1][0] == 'e';
    int opens = argv[1][0] == 'o' || argv[1][0] == 'm' || argv[1][0] == 'h'; /* open, missing, hidden */
    struct sockaddr_in lo = {AF_INET, htons(1), {htonl(0x7f000001)}, {0}};
    int s = conn ? socket(AF_INET, SOCK_DGRAM, 0) : -1;
    for (long i = 0; i < n; i++) {
        if (deny) syscall(SYS_unshare, CLONE_NEWUSER);
        else if (erofs) syscall(SYS_mkdir, "/etc/corral-bench", 0755);
        else if (opens) {
            int fd = open(argv[3], O_RDONLY);
            if (fd >= 0) close(fd);
        } else if (conn) connect(s, (struct sockaddr *)&lo, sizeof lo); /* UDP: no handshake, no port */
        else syscall(SYS_getppid);
    }
    return 0;
}
"""


def build(where: Path) -> Path:
    src, exe = where / "loop.c", where / "loop"
    src.write_text(LOOP_C)
    subprocess.run(["cc", "-O2", "-static", "-o", str(exe), str(src)], check=True)
    return exe


async def measure(
    sup: Supervisor, exe: Path, mode: str, calls: int, workdir: Path, network: str = "none", path: str = ""
) -> dict[str, float]:
    policy = profiles.workspace_write(workdir, network=network)  # type: ignore[arg-type]
    if mode == "hidden":
        fs = policy.filesystem
        policy = replace(policy, filesystem=replace(fs, deny=(*fs.deny, path)))
    me = psutil.Process()
    rss0 = me.memory_info().rss
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    result = await sup.run([str(exe), mode, str(calls), path], policy=policy)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    rss1 = me.memory_info().rss
    assert result.exit_code == 0, result
    if mode == "denied":
        assert [(d.target, d.count) for d in result.denials] == [("unshare(CLONE_NEWUSER)", calls)], result
    elif mode == "erofs":
        assert [(d.target, d.count) for d in result.denials] == [("/etc/corral-bench", calls)], result
    elif mode == "hidden" and sup._observing.observer is not None:
        assert [(d.target, d.count) for d in result.denials] == [(path, calls)], result
    else:
        assert result.denials == ()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "wall_s": round(wall, 4),
        "per_call_us": round(wall / calls * 1e6, 3),
        "supervisor_cpu_s": round(cpu, 4),
        "supervisor_cpu_share": round(cpu / wall, 4),
        "supervisor_rss_growth_kib": round((rss1 - rss0) / 1024, 1),
    }


async def spawns(sup: Supervisor, workdir: Path, k: int) -> dict[str, float]:
    """Median /bin/true round trip (ms) with and without reports, alternating rounds of 20 (prefork=0:
    every spawn builds its sandbox)."""
    import dataclasses
    import statistics

    from supervisor.sandbox.probe import Feature

    with_reports = sup.caps
    without = dataclasses.replace(with_reports, seccomp_notify=Feature(False, 95, "benchmark: off"))
    policies = {
        "reports": profiles.workspace_write(workdir, timeout=60),
        "no_reports": profiles.workspace_write(workdir, timeout=60),
    }
    # Another filter key (the compiled seccomp part is shared by policies with the same syscalls): a
    # deny of a name the built-ins deny already, which compiles to the same filter.
    nr = policies["no_reports"]
    policies["no_reports"] = dataclasses.replace(
        nr, syscalls=dataclasses.replace(nr.syscalls, deny=("vhangup",))
    )
    times: dict[str, list[float]] = {"reports": [], "no_reports": []}
    for _ in range(max(1, k // 20)):
        for key in ("reports", "no_reports"):
            sup._caps = with_reports if key == "reports" else without
            for _ in range(20):
                t0 = time.perf_counter()
                await sup.run(["/bin/true"], policy=policies[key])
                times[key].append((time.perf_counter() - t0) * 1e3)
    sup._caps = with_reports
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_ms_reports": round(med["reports"], 3),
        "median_ms_no_reports": round(med["no_reports"], 3),
        "ratio": round(med["reports"] / med["no_reports"], 3),
    }


async def opens(exe: Path, where: Path, calls: int) -> dict[str, object]:
    """Per-call microseconds of N opens (and closes) in a sandbox of the default profile (its two dozen
    credential paths denied), with the observer and without (observe_denials=False), alternating 3
    rounds, the best of each: `open` an ordinary file (the call works: the program returns at its
    first compare), `missing` a file that does not exist (ENOENT: each prefix of the path is looked up
    in the denied paths' hash map), `hidden` a denied file (EACCES: reported, folded into one report
    with count N)."""
    plain = where / "plain.txt"
    plain.write_text("plain")
    paths = {
        "open": str(plain),
        "missing": str(where / "missing" / "file.txt"),
        "hidden": str(where / "denied.txt"),
    }
    (where / "denied.txt").write_text("secret")
    best: dict[tuple[str, bool], float] = {}
    for _ in range(3):
        for observe in (True, False):
            async with Supervisor(prefork=0, observe_denials=observe) as sup:
                for mode, path in paths.items():
                    m = await measure(sup, exe, mode, calls, where, path=path)
                    key = (mode, observe)
                    best[key] = min(best.get(key, float("inf")), m["per_call_us"])
    return {
        mode: {
            "observer_us": best[(mode, True)],
            "none_us": best[(mode, False)],
            "ratio": round(best[(mode, True)] / best[(mode, False)], 3),
        }
        for mode in paths
    }


def host_loop(exe: Path, calls: int) -> float:
    """Per-call microseconds of `calls` getppid() by a process outside any sandbox (the best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "allowed", str(calls)], check=True)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


async def observer_figures(exe: Path, where: Path, calls: int, k: int) -> dict[str, object]:
    """The observer's costs (see the module's docstring); {} when it cannot run here."""
    import statistics

    from supervisor import _observing

    out: dict[str, object] = {}
    async with Supervisor(prefork=0) as sup:
        if sup._observing.observer is None:
            return {"observer": sup._observing.reason}
        await measure(sup, exe, "erofs", 100, where)
        out["erofs"] = await measure(sup, exe, "erofs", calls, where)
        on = host_loop(exe, calls * 10)
    out["opens"] = await opens(exe, where, calls)
    _observing.ENABLED = False
    try:
        off = host_loop(exe, calls * 10)
        out["host_getppid_us"] = {
            "observer": round(on, 4),
            "none": round(off, 4),
            "ratio": round(on / off, 3),
        }
        if k:
            times: dict[bool, list[float]] = {True: [], False: []}
            policy = profiles.workspace_write(where, timeout=60)
            for _ in range(max(1, k // 20)):
                for enabled in (True, False):
                    _observing.ENABLED = enabled
                    async with Supervisor(prefork=0) as sup:
                        await sup.run(["/bin/true"], policy=policy)  # warm: compile, first spawn
                        for _ in range(20):
                            t0 = time.perf_counter()
                            await sup.run(["/bin/true"], policy=policy)
                            times[enabled].append((time.perf_counter() - t0) * 1e3)
            med = {e: statistics.median(v) for e, v in times.items()}
            out["spawn_ms"] = {
                "observer": round(med[True], 3),
                "none": round(med[False], 3),
                "ratio": round(med[True] / med[False], 3),
            }
    finally:
        _observing.ENABLED = True
    return out


async def main(calls: int, out: str | None, k: int = 0, ko: int = 0) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        where = Path(d)
        exe = build(where)
        async with Supervisor(prefork=0) as sup:
            if not sup.caps.seccomp_notify.available:
                print(f"seccomp user notification: {sup.caps.seccomp_notify.reason}")
                return
            await measure(sup, exe, "denied", 100, where)  # warm-up: compile, first spawn
            await measure(sup, exe, "allowed", 100, where)
            allowed = await measure(sup, exe, "allowed", calls, where)
            denied = await measure(sup, exe, "denied", calls, where)
            n = calls // 10
            watched = await measure(sup, exe, "connect", n, where)  # network none: every connect watched
            unwatched = await measure(sup, exe, "connect", n, where, network="host")
        spawn = {}
        if k:
            async with Supervisor(prefork=0) as sup2:
                spawn = await spawns(sup2, where, k)
        observed = await observer_figures(exe, where, calls, ko)
    figures = {
        "calls": calls,
        "cpus": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "allowed": allowed,
        "denied": denied,
        "command_slowdown_per_call": round(denied["per_call_us"] / max(allowed["per_call_us"], 1e-9), 1),
        "loopback_connect_watched": watched,
        "loopback_connect_unwatched_host_network": unwatched,
        "spawn_nothing_denied": spawn,
        "observer": observed,
    }
    print(json.dumps(figures, indent=2))
    if out:
        await anyio.Path(out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--json")
    parser.add_argument("--spawns", type=int, default=0)
    parser.add_argument("--observer", type=int, default=0)
    args = parser.parse_args()
    anyio.run(main, args.calls, args.json, args.spawns, args.observer)
