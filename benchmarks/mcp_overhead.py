"""MCP overhead: what one `run_command` call through `corral mcp` over stdio costs beyond a direct
`Supervisor.run` of the same command under the same policy, measured in the same run (a benchmark, not a
test).

    .venv/bin/python benchmarks/mcp_overhead.py [--n 200] [--rounds 5] [--json out.json]

The direct side is a Supervisor in this process; the MCP side is a `corral mcp` server process (its own
Supervisor, the same defaults: pre-forked sandboxes) driven by the MCP SDK's own client over stdio. Both run
`/bin/true` sequentially, one call at a time, under the workspace-write profile on a scratch workdir, and take
turns in `rounds` rounds of n/rounds calls each so that both see the same machine. Each side warms up first
(policy compiled, pre-forked sandboxes built). Prints the median latency of each, the difference (the MCP
overhead: JSON-RPC framing both ways, the SDK's dispatch and validation, the result's pydantic model and
text summary, two pipe hops) and its per-round range. Target (issue 19): <= 1 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
TRUE = "/bin/true"


async def main(n: int, rounds: int, out: str | None) -> None:
    per_round = max(1, n // rounds)
    with tempfile.TemporaryDirectory(prefix="corral-mcp-bench-", dir="/var/tmp") as work:
        policy = profiles.get("workspace-write", work)
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "supervisor.cli", "mcp", "--workdir", work],
            env=dict(os.environ),
            cwd=str(ROOT),
        )
        direct: list[list[float]] = []
        via_mcp: list[list[float]] = []
        async with Supervisor() as sup, Client(params) as client:
            for _ in range(10):  # warm-up: compile, pre-fork, the SDK's first-call paths
                await sup.run([TRUE], policy=policy)
                r = await client.call_tool("run_command", {"command": [TRUE]})
                assert not r.is_error
                assert r.structured_content
                assert r.structured_content["exit_code"] == 0
            await anyio.sleep(0.5)
            for _ in range(rounds):
                d: list[float] = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    res = await sup.run([TRUE], policy=policy)
                    d.append(time.perf_counter() - t0)
                    assert res.exit_code == 0
                m: list[float] = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r = await client.call_tool("run_command", {"command": [TRUE]})
                    m.append(time.perf_counter() - t0)
                    assert r.structured_content is not None
                    assert r.structured_content["exit_code"] == 0
                direct.append(d)
                via_mcp.append(m)
    d_all = [x for r in direct for x in r]
    m_all = [x for r in via_mcp for x in r]
    d_med, m_med = statistics.median(d_all), statistics.median(m_all)
    per_round_overhead = [
        statistics.median(m) - statistics.median(d) for d, m in zip(direct, via_mcp, strict=True)
    ]
    load = os.getloadavg()
    report = {
        "calls_each": len(d_all),
        "rounds": rounds,
        "direct_median_ms": round(d_med * 1e3, 3),
        "mcp_stdio_median_ms": round(m_med * 1e3, 3),
        "overhead_median_ms": round((m_med - d_med) * 1e3, 3),
        "overhead_per_round_ms": [round(x * 1e3, 3) for x in per_round_overhead],
        "ratio": round(m_med / d_med, 3),
        "loadavg_1m": load[0],
        "cpus": os.cpu_count(),
        "target_ms": 1.0,
    }
    print(f"direct Supervisor.run   median {report['direct_median_ms']:.3f} ms  ({len(d_all)} calls)")
    print(f"run_command, MCP stdio  median {report['mcp_stdio_median_ms']:.3f} ms  ({len(m_all)} calls)")
    lo, hi = min(per_round_overhead) * 1e3, max(per_round_overhead) * 1e3
    print(
        f"overhead {report['overhead_median_ms']:.3f} ms (per round {lo:.3f} .. {hi:.3f} ms; "
        f"target <= 1 ms), ratio {report['ratio']:.3f}x; load average {load[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if out:
        await anyio.Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="calls on each side in total")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", dest="out", help="write the figures here")
    args = ap.parse_args()
    anyio.run(main, args.n, args.rounds, args.out)
