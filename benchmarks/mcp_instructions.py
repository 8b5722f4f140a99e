"""MCP server instructions per call: what one `tools/call` round trip through corral's MCP server costs in
CPU instructions, counted by valgrind (a benchmark, not a test; load-independent, unlike wall or CPU time).

    .venv/bin/python benchmarks/mcp_instructions.py [--tool run_command|describe_sandbox] [--n 600]

One process serves itself: the real server (`build_server`, the stdio streams of `supervisor._mcp_stdio`, on
two pipes instead of stdin and stdout) and a minimal JSON-RPC client (one line out, one back, `json`), the
handshake-era protocol. `Supervisor.run` is canned: it returns a fixed `Result` after one checkpoint, so no
sandbox runs and what is counted is the MCP path alone (the SDK's dispatch and validation, corral's tool code,
the transport, the client's few lines). The figure is the difference between a run of N calls and a run of
100, divided by N - 100, each run under `valgrind --tool=cachegrind --cache-sim=no` (start-up cancels out).
Needs valgrind (Debian: apt install valgrind); `--once N` runs the served loop without it.

Used for issue 19's per-call overhead (docs/mcp.md, "Cost per call"): wall and CPU time on a shared 2-CPU
machine move with everything else that runs; instruction counts do not.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import profiles
from supervisor import mcp_server
from supervisor._mcp_stdio import WireIn, WireOut, serve_connection
from supervisor._types import Result

CANNED = Result(
    exit_code=0,
    signal=None,
    violation=None,
    duration_s=0.002,
    cpu_s=0.001,
    peak_memory_bytes=1 << 20,
    pid=1234,
    enforced=("namespaces", "landlock", "seccomp", "cgroup"),
)


class _CannedSupervisor:
    """Stands in for the server's Supervisor: `run` answers CANNED after one checkpoint."""

    async def run(self, argv: list[str], **_: Any) -> Result:
        await anyio.lowlevel.checkpoint()
        return CANNED


async def _serve_and_call(n: int, tool: str) -> None:
    """Serve corral's MCP server on two pipes in this process and make `n` calls of `tool` through them."""
    settings = mcp_server.McpSettings(policy=profiles.get("workspace-write", tempfile.gettempdir()))
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()
    for fd in (c2s_r, c2s_w, s2c_r, s2c_w):
        os.set_blocking(fd, False)
    buf = b""
    ident = 0

    async def request(method: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal buf, ident
        ident += 1
        line = json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}) + "\n"
        os.write(c2s_w, line.encode())
        while b"\n" not in buf:
            try:
                buf += os.read(s2c_r, 1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(s2c_r)
        reply, buf = buf.split(b"\n", 1)
        return json.loads(reply)  # type: ignore[no-any-return]

    async with anyio.create_task_group() as tg:
        runtime = mcp_server._Runtime(settings, _CannedSupervisor(), tg, single=True)  # type: ignore[arg-type]
        server = mcp_server.build_server(lambda: runtime, settings)
        gc.collect()
        gc.freeze()  # as `corral mcp` does after start-up
        out = WireOut(s2c_w)
        tg.start_soon(serve_connection, server._lowlevel_server, WireIn(c2s_r, 1 << 20, out), out)
        hi = {"name": "bench", "version": "0"}  # the handshake era, as the SDK's stdio clients speak it
        await request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": hi})
        os.write(c2s_w, b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        arguments = {"command": ["/bin/true"]} if tool == "run_command" else {}
        for _ in range(n):
            reply = await request("tools/call", {"name": tool, "arguments": arguments})
            if "result" not in reply or reply["result"].get("isError"):
                raise RuntimeError(f"the call failed: {reply}")
        os.close(c2s_w)
        tg.cancel_scope.cancel()


def _instructions(n: int, tool: str) -> int:
    """Instructions valgrind counts for a whole run of `n` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={tmp}/cg.out",
             sys.executable, __file__, "--once", str(n), "--tool", tool],
            capture_output=True, text=True, check=True, timeout=1800,
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", choices=("run_command", "describe_sandbox"), default="run_command")
    ap.add_argument("--n", type=int, default=600, help="calls in the long run (the short one makes 100)")
    ap.add_argument("--once", type=int, metavar="N", help="serve N calls, no valgrind")
    args = ap.parse_args()
    if args.once is not None:
        anyio.run(_serve_and_call, args.once, args.tool)
        return
    if shutil.which("valgrind") is None:
        sys.exit("mcp_instructions.py needs valgrind (Debian: apt install valgrind)")
    if args.n <= 100:
        sys.exit("--n must be over 100")
    short, long = _instructions(100, args.tool), _instructions(args.n, args.tool)
    per_call = (long - short) / (args.n - 100)
    print(f"{args.tool}: {per_call / 1e6:.3f} M instructions per call (server and client, one process)")


if __name__ == "__main__":
    main()
