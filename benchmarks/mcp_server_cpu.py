"""The `corral mcp` server's own CPU per call: the CPU time the server process (all its threads; not the
fork server, not the sandboxes) spends per `tools/call` over stdio, driven by a minimal client (a benchmark,
not a test).

    .venv/bin/python benchmarks/mcp_server_cpu.py [--tool describe_sandbox|run_command] [--n 300]
                                                  [--pace 0.003] [--tree PATH] [--rounds 3]

The client writes one request line and reads the reply with blocking reads (its own CPU is not counted);
`--pace SECONDS` pauses between calls (the default, 3 ms, lets each call start cold, as an agent's calls do,
seconds apart; 0: back to back). The server's CPU is read from /proc/PID/task/*/schedstat (to the
nanosecond) before and after the N calls (after a warm-up of 50), so the figure moves less with the machine's
load than wall time does; each round's figure is printed, then the median, and each round's median round
trip as the client sees it (wall time: on a busy machine, compare only rounds taken in turn). For
`run_command` (/bin/true) the figure includes the server's part of `Supervisor.run` (the same as a direct
run's), so compare two servers with it, not with a direct run: `--tree PATH` runs the server of another
checkout (its `supervisor` package, C extensions built) with this interpreter, e.g. a base commit against
yours, in turn.

Used for issue 19's per-call overhead (docs/mcp.md, "Cost per call", session 12).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cpu_ns(pid: int) -> int:
    """CPU nanoseconds every thread of `pid` has run so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


class _Client:
    """One JSON-RPC line out, one line back (blocking reads), on the server's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        self._in = proc.stdin.fileno()
        self._out = proc.stdout.fileno()
        self._buf = b""
        self._id = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params}) + "\n"
        os.write(self._in, line.encode())
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._out], [], [], 60)
            if not ready:
                raise TimeoutError("no reply in 60 s")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise EOFError("the server closed its stdout")
            self._buf += chunk
        reply, self._buf = self._buf.split(b"\n", 1)
        return json.loads(reply)  # type: ignore[no-any-return]

    def notify(self, method: str) -> None:
        os.write(self._in, json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")


def _round(tree: Path, tool: str, n: int, pace: float) -> tuple[float, float]:
    """The server's CPU microseconds per call over `n` calls of `tool`, and the median round trip (the
    client's write to the reply read whole, microseconds)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory(prefix="corral-mcp-cpu-", dir="/var/tmp") as work:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "mcp", "--workdir", work],
            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            client = _Client(proc)
            hi = {"name": "cpu-bench", "version": "0"}
            client.request(
                "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": hi}
            )
            client.notify("notifications/initialized")
            arguments = {"command": ["/bin/true"]} if tool == "run_command" else {}

            walls: list[float] = []

            def call() -> None:
                t0 = time.perf_counter()
                reply = client.request("tools/call", {"name": tool, "arguments": arguments})
                walls.append(time.perf_counter() - t0)
                if "result" not in reply or reply["result"].get("isError"):
                    raise RuntimeError(f"the call failed: {reply}")

            for _ in range(50):
                call()
                time.sleep(pace)
            time.sleep(0.5)  # the last warm-up call's after-work (the next pre-forked sandbox)
            before = _cpu_ns(proc.pid)
            walls.clear()
            for _ in range(n):
                call()
                time.sleep(pace)
            time.sleep(0.5)
            # Less what the server spends idle in as long (its timers): measured over the same span, idle.
            after = _cpu_ns(proc.pid)
            span = n * pace + 0.5
            idle0 = _cpu_ns(proc.pid)
            time.sleep(span)
            idle = _cpu_ns(proc.pid) - idle0
            return (after - before - idle) / n / 1e3, statistics.median(walls) * 1e6
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", choices=("run_command", "describe_sandbox"), default="describe_sandbox")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--pace", type=float, default=0.003)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server runs")
    args = ap.parse_args()
    rounds = [_round(args.tree.resolve(), args.tool, args.n, args.pace) for _ in range(args.rounds)]
    cpu = [r[0] for r in rounds]
    wall = [r[1] for r in rounds]
    print(
        f"{args.tool} ({args.tree}, pace {args.pace:g} s): server CPU per call "
        f"{', '.join(f'{f:.0f}' for f in cpu)} us (median {statistics.median(cpu):.0f} us); "
        f"round trip, median of each round {', '.join(f'{f:.0f}' for f in wall)} us"
    )


if __name__ == "__main__":
    main()
