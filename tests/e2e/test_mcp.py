"""`corral mcp` end to end, with the MCP SDK's own client over stdio and streamable HTTP: real server
processes, real sandboxes on this kernel, effects checked from outside (the host's files, /proc, the cgroup
tree). Every server is started here and ended by its pid; HTTP servers listen on loopback only."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from jsonschema import Draft202012Validator
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PROTOCOL_VERSION_META_KEY,
    CallToolResult,
    ElicitRequestParams,
    ElicitResult,
)

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).absolute().parents[2]
SCRATCH = Path("/var/tmp/corral-tests")
PY = "/usr/bin/python3"  # by absolute path: no pyenv shim start-up cost
SERVER = [sys.executable, "-m", "supervisor.cli", "mcp"]
FETCH = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8765/').read().decode())"
UPPER = "import sys\nfor line in sys.stdin: print(line.upper(), end='')"
TOOLS = {
    "run_command",
    "start_command",
    "read_output",
    "send_input",
    "stop_command",
    "list_commands",
    "describe_sandbox",
}


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"mcp-{uuid.uuid4().hex[:10]}"
    (d / "work").mkdir(parents=True)
    (d / "outside").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _server_pids_before() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def _new_server(before: set[int]) -> psutil.Process:
    """The `corral mcp` process the SDK's stdio client started (a child of this test process)."""
    for _ in range(200):
        for p in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if p.pid not in before and "mcp" in p.cmdline() and "supervisor.cli" in p.cmdline():
                    return p
        time.sleep(0.05)
    raise AssertionError("no corral mcp process")


@contextlib.asynccontextmanager
async def stdio(
    ws: Path, *extra: str, env: dict[str, str] | None = None, **client: Any
) -> AsyncIterator[tuple[Client, psutil.Process]]:
    before = _server_pids_before()
    params = StdioServerParameters(
        command=SERVER[0],
        args=[*SERVER[1:], "--workdir", str(ws / "work"), *extra],
        env={**os.environ, **(env or {})},
        cwd=str(ROOT),
    )
    async with Client(params, read_timeout_seconds=120, **client) as session:
        yield session, _new_server(before)


@contextlib.contextmanager
def http_server(
    ws: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, psutil.Process]]:
    """A `corral mcp --http 127.0.0.1:0` process, its URL read from its ready line; ended by its pid."""
    proc = subprocess.Popen(
        [*SERVER, "--http", "127.0.0.1:0", "--workdir", str(ws / "work"), *extra],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        # Warnings may come first (a supervisor that another test SIGKILLed leaves cgroups this server's
        # start removes, and says so): the ready line is the first that names the URL.
        seen: list[str] = []
        found = None
        while found is None and len(seen) < 50:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"serving on (http://\S+)", line)
        assert found, "".join(seen)
        yield found.group(1), psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        assert code == 0, proc.stderr.read() if proc.stderr else code


@contextlib.asynccontextmanager
async def connect(transport: str, ws: Path, *extra: str) -> AsyncIterator[tuple[Client, psutil.Process]]:
    if transport == "stdio":
        async with stdio(ws, *extra) as pair:
            yield pair
        return
    with http_server(ws, *extra) as (url, proc):
        async with Client(url, read_timeout_seconds=120) as client:
            yield client, proc


def sc(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def text(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory"))


def leaf(pid: int) -> Path | None:
    """The cgroup directory holding `pid` (cgroup v1's memory hierarchy, else v2's), None when gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    by = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}
    if by.get("memory"):
        return Path("/sys/fs/cgroup/memory" + by["memory"])
    return Path("/sys/fs/cgroup" + by.get("", "/"))


def _procs(cgroup: Path | None) -> set[int]:
    """The processes in the cgroup directory (none when it is gone)."""
    try:
        return set() if cgroup is None else {int(x) for x in (cgroup / "cgroup.procs").read_text().split()}
    except OSError:  # removed
        return set()


def _occupied(cgroup: Path | None) -> bool:
    """Whether the cgroup directory exists and holds a process."""
    try:
        return cgroup is not None and bool((cgroup / "cgroup.procs").read_text().split())
    except OSError:  # removed
        return False


def inits(server: psutil.Process) -> dict[int, Path | None]:
    """The server's sandboxes now: {host pid of each corral-init: its cgroup directory}."""
    out: dict[int, Path | None] = {}
    with contextlib.suppress(psutil.Error):
        for p in server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.name() == "corral-init":
                    out[p.pid] = leaf(p.pid)
    return out


TRANSPORTS = pytest.mark.parametrize("transport", ["stdio", "http"])


@TRANSPORTS
async def test_tools_are_listed_with_valid_schemas(ws: Path, transport: str) -> None:
    async with connect(transport, ws) as (client, _):
        listed = (await client.list_tools()).tools
        assert {t.name for t in listed} == TOOLS
        for tool in listed:
            assert tool.description
            assert tool.input_schema["type"] == "object"
            Draft202012Validator.check_schema(tool.input_schema)
            assert tool.output_schema is not None, tool.name
            Draft202012Validator.check_schema(tool.output_schema)
        run = next(t for t in listed if t.name == "run_command")
        assert {"command", "shell", "timeout", "cwd", "input"} <= set(run.input_schema["properties"])
        # The approval of a `prompt` command is the SDK's to fill (by elicitation), never an argument.
        for tool in listed:
            assert "approval" not in tool.input_schema["properties"], tool.name
        # Every structured result validates against its tool's output schema.
        described = sc(await client.call_tool("describe_sandbox", {}))
        Draft202012Validator(next(t for t in listed if t.name == "describe_sandbox").output_schema).validate(
            described
        )
        assert described["workdir"] == str(ws / "work")
        assert described["network"] == "none"
        assert described["shell_allowed"] is True
        assert str(ws / "work") in described["writable"]


@TRANSPORTS
async def test_a_passing_and_a_failing_command(ws: Path, transport: str) -> None:
    async with connect(transport, ws) as (client, _):
        ok = await client.call_tool("run_command", {"command": ["/bin/echo", "hello"]})
        assert sc(ok)["exit_code"] == 0
        assert sc(ok)["stdout"] == "hello\n"
        assert sc(ok)["violation"] is None
        assert text(ok).startswith("exit 0")
        assert "hello" in text(ok)
        bad = await client.call_tool("run_command", {"shell": "echo oops >&2; exit 3", "input": "x"})
        r = sc(bad)
        assert (r["exit_code"], r["stderr"], r["signal"]) == (3, "oops\n", None)
        assert text(bad).startswith("exit 3")
        assert "oops" in text(bad)
        # corral's own failure is a tool error carrying its message; the server goes on.
        missing = await client.call_tool("run_command", {"command": ["no-such-program-here"]})
        assert missing.is_error
        assert "no-such-program-here" in text(missing)
        assert sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))["exit_code"] == 0


