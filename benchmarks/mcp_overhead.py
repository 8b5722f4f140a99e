"""MCP overhead: what one `run_command` call through `corral mcp` over stdio costs beyond a direct
`Supervisor.run` of the same command under the same policy, measured in the same run (a benchmark, not a
test).

    .venv/bin/python benchmarks/mcp_overhead.py [--client sdk|raw] [--n 200] [--rounds 5] [--pace 0]
                                                 [--direct process|here] [--order even|session10]
                                                 [--json out.json]

The direct side is a Supervisor in a worker process of its own, which times each `Supervisor.run` itself
(`--direct here`: in this process, as before session 9); the MCP side is a `corral mcp` server process (its
own Supervisor, the same defaults: pre-forked sandboxes) driven by a client in this process over stdio. (In
this process, the direct Supervisor's work after each run, the next pre-forked sandbox built on its event
loop, ran while the MCP call that followed waited for its reply on that same loop: the direct side's work
was charged to the MCP side. In a worker it runs beside what follows, on the other CPU, as the MCP
server's own after-work does; the order below makes that alike for both.) Both run `/bin/true`
under the workspace-write profile on a scratch workdir, and take turns call by call, so that a burst of load
hits both sides alike: a direct run, a `describe_sandbox` (the protocol's round trip alone), a `run_command`,
a `describe_sandbox` again (`--order even`, the default since session 11). Each side's run thus follows the
other side's run after the same round trip: a run's after-work (the next pre-forked sandbox: the fork
server's fork and the new sandbox's set-up, ~0.5 ms of CPU on a 2-CPU machine) overlaps what comes next
alike on both sides. With `--order session10` (direct, `run_command`, `describe_sandbox`, the order of
sessions 9 and 10) the direct worker's after-work ran beside the `run_command` call that followed at once,
while the MCP server's ran beside a `describe_sandbox`, and was charged to neither. Each side warms up first
(policy compiled, pre-forked sandboxes built). Prints the median wall time of each, the
difference (the MCP overhead: JSON-RPC framing both ways, the SDK's dispatch and validation, the result's
model and text summary, two pipe hops and two process wake-ups), the median of the paired differences and
the per-round range. `--pace SECONDS` pauses after each call (0, the default: back to back; an agent's
calls are seconds apart, and a pause lets each call start on a machine that is otherwise idle, caches cold).

Then the CPU per call, which moves less with the machine's load than wall time: blocks of direct calls and
blocks of MCP calls, in turn, each counting the CPU every process of the run spends (this process, the
direct worker, the MCP server, both fork servers; /proc/PID/task/*/schedstat, to the nanosecond; a direct
block is one command to the worker, so no pipe hop per call is counted) from the block's first call until
0.5 s after its last, so each side's background work (the next pre-forked sandbox) is counted with it, less
what the processes spend idle in as long. The sandboxes' own CPU (init and /bin/true, the same on both
sides) is not counted.

`--client raw` drives the server with a minimal client instead of the SDK's: one JSON-RPC line out, one
line back, parsed with `json` and not validated, read and written on its own non-blocking pipes, the
reading end kept registered with the event loop as the server keeps its stdin (`_mcp_stdio._Reader`;
before session 10 it registered and removed it for every read with anyio's `wait_readable`)
(benchmark-side code only; the server is the same). It costs what any client must (about 0.25 ms of CPU
per call here), as clients written in other languages do; the SDK's Python client validates every
structured result against the tool's output schema with `jsonschema` (in a profile, three quarters of the
time its `call_tool` takes).
Target (issue 19): <= 1 ms median overhead, judged with the raw client (docs/mcp.md, "Cost per call").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
from mcp import Client, StdioServerParameters
from mcp.types import LATEST_PROTOCOL_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import Policy, profiles
from supervisor import Supervisor
from supervisor._mcp_stdio import _Reader

ROOT = Path(__file__).resolve().parents[1]
TRUE = "/bin/true"


class _Raw:
    """A minimal MCP client over the server's stdio: JSON-RPC lines on two pipes it reads and writes itself
    (non-blocking, on the event loop, as a client in a compiled language would), no validation (see the
    module doc)."""

    def __init__(self, params: StdioServerParameters) -> None:
        self._params = params
        self._id = 0
        self._buf = b""

    async def __aenter__(self) -> _Raw:
        p = self._params
        await self._start([p.command, *p.args], p.env, p.cwd)
        await self._request(
            "initialize",
            {
                "protocolVersion": LATEST_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "bench-raw", "version": "0"},
            },
        )
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        os.close(self._to)  # EOF: the server ends
        with anyio.move_on_after(10):
            await self._proc.wait()
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._reader.close()
        os.close(self._from)

    async def _start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Any = None) -> None:
        """Start `argv` with its stdin and stdout on two pipes of this object's (non-blocking here)."""
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()
        try:
            self._proc = await anyio.open_process(
                argv, env=env, cwd=cwd, stdin=to_r, stdout=from_w, stderr=None
            )
        finally:
            os.close(to_r)
            os.close(from_w)
        os.set_blocking(self._to, False)
        os.set_blocking(self._from, False)
        # Read as the server reads its stdin: the fd stays registered with the event loop, whose readiness
        # callback reads for the read waiting (anyio's wait_readable registers it and removes it again
        # for every wait).
        self._reader = _Reader(self._from)

    async def _send(self, msg: dict[str, object]) -> None:
        await self._write_line(json.dumps(msg).encode())

    async def _write_line(self, line: bytes) -> None:
        view = memoryview(line + b"\n")
        while view:
            try:
                view = view[os.write(self._to, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._to)

    async def _line(self) -> bytes:
        while b"\n" not in self._buf:
            data = await self._reader.read()
            if not data:
                raise EOFError("the server closed its stdout")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    async def _request(self, method: str, params: dict[str, object]) -> dict[str, object]:
        self._id += 1
        await self._send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        while True:
            msg = json.loads(await self._line())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]  # type: ignore[no-any-return]

    async def call_tool(self, name: str, arguments: dict[str, object]) -> _RawResult:
        r = await self._request("tools/call", {"name": name, "arguments": arguments})
        return _RawResult(bool(r.get("isError")), r.get("structuredContent"))  # type: ignore[arg-type]


