"""Memory over many distinct workdirs (a benchmark, not a test; issue 13 item 3).

    .venv/bin/python benchmarks/workdirs.py [--runs 20000] [--concurrency 8] [--every 2000] [--json out.json]

Agent harnesses make a fresh workdir per task, and the workdir is part of the policy (its first writable
root), so each is a new policy. This runs `/bin/true` once in each of `--runs` distinct workdirs (made and
removed as it goes) through one Supervisor, and reports every `--every` runs the RSS of the supervisor and
of the fork server and the sizes of the supervisor's compiled-policy cache. Flat means: after the caches
fill (supervisor.MAX_COMPILED policies), neither RSS grows. Before the caches were bounded, each workdir
added ~12 kB to the supervisor and ~22 kB to the fork server, for ever.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import Supervisor, _supervisor


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


async def main(runs: int, concurrency: int, every: int) -> list[dict[str, float]]:
    root = Path(tempfile.mkdtemp(prefix="corral-workdirs-", dir="/var/tmp"))
    rows: list[dict[str, float]] = []
    try:
        async with Supervisor(max_concurrency=concurrency) as sup:
            fs = sup._forkserver
            assert fs is not None
            assert fs._proc is not None
            fs_pid = fs._proc.pid
            t0 = time.monotonic()
            done = 0
            failures = 0

            async def worker(ids: range) -> None:
                nonlocal done, failures
                for i in ids:
                    d = root / f"w{i}"
                    d.mkdir()
                    r = await sup.run(["/bin/true"], policy=profiles.workspace_write(d))
                    failures += r.exit_code != 0
                    d.rmdir()
                    done += 1

            for lo in range(0, runs, every):
                hi = min(runs, lo + every)
                async with anyio.create_task_group() as tg:
                    for k in range(concurrency):
                        tg.start_soon(worker, range(lo + k, hi, concurrency))
                row = {
                    "runs": done,
                    "seconds": round(time.monotonic() - t0, 1),
                    "supervisor_rss_kib": _rss_kib(os.getpid()),
                    "forkserver_rss_kib": _rss_kib(fs_pid),
                    "compiled": len(sup._compiled),
                    "forkserver_policies": len(fs._sent_policies),
                    "failures": failures,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--every", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out = anyio.run(main, a.runs, a.concurrency, a.every)
    first, last = out[0], out[-1]
    print(
        f"{last['runs']} distinct workdirs: supervisor RSS {first['supervisor_rss_kib']} -> "
        f"{last['supervisor_rss_kib']} KiB, fork server {first['forkserver_rss_kib']} -> "
        f"{last['forkserver_rss_kib']} KiB (MAX_COMPILED={_supervisor.MAX_COMPILED})"
    )
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