@TRANSPORTS
async def test_memory_violation_and_timeout_are_structured_results(ws: Path, transport: str) -> None:
    async with connect(transport, ws, "--memory", "64M", "--timeout", "30") as (client, _):
        hog = "b = []\nwhile True:\n    b.append(bytearray(1 << 20))\n"
        mem = sc(await client.call_tool("run_command", {"command": [PY, "-c", hog]}))
        assert mem["exit_code"] == 137
        assert mem["violation"]["kind"] == "memory"
        assert mem["violation"]["killed"] is True
        assert mem["violation"]["limit"] == 64 << 20
        slow = await client.call_tool("run_command", {"command": ["/bin/sleep", "20"], "timeout": 0.5})
        t = sc(slow)
        assert t["exit_code"] == 137
        assert t["violation"]["kind"] == "wall_time"
        assert t["duration_s"] < 10
        assert "wall_time" in text(slow)
        # A timeout beyond the policy's is refused, not silently lowered.
        beyond = await client.call_tool("run_command", {"command": ["/bin/true"], "timeout": 60})
        assert beyond.is_error
        assert "30 s" in text(beyond)


@TRANSPORTS
async def test_a_write_outside_the_workdir_is_refused_and_reported(ws: Path, transport: str) -> None:
    target = ws / "outside" / "planted"
    async with connect(transport, ws) as (client, _):
        res = await client.call_tool(
            "run_command", {"shell": f"echo x > {target}; echo inside > here.txt; echo done"}
        )
        r = sc(res)
        assert not target.exists()  # checked from outside
        assert (ws / "work" / "here.txt").read_text() == "inside\n"  # the workdir is writable
        assert str(target) in r["stderr"]
        assert re.search(r"Read-only|Permission denied", r["stderr"])
        assert str(target) in text(res)
        # The mount view refuses the write: reported by the syscall-exit observer where it runs (root,
        # BTF, built: docs/denials.md), else the result says the layer could not be seen.
        from supervisor import _observer

        if _observer.unavailable() is None:
            assert [d for d in r["denials"] if (d["layer"], d["target"]) == ("mounts", str(target))], r
        else:
            assert "mounts" in {u["layer"] for u in r["denials_unobservable"]}


@TRANSPORTS
async def test_a_refused_syscall_comes_back_as_a_denial(ws: Path, transport: str) -> None:
    async with connect(transport, ws) as (client, _):
        res = await client.call_tool("run_command", {"command": ["/usr/bin/unshare", "-U", "/bin/true"]})
        r = sc(res)
        assert r["exit_code"] != 0
        found = [d for d in r["denials"] if d["layer"] == "seccomp" and "unshare" in d["target"]]
        assert found, r["denials"]
        assert found[0]["hint"]
        assert f"denied syscall {found[0]['target']}" in text(res)


async def test_twenty_concurrent_calls_in_one_session_each_in_its_own_sandbox(ws: Path) -> None:
    async with stdio(ws) as (client, server):
        seen: dict[int, Path | None] = {}
        results: list[dict[str, Any]] = []
        done = anyio.Event()

        own = leaf(server.pid)

        async def watch() -> None:
            while not done.is_set():
                for pid, where in (await anyio.to_thread.run_sync(inits, server)).items():
                    # A process on its way out reads as the root cgroup: the leaf it ran in is what counts.
                    if where is not None and where not in (own, *ROOTS):
                        seen[pid] = where
                await anyio.sleep(0.05)

        async def call(i: int) -> None:
            r = await client.call_tool("run_command", {"shell": f"sleep 3; echo {i}"})
            results.append(sc(r))

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as calls:
                for i in range(20):
                    calls.start_soon(call, i)
            done.set()
        assert sorted(int(r["stdout"]) for r in results) == list(range(20))
        pids = {r["pid"] for r in results}
        assert len(pids) == 20
        if not all("cgroup" in r["enforced"] for r in results):
            pytest.skip(f"corral reports no cgroup here: {results[0]['enforced']}")
        assert pids <= set(seen), "a sandbox init was never seen under the server"
        leaves = {seen[p] for p in pids}
        assert len(leaves) == 20, {p: seen[p] for p in pids}
        assert own not in leaves

        # Each is released after its run (off the call's path): removed, or kept for a later sandbox of the
        # same policy (docs/cgroups.md, "Reused leaves"), which may already be in it: the next pre-forked
        # sandbox, waiting for a command. Nothing of the twenty runs may be left in any of them.
        def leftover() -> dict[Path, set[int]]:
            fresh = set(inits(server)) - pids
            return {p: left for p in leaves if (left := _procs(p) - fresh)}

        for _ in range(100):
            if not await anyio.to_thread.run_sync(leftover):
                break
            await anyio.sleep(0.1)
        assert not await anyio.to_thread.run_sync(leftover)


async def test_a_background_dev_server_is_started_read_and_stopped(ws: Path) -> None:
    (ws / "work" / "index.html").write_text("corral dev page\n")
    script = (
        f"{PY} -u -m http.server 8765 --bind 127.0.0.1 & "
        "sleep 1; "
        f"{PY} -c \"{FETCH}\"; "
        "wait"
    )  # fmt: skip
    async with stdio(ws) as (client, server):
        started = sc(await client.call_tool("start_command", {"shell": script}))
        handle, pid = started["handle"], started["pid"]
        assert psutil.pid_exists(pid)
        assert pid in inits(server)
        got = ""
        for _ in range(40):
            st = sc(await client.call_tool("read_output", {"handle": handle, "wait": 2}))
            got += st["stdout"] + st["stderr"]
            if "corral dev page" in got and "GET / " in got:
                break
        assert "corral dev page" in got
        assert "GET / " in got
        assert st["running"] is True
        assert st["result"] is None
        listed = sc(await client.call_tool("list_commands", {}))["commands"]
        assert [c["handle"] for c in listed] == [handle]
        stopped = sc(await client.call_tool("stop_command", {"handle": handle, "grace": 2}))
        assert stopped["signal"] in (signal.SIGTERM, signal.SIGKILL)
        assert not psutil.pid_exists(pid) or pid not in inits(server)
        again = await client.call_tool("read_output", {"handle": handle})
        assert again.is_error
        assert handle in text(again)
        # A REPL: input goes in, output comes back, EOF ends it.
        repl = sc(
            await client.call_tool(
                "start_command", {"command": [PY, "-u", "-c", UPPER]}
            )
        )  # fmt: skip
        sent = sc(
            await client.call_tool("send_input", {"handle": repl["handle"], "text": "abc\n", "close": True})
        )
        assert sent == {"handle": repl["handle"], "bytes_written": 4, "closed": True}
        out = ""
        for _ in range(20):
            st = sc(await client.call_tool("read_output", {"handle": repl["handle"], "wait": 2}))
            out += st["stdout"]
            if st["result"] is not None:
                break
        assert out == "ABC\n"
        assert st["result"]["exit_code"] == 0
        assert st["running"] is False


async def test_background_commands_are_bounded_per_session(ws: Path) -> None:
    async with stdio(ws, "--max-background", "2") as (client, _):
        for _ in range(2):
            sc(await client.call_tool("start_command", {"command": ["/bin/sleep", "60"]}))
        third = await client.call_tool("start_command", {"command": ["/bin/sleep", "60"]})
        assert third.is_error
        assert "limit" in text(third)


def _fds(proc: psutil.Process) -> int:
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