class _RawResult:
    def __init__(self, is_error: bool, structured: dict[str, object] | None) -> None:
        self.is_error = is_error
        self.structured_content = structured


class _Direct:
    """The direct side in a worker process of its own (`--direct process`): a Supervisor driven over two
    pipes, one line per command; the worker times each `Supervisor.run` itself, so the command's pipe hop is
    outside the figure. Kept out of this process so that its background work after a run (the next
    pre-forked sandbox) does not run on the event loop this process's MCP client reads its replies on."""

    def __init__(self, work: str) -> None:
        self._work = work
        self._raw = _Raw(StdioServerParameters(command=sys.executable, args=[]))

    async def __aenter__(self) -> _Direct:
        raw = self._raw
        await raw._start([sys.executable, __file__, "--worker", self._work])
        self.pid = raw._proc.pid
        await raw._line()  # ready
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._raw.__aexit__(*exc)

    async def _command(self, line: str) -> bytes:
        await self._raw._write_line(line.encode())
        return await self._raw._line()

    async def run(self) -> float:
        """One timed `Supervisor.run` of /bin/true: its wall seconds, as the worker measured them."""
        return float(await self._command("run"))

    async def block(self, n: int, pace: float) -> None:
        """`n` runs in the worker, `pace` seconds apart, untimed (for the CPU blocks)."""
        await self._command(f"block {n} {pace}")


async def _timed_run(sup: Supervisor, policy: Policy) -> float:
    """The wall seconds of one `sup.run` of /bin/true under `policy` (which must succeed)."""
    t0 = time.perf_counter()
    res = await sup.run([TRUE], policy=policy)
    took = time.perf_counter() - t0
    assert res.exit_code == 0
    return took


async def _worker(work: str) -> None:
    """The direct side's worker process (see `_Direct`): `run` answers the wall seconds of one
    `Supervisor.run`; `block N PACE` runs N and answers `done`; EOF ends it."""
    policy = profiles.get("workspace-write", work)
    os.set_blocking(0, False)
    stdin = _Reader(0)
    buf = b""

    async def line() -> bytes | None:
        nonlocal buf
        while b"\n" not in buf:
            data = await stdin.read()
            if not data:
                return None
            buf += data
        out, buf = buf.split(b"\n", 1)
        return out

    async with Supervisor() as sup:
        print("ready", flush=True)
        while (cmd := await line()) is not None:
            if cmd == b"run":
                print(repr(await _timed_run(sup, policy)), flush=True)
            else:
                _, count, pace = cmd.split()
                for _ in range(int(count)):
                    await sup.run([TRUE], policy=policy)
                    await anyio.sleep(float(pace))
                print("done", flush=True)


