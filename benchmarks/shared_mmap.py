"""The cost of watching shared file mappings (a benchmark, not a test).

    .venv/bin/python benchmarks/shared_mmap.py [--calls 20000] [--rounds 3] [--json out.json]

The notifying seccomp filter sends every mmap with MAP_SHARED of a file to the sandbox init, which refuses
one of a set-id file open for writing (docs/security.md, "Set-id bits") and lets every other run. In one
supervisor, alternating, with the watch (the notifying filter) and without it (the same supervisor told its
kernel has no user notification: the errno filter alone, which watches nothing), each in its own sandbox:
- `mmap_us`: N shared read-only mappings of one file, and N private ones (the baseline: not watched), per
  call, as the C loop measures them inside;
- `sqlite_wal_s`: a SQLite WAL workload (200 connections opened one after another, each mapping the -shm
  file, 20 one-row transactions each), its time inside; the same on the host, bare, as a reference;
- `spawn_ms`: median `/bin/true` round trip (nothing watched: the filter's extra rules only).
The ratios watched/unwatched are the figures; under load they are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import Policy, profiles
from supervisor import Supervisor
from supervisor.sandbox.probe import Feature

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    int flags = !strcmp(argv[1], "shared") ? MAP_SHARED : MAP_PRIVATE;
    int fd = open(argv[3], O_RDONLY);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *p = mmap(NULL, 4096, PROT_READ, flags, fd, 0);
        if (p == MAP_FAILED) return 1;
        munmap(p, 4096);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1000.0);
    return 0;
}
"""

SQLITE = r"""
import os, sqlite3, sys, time
path = sys.argv[1]
for suffix in ("", "-wal", "-shm"):
    if os.path.exists(path + suffix):
        os.unlink(path + suffix)
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
t0 = time.monotonic()
for c in range(200):
    conn = sqlite3.connect(path)
    for i in range(20):
        with conn:
            conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 50,))
    conn.close()
print(round(time.monotonic() - t0, 4))
"""


def policy(where: Path, key: str) -> Policy:
    """The policy of `key`: for "unwatched" another filter key (the compiled seccomp part is cached per
    policy): a deny of a name the built-ins deny already, which compiles to the same rules."""
    pol = profiles.workspace_write(where, timeout=300)
    if key == "unwatched":
        pol = dataclasses.replace(pol, syscalls=dataclasses.replace(pol.syscalls, deny=("vhangup",)))
    return pol


async def run_inside(sup: Supervisor, argv: list[str], pol: Policy) -> float:
    r = await sup.run(argv, policy=pol)
    assert r.exit_code == 0, r
    assert not r.denials, r.denials
    return float(r.stdout.decode().split()[-1])


def setup(where: Path, rounds: int) -> tuple[list[str], list[float]]:
    """Build the loop and the data in `where`; the SQLite command and its bare times on the host."""
    os.chmod(where, 0o755)
    (where / "loop.c").write_text(LOOP_C)
    subprocess.run(["cc", "-O2", "-o", str(where / "loop"), str(where / "loop.c")], check=True)
    (where / "data").write_bytes(b"\0" * 65536)
    (where / "wal.py").write_text(SQLITE)
    py = ["/usr/bin/python3", "-I", "-S", str(where / "wal.py"), str(where / "t.db")]
    bare = [
        float(subprocess.run(py, capture_output=True, check=True).stdout.split()[-1]) for _ in range(rounds)
    ]
    return py, bare


async def measure(where: Path, py: list[str], calls: int, rounds: int) -> dict[str, dict[str, float]] | None:
    """Median figures per key ("watched", "unwatched"), or None without user notification."""
    async with Supervisor(prefork=0) as sup:
        if not sup.caps.seccomp_notify.available:
            print(f"seccomp user notification: {sup.caps.seccomp_notify.reason}")
            return None
        watched = sup.caps
        unwatched = dataclasses.replace(watched, seccomp_notify=Feature(False, 95, "benchmark: off"))
        figures: dict[str, dict[str, list[float]]] = {"watched": {}, "unwatched": {}}
        for _ in range(rounds):
            for key, caps in (("watched", watched), ("unwatched", unwatched)):
                sup._caps = caps
                f = figures[key]
                for mode in ("shared", "private"):
                    argv = [str(where / "loop"), mode, str(calls), str(where / "data")]
                    f.setdefault(f"mmap_{mode}_us", []).append(
                        await run_inside(sup, argv, policy(where, key))
                    )
                f.setdefault("sqlite_wal_s", []).append(await run_inside(sup, py, policy(where, key)))
                for _ in range(10):
                    t0 = time.perf_counter()
                    await sup.run(["/bin/true"], policy=policy(where, key))
                    f.setdefault("spawn_ms", []).append((time.perf_counter() - t0) * 1e3)
        sup._caps = watched
    return {k: {n: round(statistics.median(v), 3) for n, v in f.items()} for k, f in figures.items()}


def main(calls: int, rounds: int, out: str | None) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        where = Path(d)
        py, bare = setup(where, rounds)
        med = anyio.run(measure, where, py, calls, rounds)
    if med is None:
        return
    result = {
        "calls": calls,
        "rounds": rounds,
        "load_1min": round(os.getloadavg()[0], 2),
        **med,
        "sqlite_wal_bare_s": round(statistics.median(bare), 4),
        "ratios": {n: round(med["watched"][n] / med["unwatched"][n], 3) for n in med["watched"]},
    }
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    main(a.calls, a.rounds, a.json)
