"""Spawn-to-exit latency of /bin/true: corral (full workspace-write sandbox) against a bare asyncio spawn and
against bubblewrap, sequentially, in the same run. Prints medians and ratios (a benchmark, not a test).

    .venv/bin/python benchmarks/spawn.py [--n 200] [--pause MS] [--prefork N] [--json out.json]

Back-to-back by default: each spawn starts the moment the previous one is reaped. `--pause 20` waits 20 ms
(untimed) between spawns, for every method alike: the pace of an agent's tool calls, where corral's next
sandbox is built between two calls. Targets (issue 2): corral <= 0.5x bwrap and <= 3x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
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


async def _time(n: int, once: Callable[[], Awaitable[None]], pause: float = 0.0) -> list[float]:
    """n timed calls of `once` in ms, after 10 untimed ones, with `pause` seconds (untimed) after each."""
    for _ in range(min(10, n)):  # warm-up: page cache, the fork server's first policy compile
        await once()
        await anyio.sleep(pause)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await once()
        out.append((time.perf_counter() - t) * 1000)
        await anyio.sleep(pause)
    return out


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def bare_once() -> None:
    if not _on_asyncio():  # trio: the backend's own spawn is the baseline there
        await anyio.run_process([TRUE], stdout=subprocess.DEVNULL, check=True)
        return
    p = await asyncio.create_subprocess_exec(TRUE, stdout=asyncio.subprocess.DEVNULL)
    await p.wait()


async def bwrap_once() -> None:
    if not _on_asyncio():
        await anyio.run_process(BWRAP, stdout=subprocess.DEVNULL, check=True)
        return
    p = await asyncio.create_subprocess_exec(*BWRAP, stdout=asyncio.subprocess.DEVNULL)
    if await p.wait() != 0:
        raise RuntimeError("bwrap failed")


async def main(n: int, json_out: str | None, pause: float = 0.0, prefork: int = 2) -> dict[str, object]:
    # The baseline: a bare spawn on the backend this runs on (asyncio's own; on trio, anyio.run_process).
    bare = "bare asyncio" if _on_asyncio() else "bare trio (anyio.run_process)"
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as ws:
        policy = profiles.workspace_write(ws)
        async with Supervisor(prefork=prefork) as sup:

            async def corral_once() -> None:
                child = await sup.start([TRUE], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
                r = await child.wait()
                if r.exit_code != 0:
                    raise RuntimeError(r)

            results[bare] = await _time(n, bare_once, pause)
            results["corral workspace-write"] = await _time(n, corral_once, pause)
            if shutil.which("bwrap"):
                results["bwrap --unshare-all"] = await _time(n, bwrap_once, pause)
            enforced = list(child_layers(sup))
    med = {k: statistics.median(v) for k, v in results.items()}
    report: dict[str, object] = {
        "n": n,
        "pause_ms": pause * 1000,
        "prefork": prefork,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[8], 3) for k, v in results.items()},
        "backend": "asyncio" if _on_asyncio() else "trio",
        "corral_vs_bare": round(med["corral workspace-write"] / med[bare], 2),
        "enforced": enforced,
        "kernel": os.uname().release,
    }
    if "bwrap --unshare-all" in med:
        report["corral_vs_bwrap"] = round(med["corral workspace-write"] / med["bwrap --unshare-all"], 2)
    pace = f"{pause * 1000:g} ms apart" if pause else "back-to-back"
    print(f"{'spawn-to-exit, ' + pace:32} {'median ms':>10} {'p90 ms':>8}")
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
    ap.add_argument("--pause", type=float, default=0.0, help="ms between spawns, untimed (default 0)")
    ap.add_argument("--prefork", type=int, default=2, help="Supervisor(prefork=N) (default 2; 0: none)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="anyio backend")
    a = ap.parse_args()
    anyio.run(main, a.n, a.json, a.pause / 1000, a.prefork, backend=a.backend)
