"""Spawn-to-exit latency of /bin/true: corral (full workspace-write sandbox) against a bare asyncio spawn and
against bubblewrap, sequentially, in the same run. Prints medians and ratios (a benchmark, not a test).

    .venv/bin/python benchmarks/spawn.py [--n 200] [--json out.json]

Targets (issue 2): corral <= 0.5x bwrap and <= 3x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import DEVNULL, Supervisor

TRUE = "/bin/true"
BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev",
    "--proc", "/proc", "--tmpfs", "/tmp", TRUE,
]  # fmt: skip


async def _time(n: int, once: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(10, n)):  # warm-up: page cache, the fork server's first policy compile
        await once()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await once()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def bare_once() -> None:
    p = await asyncio.create_subprocess_exec(TRUE, stdout=asyncio.subprocess.DEVNULL)
    await p.wait()


async def bwrap_once() -> None:
    p = await asyncio.create_subprocess_exec(*BWRAP, stdout=asyncio.subprocess.DEVNULL)
    if await p.wait() != 0:
        raise RuntimeError("bwrap failed")


async def main(n: int, json_out: str | None) -> dict[str, object]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws)
        async with Supervisor() as sup:

            async def corral_once() -> None:
                child = await sup.start([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                r = await child.wait()
                if r.exit_code != 0:
                    raise RuntimeError(r)

            results["bare asyncio"] = await _time(n, bare_once)
            results["corral workspace-write"] = await _time(n, corral_once)
            if shutil.which("bwrap"):
                results["bwrap --unshare-all"] = await _time(n, bwrap_once)
            enforced = list(child_layers(sup))
    med = {k: statistics.median(v) for k, v in results.items()}
    report: dict[str, object] = {
        "n": n,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[8], 3) for k, v in results.items()},
        "corral_vs_bare": round(med["corral workspace-write"] / med["bare asyncio"], 2),
        "enforced": enforced,
        "kernel": os.uname().release,
    }
    if "bwrap --unshare-all" in med:
        report["corral_vs_bwrap"] = round(med["corral workspace-write"] / med["bwrap --unshare-all"], 2)
    print(f"{'spawn-to-exit of /bin/true':32} {'median ms':>10} {'p90 ms':>8}")
    for k in results:
        print(f"{k:32} {med[k]:10.3f} {report['p90_ms'][k]:8.3f}")  # type: ignore[index]
    print(f"corral / bare  = {report['corral_vs_bare']}  (target <= 3)")
    if "corral_vs_bwrap" in report:
        print(f"corral / bwrap = {report['corral_vs_bwrap']}  (target <= 0.5)")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240 - after timing
    return report


def child_layers(sup: Supervisor) -> tuple[str, ...]:
    return sup.compile(profiles.workspace_write("/var/tmp")).enforced


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    anyio.run(main, a.n, a.json)
