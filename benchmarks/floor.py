"""The kernel's floor under the throughput target: benchmarks/ns_floor.c (compiled here with gcc) runs N
/bin/true at concurrency C in C, bare and with every namespace corral's workspace-write sandbox has, next to
the bare asyncio rate that benchmarks/throughput.py divides by, in the same run (a benchmark, not a test).

    .venv/bin/python benchmarks/floor.py [--n 1000] [--concurrency 32]

No spawn path can do less than the "C, all namespaces" row: it is the namespaces' creation and teardown
alone, with no Python, mounts (but /proc), Landlock, seccomp or cgroups. Its ratio to the bare asyncio rate
bounds what any corral design could score on the throughput target (>= 0.4x) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRUE = "/bin/true"
ALL_NS = 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000 | 0x08000000 | 0x04000000 | 0x02000000


def build(out: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("gcc is needed to build benchmarks/ns_floor.c (apt install gcc)")
    exe = out / "ns_floor"
    subprocess.run([gcc, "-O2", "-o", str(exe), str(HERE / "ns_floor.c")], check=True)
    return exe


def run_c(exe: Path, n: int, concurrency: int, flags: int) -> float:
    out = subprocess.run(
        [str(exe), str(n), str(concurrency), hex(flags)], check=True, capture_output=True, text=True
    ).stdout
    return float(out.split()[0])


async def bare_asyncio(n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            p = await asyncio.create_subprocess_exec(TRUE, stdout=asyncio.subprocess.DEVNULL)
            if await p.wait() != 0:
                raise RuntimeError("/bin/true failed")

    await asyncio.gather(*(one() for _ in range(min(50, n))))  # warm-up
    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t)


def main(n: int, concurrency: int, json_out: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        run_c(exe, min(100, n), concurrency, ALL_NS)  # warm-up
        rates = {
            "bare asyncio (Python)": asyncio.run(bare_asyncio(n, concurrency)),
            "C, fork+exec": run_c(exe, n, concurrency, 0),
            "C, all namespaces": run_c(exe, n, concurrency, ALL_NS),
        }
    base = rates["bare asyncio (Python)"]
    print(f"{n} x /bin/true at concurrency {concurrency}, {os.cpu_count()} cpus")
    for k, v in rates.items():
        print(f"  {k:24} {v:8.1f} /s   {v / base:5.2f}x bare asyncio")
    report = {
        "n": n,
        "concurrency": concurrency,
        "per_s": {k: round(v, 1) for k, v in rates.items()},
        "all_namespaces_vs_bare_asyncio": round(rates["C, all namespaces"] / base, 3),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
    }
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    main(a.n, a.concurrency, a.json)