async def test_stdio_client_disconnect_leaves_no_process_or_cgroup(ws: Path) -> None:
    sandboxes: dict[int, Path | None] = {}
    with anyio.move_on_after(60):
        async with stdio(ws) as (client, server):
            sc(await client.call_tool("start_command", {"command": ["/bin/sleep", "300"]}))
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "run_command", {"command": ["/bin/sleep", "300"]})
                for _ in range(200):
                    sandboxes = {p: c for p, c in inits(server).items() if c is not None}
                    if len(sandboxes) >= 2:
                        break
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()  # the client goes away mid-call
    assert len(sandboxes) >= 2
    with contextlib.suppress(psutil.NoSuchProcess):  # the SDK's client may have reaped it already
        server.wait(30)
    assert not server.is_running()
    for pid, where in sandboxes.items():
        assert not psutil.pid_exists(pid)
        assert where is not None
        assert not where.exists()


async def test_http_session_end_leaves_no_process_cgroup_or_fd(ws: Path) -> None:
    async def session(url: str) -> tuple[int, Path | None]:
        async with Client(url, mode="legacy") as client:
            started = sc(await client.call_tool("start_command", {"command": ["/bin/sleep", "300"]}))
            sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))
            where = leaf(started["pid"])
            assert where is not None
            assert where.exists()
            return int(started["pid"]), where

    async def settled(server: psutil.Process, at_most: int | None) -> int:
        """The server's fd count once it stops changing (pre-forked sandboxes are rebuilt meanwhile)."""
        last = -1
        for _ in range(100):
            now = _fds(server)
            if now == last and (at_most is None or now <= at_most):
                return now
            last = now
            await anyio.sleep(0.2)
        return last

    with http_server(ws) as (url, server):
        # Sessions like the measured one first: the server's own lasting fds (its pre-forked sandboxes, ...).
        for _ in range(2):
            await session(url)
        baseline = await settled(server, None)
        pid, where = await session(url)
        # Closing the client DELETEs its session: its commands are stopped, their cgroups released (removed,
        # or kept empty for a later sandbox: docs/cgroups.md, "Reused leaves").
        for _ in range(100):
            if not psutil.pid_exists(pid) and not _occupied(where):
                break
            await anyio.sleep(0.1)
        assert not psutil.pid_exists(pid)
        assert not _occupied(where)
        assert await settled(server, baseline) <= baseline
        # The server goes on serving.
        async with Client(url) as client:
            assert (
                sc(await client.call_tool("run_command", {"command": ["/bin/echo", "on"]}))["stdout"]
                == "on\n"
            )


async def test_sessionless_http_commands_expire_when_idle(ws: Path) -> None:
    with http_server(ws, "--idle-timeout", "1") as (url, server):
        async with Client(url) as client:  # the 2026-07-28 protocol: no session, a handle
            started = sc(await client.call_tool("start_command", {"command": ["/bin/sleep", "300"]}))
            await anyio.sleep(4)
            gone = await client.call_tool("read_output", {"handle": started["handle"]})
            assert gone.is_error
            assert "expired" in text(gone)
            assert started["pid"] not in inits(server)


@TRANSPORTS
async def test_oversized_arguments_are_protocol_errors_and_the_server_goes_on(
    ws: Path, transport: str
) -> None:
    async with connect(transport, ws) as (client, _):
        for args in (
            {"command": ["/bin/echo", "x" * (200 * 1024)]},
            {"shell": "echo " + "y" * (200 * 1024)},
            {"command": ["/bin/cat"], "input": "z" * (2 << 20)},
        ):
            with pytest.raises(MCPError) as err:
                await client.call_tool("run_command", args)
            assert err.value.error.code == INVALID_PARAMS
            assert "bound" in err.value.error.message
        assert sc(await client.call_tool("run_command", {"command": ["/bin/echo", "ok"]}))["stdout"] == "ok\n"


def _rpc(proc: subprocess.Popen[bytes], line: bytes) -> dict[str, Any]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return dict(json.loads(proc.stdout.readline()))