def _cpu_s(pid: int) -> float:
    """CPU seconds process `pid` has run, all its threads, to the nanosecond (/proc/PID/task/*/schedstat;
    psutil's clock-tick figures miss most calls this short)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that just ended
            continue
    return total / 1e9


def _tree_cpu_s() -> dict[int, float]:
    """CPU seconds run so far by this process and by every live descendant (the MCP server, both fork
    servers, sandboxes alive now), by pid."""
    pids = [os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))]
    return {pid: _cpu_s(pid) for pid in pids if os.path.isdir(f"/proc/{pid}")}


def _spent(before: dict[int, float]) -> dict[int, float]:
    after = _tree_cpu_s()
    return {pid: after[pid] - before.get(pid, 0.0) for pid in after}


async def _cpu_block(
    call: Callable[[], Awaitable[object]], n: int, pace: float
) -> tuple[float, dict[int, float]]:
    """CPU seconds `n` calls of `call` cost every process of this run, their background work included: the
    tree's CPU from before the first call until 0.5 s after the last (the next pre-forked sandboxes are
    built by then), less what the tree spends idle in as long; and the CPU seconds of each process over
    that window."""
    await anyio.sleep(0.5)
    idle0, i0 = _tree_cpu_s(), time.perf_counter()
    await anyio.sleep(0.5)
    idle = sum(_spent(idle0).values()) / (time.perf_counter() - i0)
    c0, t0 = _tree_cpu_s(), time.perf_counter()
    for _ in range(n):
        await call()
        await anyio.sleep(pace)
    await anyio.sleep(0.5)
    by_pid = _spent(c0)
    return max(0.0, sum(by_pid.values()) - idle * (time.perf_counter() - t0)), by_pid


def _server(before: set[int]) -> psutil.Process:
    """The `corral mcp` process the client started (by its command line: the direct Supervisor's fork
    server is a new child of this process too)."""
    for p in psutil.Process().children():
        if p.pid not in before and "mcp" in p.cmdline() and "supervisor.cli" in p.cmdline():
            return p
    raise RuntimeError("no corral mcp process")


async def main(
    n: int,
    rounds: int,
    out: str | None,
    raw: bool = False,
    pace: float = 0.0,
    direct_in: str = "process",
    order: str = "even",
) -> None:
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
        floor: list[float] = []
        cpu = {"direct": 0.0, "mcp": 0.0, "client": 0.0, "server": 0.0}
        before = {p.pid for p in psutil.Process().children()}
        client_cm: Any = _Raw(params) if raw else Client(params)
        async with contextlib.AsyncExitStack() as stack:
            if direct_in == "process":
                worker = await stack.enter_async_context(_Direct(work))
                run_timed = worker.run
            else:
                sup = await stack.enter_async_context(Supervisor())
                run_timed = partial(_timed_run, sup, policy)

            client = await stack.enter_async_context(client_cm)
            server = _server(before)
            for _ in range(10):  # warm-up: compile, pre-fork, the SDK's first-call paths
                await run_timed()
                r = await client.call_tool("run_command", {"command": [TRUE]})
                assert not r.is_error
                assert r.structured_content
                await client.call_tool("describe_sandbox", {})
            await anyio.sleep(0.5)
            for _ in range(rounds):
                d: list[float] = []
                m: list[float] = []
                # Turn by turn, call by call: a burst of load hits both sides alike.
                for _ in range(per_round):
                    d.append(await run_timed())
                    await anyio.sleep(pace)
                    if order == "even":  # the protocol's round trip between the two sides' runs too
                        t0 = time.perf_counter()
                        await client.call_tool("describe_sandbox", {})
                        floor.append(time.perf_counter() - t0)
                        await anyio.sleep(pace)
                    t0 = time.perf_counter()
                    r = await client.call_tool("run_command", {"command": [TRUE]})
                    m.append(time.perf_counter() - t0)
                    assert r.structured_content is not None
                    assert r.structured_content["exit_code"] == 0
                    await anyio.sleep(pace)
                    t0 = time.perf_counter()
                    await client.call_tool("describe_sandbox", {})
                    floor.append(time.perf_counter() - t0)
                    await anyio.sleep(pace)
                direct.append(d)
                via_mcp.append(m)

            async def run_mcp() -> None:
                await client.call_tool("run_command", {"command": [TRUE]})

            blocks = min(per_round, 100)
            for _ in range(2):  # alternating blocks, so a drift of the machine's load hits both
                if direct_in == "process":  # the whole block on one command: no pipe hop per call
                    cpu["direct"] += (await _cpu_block(partial(worker.block, blocks, pace), 1, 0.0))[0]
                else:
                    cpu["direct"] += (await _cpu_block(run_timed, blocks, pace))[0]
                total, by_pid = await _cpu_block(run_mcp, blocks, pace)
                cpu["mcp"] += total
                cpu["server"] += by_pid.get(server.pid, 0.0)
                cpu["client"] += by_pid.get(os.getpid(), 0.0)
    d_all = [x for r in direct for x in r]
    m_all = [x for r in via_mcp for x in r]
    d_med, m_med = statistics.median(d_all), statistics.median(m_all)
    paired = statistics.median(mm - dd for mm, dd in zip(m_all, d_all, strict=True))
    per_round_overhead = [
        statistics.median(m) - statistics.median(d) for d, m in zip(direct, via_mcp, strict=True)
    ]
    calls = len(d_all)
    cpu_calls = 2 * min(per_round, 100)
    load = os.getloadavg()
    report = {
        "client": "raw" if raw else "sdk",
        "direct_in": direct_in,
        "pace_s": pace,
        "order": order,
        "calls_each": calls,
        "rounds": rounds,
        "direct_median_ms": round(d_med * 1e3, 3),
        "mcp_stdio_median_ms": round(m_med * 1e3, 3),
        "overhead_median_ms": round((m_med - d_med) * 1e3, 3),
        "overhead_paired_median_ms": round(paired * 1e3, 3),
        "overhead_per_round_ms": [round(x * 1e3, 3) for x in per_round_overhead],
        "describe_sandbox_median_ms": round(statistics.median(floor) * 1e3, 3),
        "cpu_calls_each": cpu_calls,
        "cpu_direct_ms_per_call": round(cpu["direct"] / cpu_calls * 1e3, 3),
        "cpu_mcp_ms_per_call": round(cpu["mcp"] / cpu_calls * 1e3, 3),
        "cpu_overhead_ms_per_call": round((cpu["mcp"] - cpu["direct"]) / cpu_calls * 1e3, 3),
        "cpu_mcp_server_process_ms_per_call": round(cpu["server"] / cpu_calls * 1e3, 3),
        "cpu_mcp_client_process_ms_per_call": round(cpu["client"] / cpu_calls * 1e3, 3),
        "ratio": round(m_med / d_med, 3),
        "loadavg_1m": load[0],
        "cpus": os.cpu_count(),
        "target_ms": 1.0,
    }
    where = "a worker process" if direct_in == "process" else "this process"
    print(
        f"client: {report['client']}, direct side in {where}, pause between calls {pace * 1e3:g} ms, "
        f"order {order}"
    )
    print(f"direct Supervisor.run   median {report['direct_median_ms']:.3f} ms  ({calls} calls)")
    print(f"run_command, MCP stdio  median {report['mcp_stdio_median_ms']:.3f} ms  ({calls} calls)")
    print(
        "describe_sandbox (the protocol's round trip alone) median "
        f"{report['describe_sandbox_median_ms']:.3f} ms"
    )
    lo, hi = min(per_round_overhead) * 1e3, max(per_round_overhead) * 1e3
    print(
        f"overhead {report['overhead_median_ms']:.3f} ms "
        f"(paired {report['overhead_paired_median_ms']:.3f} ms; "
        f"per round {lo:.3f} .. {hi:.3f} ms; target <= 1 ms), ratio {report['ratio']:.3f}x"
    )
    print(
        f"CPU per call ({cpu_calls} calls each, in blocks, every process of this run counted): direct "
        f"{report['cpu_direct_ms_per_call']:.3f} ms, MCP {report['cpu_mcp_ms_per_call']:.3f} ms (its server "
        f"process {report['cpu_mcp_server_process_ms_per_call']:.3f}, this process "
        f"{report['cpu_mcp_client_process_ms_per_call']:.3f}): overhead "
        f"{report['cpu_overhead_ms_per_call']:.3f} ms; load average {load[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if out:
        await anyio.Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="calls on each side in total")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", dest="out", help="write the figures here")
    ap.add_argument(
        "--client", choices=("sdk", "raw"), default="sdk", help="the MCP SDK's client, or a minimal one"
    )
    ap.add_argument(
        "--pace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause after each call (0: back to back); an agent's calls are seconds apart",
    )
    ap.add_argument(
        "--direct",
        choices=("process", "here"),
        default="process",
        help="run the direct side's Supervisor in a worker process (the default) or in this process, beside "
        "the MCP client",
    )
    ap.add_argument(
        "--order",
        choices=("even", "session10"),
        default="even",
        help="even: direct, describe_sandbox, run_command, describe_sandbox (each side's run follows the "
        "other's after the same round trip); session10: direct, run_command, describe_sandbox",
    )
    ap.add_argument("--worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        anyio.run(_worker, args.worker)
    else:
        anyio.run(
            main, args.n, args.rounds, args.out, args.client == "raw", args.pace, args.direct, args.order
        )