def test_malformed_stdio_messages_get_protocol_errors_and_the_server_goes_on(ws: Path) -> None:
    # Raw bytes on the wire: what no SDK client would send.
    proc = subprocess.Popen(
        [*SERVER, "--workdir", str(ws / "work")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        assert "result" in _rpc(proc, json.dumps(init).encode())
        assert proc.stdin is not None
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        assert _rpc(proc, b"{this is not json")["error"]["code"] == -32700
        assert _rpc(proc, b"\xff\xfe\x00garbage")["error"]["code"] in (-32700, -32600)
        big = b'{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"pad":"' + b"p" * (5 << 20) + b'"}}'
        assert _rpc(proc, big)["error"]["code"] == -32700  # over the 4 MiB message bound: skipped unread
        wrong = {
            "jsonrpc": "2.0",
            "id": 8,
            "method": "tools/call",
            "params": {"name": "run_command", "arguments": 5},
        }
        assert _rpc(proc, json.dumps(wrong).encode())["error"]["code"] == INVALID_PARAMS
        unknown = {"jsonrpc": "2.0", "id": 9, "method": "no/such/method"}
        assert _rpc(proc, json.dumps(unknown).encode())["error"]["code"] == -32601
        # A 2026-07-28 request on this handshake-era connection is refused, as the SDK's own loop refuses it.
        modern = {"_meta": {PROTOCOL_VERSION_META_KEY: "2026-07-28"}}
        enveloped = {"jsonrpc": "2.0", "id": 11, "method": "tools/list", "params": modern}
        refused = _rpc(proc, json.dumps(enveloped).encode())["error"]
        assert refused["code"] == INVALID_REQUEST
        assert "serves the handshake protocol era" in refused["message"]
        call = {
            "jsonrpc": "2.0",
            "id": 10,
            "method": "tools/call",
            "params": {"name": "run_command", "arguments": {"command": ["/bin/echo", "alive"]}},
        }
        reply = _rpc(proc, json.dumps(call).encode())
        assert reply["id"] == 10
        assert reply["result"]["structuredContent"]["stdout"] == "alive\n"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        assert proc.wait(30) == 0


def test_malformed_and_oversized_http_requests_are_refused_and_the_server_goes_on(ws: Path) -> None:
    with http_server(ws) as (url, _):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        req = urllib.request.Request(url, data=b"{not json", headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400
        assert json.loads(err.value.read())["error"]["code"] == -32700
        # A body over the 4 MiB bound is refused from its Content-Length, before a byte of it is read.
        parsed = urllib.parse.urlsplit(url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as conn:
            conn.sendall(
                f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: application/json, text/event-stream\r\nContent-Length: {5 << 20}\r\n\r\n".encode()
            )
            assert conn.recv(100).split(b"\r\n")[0].split()[1] == b"413"

        async def still() -> str:
            async with Client(url) as client:
                return str(
                    sc(await client.call_tool("run_command", {"command": ["/bin/echo", "up"]}))["stdout"]
                )

        assert anyio.run(still) == "up\n"


def test_http_bearer_token(ws: Path) -> None:
    token_file = ws / "token"
    token_file.write_text("s3cret-for-this-test\n")
    with http_server(ws, "--token-file", str(token_file)) as (url, _):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for auth in (None, "Bearer wrong", "Basic czNjcmV0"):
            req = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
            if auth:
                req.add_header("Authorization", auth)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == 401
        # The scheme is case-insensitive (RFC 9110): a client that writes `bearer` gets in.
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        for auth in ("bearer s3cret-for-this-test", "BEARER s3cret-for-this-test"):
            req = urllib.request.Request(url, data=json.dumps(init).encode(), headers=headers, method="POST")
            req.add_header("Authorization", auth)
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
        for auth in ("bearer", "Bearer s3cret-for-this-tes", "Token s3cret-for-this-test"):
            req = urllib.request.Request(url, data=json.dumps(init).encode(), headers=headers, method="POST")
            req.add_header("Authorization", auth)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == 401

        async def with_token() -> int:
            import httpx2

            http = httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret-for-this-test"})
            from mcp.client.streamable_http import streamable_http_client

            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                return int(sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))["exit_code"])

        assert anyio.run(with_token) == 0


def test_a_non_loopback_bind_without_a_token_is_refused(ws: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_MCP_TOKEN"}
    p = subprocess.run(
        [*SERVER, "--http", "0.0.0.0:0", "--workdir", str(ws / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert p.returncode == 125
    assert "bearer token" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


async def test_shell_strings_refused_when_turned_off(ws: Path) -> None:
    async with stdio(ws, "--no-shell") as (client, _):
        refused = await client.call_tool("run_command", {"shell": "echo hi"})
        assert refused.is_error
        assert "--no-shell" in text(refused)
        assert "argv" in text(refused)
        assert sc(await client.call_tool("describe_sandbox", {}))["shell_allowed"] is False
        assert sc(await client.call_tool("run_command", {"command": ["/bin/echo", "hi"]}))["stdout"] == "hi\n"


async def test_metrics_port_serves_the_supervisors_metrics(ws: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with stdio(ws, "--metrics-port", str(port)) as (client, _):
        sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))
        page = await anyio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        )
        assert re.search(r"^corral_\w+", page, re.M)


RULES = """
default = "allow"
opaque = "forbidden"

[[rule]]
name = "no-rm-rf"
pattern = ["rm", ["-rf", "-fr"]]
decision = "forbidden"
justification = "Recursive deletion is not allowed here; delete files one by one with rm FILE."
match = ["rm -rf build"]
"""


async def test_command_rules_refuse_a_forbidden_command_in_argv_and_in_a_shell_string(ws: Path) -> None:
    rules = ws / "rules.toml"
    rules.write_text(RULES)
    keep = ws / "work" / "keep"
    keep.mkdir()
    async with stdio(ws, "--rules", str(rules)) as (client, _):
        assert sc(await client.call_tool("describe_sandbox", {}))["command_rules"] is True
        for args in ({"command": ["rm", "-rf", "keep"]}, {"shell": "echo start; rm -rf keep"}):
            refused = await client.call_tool("run_command", args)
            assert refused.is_error, args
            assert "delete files one by one" in text(refused)
            assert keep.is_dir()  # nothing ran: checked from outside
            started = await client.call_tool("start_command", args)
            assert started.is_error
            assert "delete files one by one" in text(started)
        assert sc(await client.call_tool("run_command", {"shell": "echo allowed"}))["stdout"] == "allowed\n"


def _running(server: psutil.Process, program: str) -> set[int]:
    """The server's sandboxes whose command is `program` now."""
    found = set()
    for pid in inits(server):
        with contextlib.suppress(psutil.Error):
            if any(c.name() == program for c in psutil.Process(pid).children(recursive=True)):
                found.add(pid)
    return found


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_http_client_leaving_mid_call_takes_the_call_along(ws: Path, mode: str) -> None:
    with http_server(ws) as (url, server):
        with anyio.move_on_after(60) as scope:
            async with Client(url, mode=mode) as client, anyio.create_task_group() as tg:
                tg.start_soon(client.call_tool, "run_command", {"command": ["/bin/sleep", "300"]})
                for _ in range(300):
                    sandboxes = await anyio.to_thread.run_sync(_running, server, "sleep")
                    if sandboxes:
                        break
                    await anyio.sleep(0.1)
                assert sandboxes
                scope.cancel()  # the client goes away without a word, its call in flight
        # The sandbox killed AND reaped: wait for its init to be gone, not only its command (the init
        # outlives the command by the teardown's few milliseconds, as a zombie until the server reaps it).
        for _ in range(100):
            if not any(psutil.pid_exists(p) for p in sandboxes):
                break
            await anyio.sleep(0.1)
        assert not any(psutil.pid_exists(p) for p in sandboxes)
        async with Client(url) as client:  # and the server goes on
            assert (
                sc(await client.call_tool("run_command", {"command": ["/bin/echo", "on"]}))["stdout"]
                == "on\n"
            )


async def test_http_sessions_have_their_own_background_commands(ws: Path) -> None:
    with http_server(ws) as (url, server):
        async with Client(url, mode="legacy") as a:
            async with Client(url, mode="legacy") as b:
                ha = sc(await a.call_tool("start_command", {"command": ["/bin/sleep", "300"]}))
                hb = sc(await b.call_tool("start_command", {"command": ["/bin/sleep", "301"]}))
                assert [c["handle"] for c in sc(await a.call_tool("list_commands", {}))["commands"]] == [
                    ha["handle"]
                ]
                assert [c["handle"] for c in sc(await b.call_tool("list_commands", {}))["commands"]] == [
                    hb["handle"]
                ]
                # One session cannot reach another's command, even by its handle.
                other = await a.call_tool("read_output", {"handle": hb["handle"]})
                assert other.is_error
                assert sc(await b.call_tool("read_output", {"handle": hb["handle"]}))["running"] is True
            # b's session ended: its command is gone, a's runs on.
            for _ in range(100):
                if not psutil.pid_exists(hb["pid"]):
                    break
                await anyio.sleep(0.1)
            assert not psutil.pid_exists(hb["pid"])
            assert ha["pid"] in inits(server)
            assert sc(await a.call_tool("read_output", {"handle": ha["handle"]}))["running"] is True


async def test_the_servers_secrets_never_reach_a_command(ws: Path) -> None:
    secret = {"CORRAL_MCP_TOKEN": "t0ken-" + uuid.uuid4().hex, "SOME_API_KEY": "k3y-" + uuid.uuid4().hex}
    async with stdio(ws, env=secret) as (client, server):
        assert server.environ()["CORRAL_MCP_TOKEN"] == secret["CORRAL_MCP_TOKEN"]  # the server has them
        seen = sc(await client.call_tool("run_command", {"command": ["/usr/bin/env"]}))["stdout"]
        assert "PATH=" in seen
        for name, value in secret.items():
            assert name not in seen
            assert value not in seen


async def test_a_sessionless_request_cannot_name_a_session_by_header(ws: Path) -> None:
    # The 2026-07-28 protocol has no sessions, so nobody checks an Mcp-Session-Id header on its requests:
    # corral does not take one as a session (or as a new entry in its table) either.
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    with http_server(ws) as (url, _):
        forged = httpx2.AsyncClient(headers={"Mcp-Session-Id": uuid.uuid4().hex})
        async with forged, Client(streamable_http_client(url, http_client=forged)) as a, Client(url) as b:
            started = sc(await a.call_tool("start_command", {"command": ["/bin/sleep", "300"]}))
            listed = sc(await b.call_tool("list_commands", {}))["commands"]
            assert [c["handle"] for c in listed] == [started["handle"]]
            sc(await b.call_tool("stop_command", {"handle": started["handle"], "grace": 0}))


PROMPT_RULES = """
default = "allow"
opaque = "forbidden"

[[rule]]
name = "ask-before-touch"
pattern = ["touch"]
decision = "prompt"
justification = "Creating files here needs a person's yes."
"""


def _answering(
    action: str, asked: list[str], delay: float = 0.0
) -> Callable[[Any, ElicitRequestParams], Awaitable[ElicitResult]]:
    """An elicitation callback (the client's user) that records each question and answers `action`."""

    async def answer(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        await anyio.sleep(delay)
        return ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]

    return answer


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 (input_required rounds) and handshake era
async def test_a_prompt_command_is_put_to_the_user_and_runs_only_on_accept(ws: Path, mode: str) -> None:
    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    work = ws / "work"
    asked: list[str] = []
    async with stdio(
        ws, "--rules", str(rules), mode=mode, elicitation_callback=_answering("accept", asked)
    ) as (client, _):
        described = sc(await client.call_tool("describe_sandbox", {}))
        assert "put to this client's user" in described["prompt_approval"]
        assert described["prompt_approval"] in described["summary"]
        assert sc(await client.call_tool("run_command", {"command": ["touch", "approved"]}))["exit_code"] == 0
        assert (work / "approved").is_file()  # it ran: checked from outside
        assert len(asked) == 1
        assert "touch approved" in asked[0]
        assert "Creating files here needs a person's yes." in asked[0]
        started = sc(await client.call_tool("start_command", {"shell": "touch background; sleep 300"}))
        assert len(asked) == 2
        assert "touch background; sleep 300" in asked[1]
        for _ in range(300):  # it runs: its file shows up, seen from outside
            if (work / "background").is_file():
                break
            await anyio.sleep(0.1)
        assert (work / "background").is_file()
        sc(await client.call_tool("stop_command", {"handle": started["handle"], "grace": 0}))
        # An allowed command asks nobody.
        assert sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))["exit_code"] == 0
        assert len(asked) == 2
    declined: list[str] = []
    async with stdio(
        ws, "--rules", str(rules), mode=mode, elicitation_callback=_answering("decline", declined)
    ) as (client, _):
        for args in ({"command": ["touch", "declined"]}, {"shell": "echo hi && touch declined"}):
            refused = await client.call_tool("run_command", args)
            assert refused.is_error, args
            assert "the user declined it" in text(refused)
            assert "Creating files here needs a person's yes." in text(refused)
            refused = await client.call_tool("start_command", args)
            assert refused.is_error
            assert "the user declined it" in text(refused)
        assert len(declined) == 4
        assert not (work / "declined").exists()
    cancelled: list[str] = []
    async with stdio(
        ws, "--rules", str(rules), mode=mode, elicitation_callback=_answering("cancel", cancelled)
    ) as (client, _):
        refused = await client.call_tool("run_command", {"command": ["touch", "cancelled"]})
        assert refused.is_error
        assert "cancelled" in text(refused)
        assert not (work / "cancelled").exists()


async def test_an_unanswered_prompt_is_refused_after_the_approval_timeout(ws: Path) -> None:
    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    asked: list[str] = []
    async with stdio(
        ws,
        "--rules",
        str(rules),
        "--approval-timeout",
        "1",
        mode="legacy",  # the handshake era: the server waits for the answer mid-call
        elicitation_callback=_answering("accept", asked, delay=30),
    ) as (client, _):
        t0 = time.monotonic()
        refused = await client.call_tool("run_command", {"command": ["touch", "late"]})
        assert refused.is_error
        assert "no answer within 1 s" in text(refused)
        assert time.monotonic() - t0 < 25
        assert asked
        assert not (ws / "work" / "late").exists()
        # The server goes on serving.
        assert sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))["exit_code"] == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_prompt_command_is_refused_when_the_client_cannot_ask_its_user(ws: Path, mode: str) -> None:
    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    async with stdio(ws, "--rules", str(rules), mode=mode) as (client, _):  # no elicitation callback
        described = sc(await client.call_tool("describe_sandbox", {}))
        assert described["prompt_approval"].startswith("A command the rules mark `prompt` is refused")
        assert "did not declare the elicitation capability" in described["prompt_approval"]
        # Nor can the model approve it by passing the answer as an argument.
        for args in (
            {"command": ["touch", "unasked"]},
            {"command": ["touch", "unasked"], "approval": {"action": "accept", "data": {}}},
        ):
            refused = await client.call_tool("run_command", args)
            assert refused.is_error
            assert "did not declare the elicitation capability" in text(refused)
            assert "Creating files here needs a person's yes." in text(refused)
        refused = await client.call_tool("start_command", {"command": ["touch", "unasked"]})
        assert refused.is_error
        assert not (ws / "work" / "unasked").exists()
        assert sc(await client.call_tool("run_command", {"command": ["/bin/true"]}))["exit_code"] == 0


TRIO_SERVER = """
import sys, anyio
from policies import load_rules, profiles
from supervisor import mcp_server
workdir, rules = sys.argv[1], sys.argv[2]
settings = mcp_server.McpSettings(policy=profiles.get("workspace-write", workdir), rules=load_rules(rules))
anyio.run(mcp_server.serve, settings, backend="trio")
"""


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_stdio_server_runs_on_trio(ws: Path, mode: str) -> None:
    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    before = _server_pids_before()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", TRIO_SERVER, str(ws / "work"), str(rules)],
        env=dict(os.environ),
        cwd=str(ROOT),
    )
    asked: list[str] = []
    callback = _answering("accept", asked)
    async with Client(params, read_timeout_seconds=120, mode=mode, elicitation_callback=callback) as client:
        server = next(p for p in psutil.Process().children() if p.pid not in before)
        assert "trio" in " ".join(server.cmdline())
        ran = sc(await client.call_tool("run_command", {"command": ["/bin/echo", "on trio"]}))
        assert ran["stdout"] == "on trio\n"
        assert ran["pid"] != server.pid
        assert sc(await client.call_tool("run_command", {"command": ["touch", "asked"]}))["exit_code"] == 0
        assert len(asked) == 1
        assert (ws / "work" / "asked").is_file()
    assert not psutil.pid_exists(ran["pid"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_prompt_command_is_put_to_the_user_over_http(ws: Path, mode: str) -> None:
    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    asked: list[str] = []
    with http_server(ws, "--rules", str(rules)) as (url, _):
        async with Client(url, mode=mode, elicitation_callback=_answering("accept", asked)) as client:
            ran = sc(await client.call_tool("run_command", {"command": ["touch", "via-http"]}))
            assert ran["exit_code"] == 0
            assert len(asked) == 1
            assert "touch via-http" in asked[0]
        assert (ws / "work" / "via-http").is_file()
        async with Client(url, mode=mode) as client:  # no elicitation callback: nobody to ask
            refused = await client.call_tool("run_command", {"command": ["touch", "unasked"]})
            assert refused.is_error
            assert "did not declare the elicitation capability" in text(refused)
        assert not (ws / "work" / "unasked").exists()


class _RawStdio:
    """A `corral mcp` process on pipes, spoken to line by line (what no SDK client sends or does: lines in
    pieces, pipelined, a stdout left unread or closed), every read bounded in time."""

    def __init__(self, ws: Path, *extra: str, handshake: bool = True) -> None:
        """Start the server; `handshake`: initialize it and list its tools (else nothing is sent)."""
        self.proc = subprocess.Popen(
            [*SERVER, "--workdir", str(ws / "work"), *extra],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.server = psutil.Process(self.proc.pid)
        self._buf = b""
        if not handshake:
            return
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
        assert "result" in self.recv()
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.send({"jsonrpc": "2.0", "id": "tools/list", "method": "tools/list"})
        listed = self.recv()["result"]["tools"]
        self.schemas = {t["name"]: Draft202012Validator(t["outputSchema"]) for t in listed}

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message).encode() + b"\n")

    #: The output schema of each tool, by name (from tools/list); the tool each call in flight named.
    schemas: dict[str, Draft202012Validator]
    _calls: dict[int | str, str]

    def call(self, rid: int | str, arguments: dict[str, Any], tool: str = "run_command") -> None:
        self.__dict__.setdefault("_calls", {})[rid] = tool
        params = {"name": tool, "arguments": arguments}
        self.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        """The next message; raises TimeoutError when none comes within `timeout` s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            assert chunk, "the server closed stdout"
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        message = dict(json.loads(line))
        # Every structured result must match the tool's published output schema.
        tool = self.__dict__.get("_calls", {}).pop(message.get("id"), None)
        result = message.get("result") or {}
        if tool is not None and "schemas" in self.__dict__ and "structuredContent" in result:
            self.schemas[tool].validate(result["structuredContent"])
        return message

    def end(self) -> int:
        """Close stdin and wait for the server (killed, and the test failed, past 60 s)."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _alive(proc: psutil.Process) -> bool:
    """Whether `proc` (the very process: psutil checks its start time) still runs (a zombie does not)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_sandboxes(server: psutil.Process, n: int) -> dict[int, Path | None]:
    """The sandboxes running a command (their init has a child): not the pre-forked ones still waiting
    for theirs, which a build finishing late can add at any moment."""
    for _ in range(400):
        found = {p: c for p, c in inits(server).items() if _occupied(c) and _has_child(p)}
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} sandboxes running")


def _has_child(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(psutil.Process(pid).children())
    return False


def test_a_client_that_closes_stdout_ends_the_session(ws: Path) -> None:
    # The client stops taking replies (it closed its end of the server's stdout) but leaves stdin open: no
    # reply can reach it any more, so the server ends the session (as at EOF on stdin) rather than go on
    # running calls, and leaves no sandbox behind.
    raw = _RawStdio(ws)
    try:
        raw.call(1, {"command": ["/bin/sleep", "300"]}, tool="start_command")
        assert raw.recv()["result"]["structuredContent"]["pid"] > 0
        raw.call(2, {"command": ["/bin/sleep", "300"]})
        sandboxes = _wait_sandboxes(raw.server, 2)
        assert raw.proc.stdout is not None
        raw.proc.stdout.close()
        raw.call(3, {"command": ["/bin/true"]})  # its reply meets the closed pipe
        assert raw.proc.wait(30) == 0
        for pid, where in sandboxes.items():
            assert not psutil.pid_exists(pid)
            assert where is not None
            assert not where.exists()
    finally:
        raw.end()


def test_a_request_the_parser_refuses_is_answered_under_its_id(ws: Path) -> None:
    # A lone surrogate escape is JSON by RFC 8259's grammar (a JavaScript client's JSON.stringify writes one
    # for a lone surrogate) but the SDK's parser refuses it: the call must still end, with an error under
    # its own id, not wait forever for an answer sent with id null. Likewise a JSON-RPC request that is
    # invalid but names its id, and one whose id is of the wrong type.
    raw = _RawStdio(ws)
    try:
        raw.write(
            b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"run_command",'
            b'"arguments":{"command":["/bin/echo","\\ud800"]}}}\n'
        )
        reply = raw.recv(30)
        assert reply["id"] == 6
        assert reply["error"]["code"] == -32700
        raw.send({"jsonrpc": "2.0", "id": "seven", "method": 7})
        reply = raw.recv(30)
        assert (reply["id"], reply["error"]["code"]) == ("seven", INVALID_REQUEST)
        raw.write(b"{not json\n")
        assert raw.recv(30)["id"] is None
        # An id that is no string or integer: the SDK's parser takes the request for a notification, which
        # gets no answer; it is refused instead.
        for rid in (1.5, True, None, [1]):
            raw.send(
                {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "list_commands"}}
            )
            reply = raw.recv(30)
            assert (reply["id"], reply["error"]["code"]) == (None, INVALID_REQUEST)
        raw.call(8, {"command": ["/bin/echo", "\U0001f600 \u00e9"]})
        assert raw.recv()["result"]["structuredContent"]["stdout"] == "\U0001f600 \u00e9\n"
    finally:
        assert raw.end() == 0


def test_pipelined_split_and_crlf_requests_are_each_answered_once(ws: Path) -> None:
    raw = _RawStdio(ws)
    try:
        calls = [
            {
                "jsonrpc": "2.0",
                "id": 100 + i,
                "method": "tools/call",
                "params": {"name": "run_command", "arguments": {"command": ["/bin/echo", str(i)]}},
            }
            for i in range(24)
        ]
        raw.write(b"".join(json.dumps(c).encode() + b"\r\n" for c in calls))  # one write, CRLF endings
        line = json.dumps({**calls[0], "id": "split"}).encode() + b"\n"
        for i in range(0, len(line), 9):  # one request in pieces
            raw.write(line[i : i + 9])
        replies = [raw.recv() for _ in range(25)]
        by_id = {r["id"]: r for r in replies}
        assert len(by_id) == 25
        for i in range(24):
            assert by_id[100 + i]["result"]["structuredContent"]["stdout"] == f"{i}\n"
        assert by_id["split"]["result"]["structuredContent"]["stdout"] == "0\n"
        with pytest.raises(TimeoutError):  # and nothing more
            raw.recv(0.5)
    finally:
        assert raw.end() == 0


@pytest.mark.parametrize("where", ["--workdir", "--allow-write"])
def test_a_policy_path_that_is_not_utf8_is_refused_at_start(ws: Path, where: str) -> None:
    # MCP's messages are JSON text: a server whose workdir is no UTF-8 text could not even answer
    # `initialize` (its instructions name the workdir), and each call failed. Refused at start instead.
    odd = os.fsencode(ws) + b"/w\xffd"
    os.mkdir(odd)
    args = [*SERVER, "--workdir", os.fsencode(ws / "work"), where, odd]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert p.returncode == 125
    assert b"w\\xffd' is not UTF-8 text" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_cancelled_call_has_its_sandbox_killed_and_gets_no_reply(ws: Path) -> None:
    # `notifications/cancelled` for calls in flight: a plain one (the server's short path) and one whose
    # params carry `_meta` (a progress token: the SDK's own path). Each sandbox is killed and reaped, its
    # cgroup emptied, no reply comes for either id, and the server goes on.
    raw = _RawStdio(ws)
    try:
        raw.call(1, {"command": ["/bin/sleep", "300"]})
        params = {"name": "run_command", "arguments": {"command": ["/bin/sleep", "300"]}}
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": "two",
                "method": "tools/call",
                "params": {**params, "_meta": {"progressToken": "p2"}},
            }
        )
        sandboxes = _wait_sandboxes(raw.server, 2)
        for rid in (1, "two"):
            raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})
        deadline = time.monotonic() + 30
        # Each leaf is emptied (then removed, or kept empty for a later sandbox: docs/cgroups.md).
        while any(psutil.pid_exists(p) or _occupied(c) for p, c in sandboxes.items()):
            assert time.monotonic() < deadline, "a cancelled call's sandbox is still there"
            time.sleep(0.05)
        raw.call(3, {"command": ["/bin/echo", "on"]})
        reply = raw.recv()
        assert reply["id"] == 3  # nothing came for the cancelled ids
        assert reply["result"]["structuredContent"]["stdout"] == "on\n"
        with pytest.raises(TimeoutError):
            raw.recv(0.5)
    finally:
        assert raw.end() == 0


def test_closing_stdin_mid_call_ends_the_server_and_its_sandboxes(ws: Path) -> None:
    # EOF on stdin while a call and a background command run: the server stops both, reaps the sandboxes,
    # removes their cgroups and exits 0 by itself (no signal).
    raw = _RawStdio(ws)
    raw.call(1, {"command": ["/bin/sleep", "300"]}, tool="start_command")
    assert raw.recv()["result"]["structuredContent"]["pid"] > 0
    raw.call(2, {"command": ["/bin/sleep", "300"]})
    sandboxes = _wait_sandboxes(raw.server, 2)
    descendants = raw.server.children(recursive=True)  # the sandboxes, the fork server, the observer
    assert raw.proc.stdin is not None
    raw.proc.stdin.close()
    assert raw.end() == 0
    deadline = time.monotonic() + 10
    while alive := [d for d in descendants if _alive(d)]:
        assert time.monotonic() < deadline, alive
        time.sleep(0.05)
    for pid, where in sandboxes.items():
        assert not psutil.pid_exists(pid)
        assert where is not None
        assert not where.exists()


def test_a_client_that_reads_late_gets_every_reply_whole_and_blocks_no_other_work(ws: Path) -> None:
    # The client sends calls whose replies (each over 64 KiB) fill the pipe and reads nothing for a while:
    # other calls still run meanwhile (their effects show), and when it reads, every reply comes whole.
    raw = _RawStdio(ws)
    try:
        big = {"command": ["/bin/sh", "-c", "head -c 70000 /dev/zero | tr '\\0' '\"'"]}
        for i in range(6):
            raw.call(i, big)
        raw.call("touch", {"command": ["/bin/sh", "-c", "sleep 0.5; echo > marker"]})
        marker = ws / "work" / "marker"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "a call could not run while stdout was full"
            time.sleep(0.05)
        time.sleep(1)
        replies = {r["id"]: r for r in (raw.recv() for _ in range(7))}
        assert set(replies) == {0, 1, 2, 3, 4, 5, "touch"}
        for i in range(6):
            got = replies[i]["result"]["structuredContent"]
            assert got["stdout"] == '"' * (64 << 10)
            assert got["stdout_truncated"] is True
        assert raw.server.is_running()
    finally:
        assert raw.end() == 0


async def test_describe_sandbox_says_what_the_policy_enforces(ws: Path) -> None:
    # --profile and limits: the words and fields say what the commands then meet.
    flags = ("--profile", "read-only", "--memory", "256M", "--pids", "50", "--timeout", "20")
    async with stdio(ws, *flags) as (client, _):
        d = sc(await client.call_tool("describe_sandbox", {}))
        assert (d["profile"], d["writable"], d["read_only_inside_writable"]) == ("read-only", [], [])
        assert d["limits"] == {"memory": "256 MiB", "pids": "50", "timeout": "20 s"}
        assert "profile read-only" in d["summary"]
        assert "write nowhere but a private /tmp" in d["summary"]
        assert "memory 256 MiB, pids 50, timeout 20 s" in d["summary"]
        wrote = sc(await client.call_tool("run_command", {"command": ["/bin/sh", "-c", "echo x > f"]}))
        assert wrote["exit_code"] != 0
        assert "Read-only file system" in wrote["stderr"]
        assert not (ws / "work" / "f").exists()
        over = await client.call_tool("run_command", {"command": ["/bin/true"], "timeout": 30})
        assert over.is_error
        assert "beyond the policy's 20 s" in text(over)
    # --policy FILE: its profile, limits and environment.
    policy = ws / "policy.toml"
    policy.write_text(
        'profile = "workspace-write"\n[environment]\nset = { CORRAL_POLICY_VAR = "from-the-file" }\n'
        '[resources]\nmemory = "1G"\ntimeout = "90s"\n'
    )
    async with stdio(ws, "--policy", str(policy)) as (client, _):
        d = sc(await client.call_tool("describe_sandbox", {}))
        assert d["profile"] == "workspace-write"
        assert d["writable"] == [str(ws / "work")]
        assert d["limits"] == {"memory": "1 GiB", "timeout": "90 s"}
        assert "the policy sets CORRAL_POLICY_VAR" in d["environment"]
        assert "the policy sets CORRAL_POLICY_VAR" in d["summary"]
        env = sc(await client.call_tool("run_command", {"shell": "echo $CORRAL_POLICY_VAR"}))
        assert env["stdout"] == "from-the-file\n"


def test_the_2026_protocol_over_raw_stdio(ws: Path) -> None:
    # No handshake: every request carries the 2026-07-28 envelope in its `_meta`. Concurrent calls, a
    # cancelled one (its sandbox killed, no reply), a handshake attempt refused, EOF ending a background
    # command.
    raw = _RawStdio(ws, handshake=False)
    envelope = {
        PROTOCOL_VERSION_META_KEY: "2026-07-28",
        CLIENT_CAPABILITIES_META_KEY: {},
        CLIENT_INFO_META_KEY: {"name": "raw", "version": "0"},
    }

    def call(rid: int, tool: str, arguments: dict[str, Any]) -> None:
        params = {"name": tool, "arguments": arguments, "_meta": envelope}
        raw.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})

    try:
        for i in range(10):
            call(i, "run_command", {"command": ["/bin/echo", str(i)]})
        replies = {r["id"]: r for r in (raw.recv() for _ in range(10))}
        assert {i: r["result"]["structuredContent"]["stdout"] for i, r in replies.items()} == {
            i: f"{i}\n" for i in range(10)
        }
        call(20, "run_command", {"command": ["/bin/sleep", "300"]})
        call(21, "start_command", {"command": ["/bin/sleep", "300"]})
        assert raw.recv()["id"] == 21
        sandboxes = _wait_sandboxes(raw.server, 2)
        cancel = {"requestId": 20, "_meta": envelope}
        raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        raw.send({"jsonrpc": "2.0", "id": 22, "method": "initialize", "params": init})
        reply = raw.recv()
        assert reply["id"] == 22
        assert "error" in reply
        deadline = time.monotonic() + 30
        while sum(psutil.pid_exists(p) and _occupied(c) for p, c in sandboxes.items()) != 1:
            assert time.monotonic() < deadline, "the cancelled call's sandbox is still there"
            time.sleep(0.05)
    finally:
        assert raw.end() == 0
    for pid, where in sandboxes.items():
        assert not psutil.pid_exists(pid)
        assert not _occupied(where)


async def test_output_cut_at_a_byte_bound_never_splits_a_character(ws: Path) -> None:
    # run_command's 64 KiB cut, read_output's max_bytes and the pipe's own chunks fall inside multi-byte
    # characters: the text must hold whole characters only (no U+FFFD where the output had none), and a
    # background command's output read piecewise must come back exactly.
    euros = "\u20ac" * 30000  # 90,000 bytes: the 64 KiB cut falls inside a character
    async with stdio(ws) as (client, _):
        write = f"import sys; sys.stdout.write({euros[:1]!r} * 30000); sys.stderr.write('\u00e9' * 40001)"
        got = sc(await client.call_tool("run_command", {"command": [PY, "-c", write]}))
        assert got["stdout_truncated"] is True
        assert got["stdout"] == euros[: len(got["stdout"])]
        assert len(got["stdout"]) == (64 << 10) // 3
        assert "\ufffd" not in got["stderr"]
        poem = "\u00e9t\u00e9 \u2603 \U0001f600 " * 3000
        script = f"import sys, time; data = {poem!r}.encode()\nfor i in range(0, len(data), 4093):\n"
        script += "    sys.stdout.buffer.write(data[i:i + 4093]); sys.stdout.flush(); time.sleep(0.002)"
        handle = sc(await client.call_tool("start_command", {"command": [PY, "-c", script]}))["handle"]
        text_read = ""
        for _ in range(2000):
            st = sc(await client.call_tool("read_output", {"handle": handle, "wait": 1, "max_bytes": 1000}))
            text_read += st["stdout"]
            if st["result"] is not None and not st["more"]:
                break
        assert text_read == poem


def test_http_refuses_a_foreign_host_or_origin(ws: Path) -> None:
    # DNS rebinding: a web page's script that reaches the loopback server under its own name is refused.
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "r", "version": "0"},
        },
    }
    with http_server(ws) as (url, _):
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port

        def post(extra: dict[str, str]) -> int:
            conn = http.client.HTTPConnection(parsed.hostname or "", port, timeout=30)
            try:
                headers = {
                    "Content-Type": "application/json",
                    "Accept": "application/json, text/event-stream",
                }
                conn.request("POST", parsed.path, body=json.dumps(init), headers={**headers, **extra})
                resp = conn.getresponse()
                resp.read()
                return resp.status
            finally:
                conn.close()

        assert post({"Host": f"attacker.invalid:{port}"}) == 421
        assert post({"Origin": "http://attacker.invalid"}) == 403
        assert post({"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}) == 200


async def test_arguments_the_supervisor_refuses_are_tool_errors_with_its_message(ws: Path) -> None:
    # A NUL in a shell string or a cwd, an empty cwd: the Supervisor refuses them (ValueError); the model
    # must read why, not a bare "Error executing tool".
    async with stdio(ws) as (client, _):
        for tool in ("run_command", "start_command"):
            for args, words in (
                ({"shell": "echo a\x00b"}, "null byte"),
                ({"command": ["/bin/echo"], "cwd": "a\x00b"}, "without NUL"),
                ({"command": ["/bin/echo"], "cwd": ""}, "non-empty path"),
            ):
                refused = await client.call_tool(tool, args)
                assert refused.is_error
                assert words in text(refused), text(refused)
        assert sc(await client.call_tool("run_command", {"command": ["/bin/echo", "ok"]}))["stdout"] == "ok\n"


def test_a_call_before_initialize_is_refused_and_runs_nothing(ws: Path) -> None:
    raw = _RawStdio(ws, handshake=False)
    try:
        raw.call(1, {"command": ["/bin/touch", "early"]})
        reply = raw.recv()
        assert reply["id"] == 1
        assert "error" in reply
        assert not (ws / "work" / "early").exists()
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        raw.send({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": init})
        assert "result" in raw.recv()
        raw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        raw.call(3, {"command": ["/bin/touch", "late"]})
        assert raw.recv()["result"]["structuredContent"]["exit_code"] == 0
        assert (ws / "work" / "late").exists()
    finally:
        assert raw.end() == 0


@pytest.mark.parametrize("flag", ["--idle-timeout", "--approval-timeout"])
def test_a_nan_timeout_is_refused_at_start(ws: Path, flag: str) -> None:
    p = subprocess.run(
        [*SERVER, "--workdir", str(ws / "work"), flag, "nan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 125
    assert f"{flag}: nan is not a number of seconds" in p.stderr


@pytest.mark.parametrize(
    ("mode", "rules"), [("legacy", False), ("auto", False), ("legacy", True)]
)  # the short path, the SDK's path on 2026-07-28, the SDK's path with resolvers in force
async def test_string_arguments_are_taken_as_given_never_parsed_as_json(
    ws: Path, mode: str, rules: bool
) -> None:
    # A JSON document fed on stdin (to jq, to a test), or the word null, is a string like any other: the
    # SDK's JSON pre-parsing of arguments turned them into a list, a dict or None.
    extra = ("--rules", str(ws / "rules.toml")) if rules else ()
    (ws / "rules.toml").write_text('default = "allow"\n')
    before = _server_pids_before()
    params = StdioServerParameters(
        command=SERVER[0], args=[*SERVER[1:], "--workdir", str(ws / "work"), *extra], cwd=str(ROOT)
    )
    async with Client(params, read_timeout_seconds=120, mode=mode) as client:
        _new_server(before)
        for document in ('{"a": [1, 2]}', '["x", "y"]', "null", "true", "42"):
            got = sc(await client.call_tool("run_command", {"command": ["/bin/cat"], "input": document}))
            assert got["stdout"] == document
        got = sc(await client.call_tool("run_command", {"shell": "null"}))
        assert "null: not found" in got["stderr"]
        (ws / "work" / "null").mkdir()
        got = sc(await client.call_tool("run_command", {"command": ["/bin/pwd"], "cwd": "null"}))
        assert got["stdout"] == f"{ws / 'work' / 'null'}\n"
        # A list still comes through as a JSON string (what some clients send).
        got = sc(await client.call_tool("run_command", {"command": '["/bin/echo", "listed"]'}))
        assert got["stdout"] == "listed\n"
