"""The stdio transport's fast lane (`supervisor/_mcp_stdio.py`, `_Lane` and `_Dispatcher`): a plain
`tools/call` on a handshake-era connection is answered as the SDK's own path answers it (byte for byte), can
be cancelled by the client, runs concurrently with the others, and is answered at the end of the connection
as the SDK's path answers it. The real server (`build_server`, `serve_connection`) on two pipes in this
process, driven with raw JSON-RPC lines; `Supervisor.run` is a stand-in (no sandbox starts: what is tested
is the protocol path), as in benchmarks/mcp_instructions.py. tests/e2e/test_mcp.py runs the real server."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import JSONRPCResponse

from policies import profiles
from supervisor import _mcp_stdio, mcp_server
from supervisor._mcp_stdio import WireIn, WireOut, serve_connection
from supervisor._types import Result
from tests.unit.test_mcp_calls import CALLS

pytestmark = pytest.mark.anyio


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


RESULT = Result(
    exit_code=0,
    signal=None,
    violation=None,
    duration_s=0.002,
    cpu_s=0.001,
    peak_memory_bytes=1 << 20,
    pid=1234,
    enforced=("namespaces", "landlock"),
)


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("_SEEN", default="fresh")


class _Sup:
    """Stands in for the server's Supervisor: `run` waits for `gate` (when set), counting the runs that
    entered, left, and were cancelled."""

    def __init__(self) -> None:
        self.gate: anyio.Event | None = None
        self.entered = 0
        self.cancelled = 0
        self.all_in = anyio.Event()
        self.was_cancelled = anyio.Event()
        self.expect = 0
        self.contexts: list[str] = []

    async def run(self, argv: list[str], **_: Any) -> Result:
        self.entered += 1
        self.contexts.append(_SEEN.get())
        _SEEN.set("set by an earlier call")
        if self.entered == self.expect:
            self.all_in.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            self.was_cancelled.set()
            raise
        return RESULT


class _Peer:
    """The client's end: raw lines out, replies back (by id)."""

    def __init__(self, to_server: int, from_server: int) -> None:
        self._w = to_server
        self._r = from_server
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        os.write(self._w, json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def line(self) -> bytes:
        with anyio.fail_after(10):
            while b"\n" not in self._buf:
                try:
                    chunk = os.read(self._r, 1 << 16)
                except BlockingIOError:
                    await anyio.wait_readable(self._r)
                    continue
                if not chunk:
                    raise EOFError
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    async def call(self, rid: int, method: str, params: dict[str, Any]) -> bytes:
        self.send({"id": rid, "method": method, "params": params})
        return await self.line()

    def close(self) -> None:
        os.close(self._w)


@contextlib.asynccontextmanager
async def _serving(sup: Any, *, lane: bool, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Peer]:
    """The server on pipes, initialized, and a peer for it. `lane`: whether the fast lane may run."""
    claims: list[str] = []
    claim = _mcp_stdio._Lane.claim

    def counted(self: Any, req: Any) -> Any:
        taken = claim(self, req)
        if taken is not None:
            claims.append(req.params["name"])
        return taken

    monkeypatch.setattr(_mcp_stdio._Lane, "claim", counted)
    takes: list[str] = []
    take = _mcp_stdio._Dispatcher.take_request

    def counted_take(self: Any, req: Any) -> bool:
        taken = take(self, req)
        if taken:
            takes.append(req.params["name"])
        return taken

    monkeypatch.setattr(_mcp_stdio._Dispatcher, "take_request", counted_take)
    if not lane:
        monkeypatch.setattr(_mcp_stdio._Lane, "for_server", classmethod(lambda *_: None))
    settings = mcp_server.McpSettings(policy=profiles.get("workspace-write", tempfile.gettempdir()))
    fds = os.pipe() + os.pipe()
    for fd in fds:
        os.set_blocking(fd, False)
    c2s_r, c2s_w, s2c_r, s2c_w = fds
    try:
        async with anyio.create_task_group() as tg:
            runtime: Callable[[], Any]
            if sup is None:

                def runtime() -> Any:
                    raise ToolError("the server is not running")

            else:
                rt = mcp_server._Runtime(settings, sup, tg, single=True)

                def runtime() -> Any:
                    return rt

            server = mcp_server.build_server(runtime, settings)
            out = WireOut(s2c_w)
            tg.start_soon(serve_connection, server._lowlevel_server, WireIn(c2s_r, 1 << 20, out), out)
            peer = _Peer(c2s_w, s2c_r)
            hi = {"name": "t", "version": "0"}
            await peer.call(
                0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": hi}
            )
            peer.send({"method": "notifications/initialized"})
            peer.claims = claims  # type: ignore[attr-defined]
            peer.takes = takes  # type: ignore[attr-defined]
            yield peer
            tg.cancel_scope.cancel()
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


async def _replies(sup: Any, lane: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[str]]:
    out = []
    async with _serving(sup, lane=lane, monkeypatch=monkeypatch) as peer:
        for i, (name, args) in enumerate(CALLS, 1):
            out.append(await peer.call(i, "tools/call", {"name": name, "arguments": args}))
        if lane and anyio_backend_name() == "asyncio":
            # One line at a time, each read by the loop's readiness callback while the receive loop waits:
            # dispatched there (`WireIn._take`).
            assert peer.takes  # type: ignore[attr-defined]
        # All of them in one write, then one split in two writes: through the receive loop, in order.
        lines = b"".join(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 100 + i,
                    "method": "tools/call",
                    "params": {"name": n, "arguments": a},
                }
            ).encode()
            + b"\n"
            for i, (n, a) in enumerate(CALLS)
        )
        os.write(peer._w, lines)
        burst = {json.loads(line := await peer.line())["id"]: line for _ in CALLS}
        out.extend(burst[100 + i] for i in range(len(CALLS)))
        half = (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 200,
                    "method": "tools/call",
                    "params": {"name": "describe_sandbox", "arguments": {}},
                }
            ).encode()
            + b"\n"
        )
        os.write(peer._w, half[:20])
        await anyio.sleep(0.05)
        os.write(peer._w, half[20:])
        out.append(await peer.line())
        # Not plain calls: the SDK's way on both.
        out.append(
            await peer.call(90, "tools/call", {"name": "describe_sandbox", "arguments": {}, "_meta": {}})
        )
        out.append(await peer.call(91, "tools/call", {"name": "describe_sandbox"}))
        out.append(await peer.call("s", "tools/call", {"name": "describe_sandbox", "arguments": []}))
        return out, list(peer.claims)  # type: ignore[attr-defined]


@pytest.mark.parametrize("running", [True, False], ids=["runtime", "stopped"])
async def test_the_lane_answers_as_the_sdks_path_byte_for_byte(
    running: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        sdk, none = await _replies(_Sup() if running else None, False, m)
    with monkeypatch.context() as m:
        lane, claimed = await _replies(_Sup() if running else None, True, m)
    assert none == []
    assert lane == sdk
    # Every plain call of a corral tool took the lane (the unknown tool and the calls with other params not).
    plain = [name for name, _ in CALLS if name != "no_such_tool"]
    assert sorted(claimed) == sorted(plain + plain + ["describe_sandbox", "describe_sandbox"])
    if running:  # the calls that reached the body ran it: a real result came back
        first = json.loads(lane[0])
        assert first["result"]["structuredContent"]["pid"] == RESULT.pid


async def test_a_lane_call_is_cancelled_by_the_client_and_left_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = _Sup()
    sup.gate = anyio.Event()  # never set: the run waits until cancelled
    sup.expect = 1
    async with _serving(sup, lane=True, monkeypatch=monkeypatch) as peer:
        peer.send(
            {
                "id": 5,
                "method": "tools/call",
                "params": {"name": "run_command", "arguments": {"command": ["x"]}},
            }
        )
        with anyio.fail_after(10):
            await sup.all_in.wait()
        peer.send({"method": "notifications/cancelled", "params": {"requestId": 5}})
        reply = json.loads(await peer.call(6, "tools/call", {"name": "describe_sandbox", "arguments": {}}))
        assert reply["id"] == 6  # no answer for 5 came first (nor after: the next line is 7's)
        with anyio.fail_after(10):
            await sup.was_cancelled.wait()
        reply = json.loads(await peer.call(7, "tools/call", {"name": "describe_sandbox", "arguments": {}}))
        assert reply["id"] == 7
        assert peer.claims == ["run_command", "describe_sandbox", "describe_sandbox"]  # type: ignore[attr-defined]


async def test_twenty_lane_calls_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sup = _Sup()
    gate = sup.gate = anyio.Event()  # set only once all 20 are in: none returns before
    sup.expect = 20
    async with _serving(sup, lane=True, monkeypatch=monkeypatch) as peer:
        for i in range(20):
            peer.send(
                {
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "run_command", "arguments": {"command": ["x"]}},
                }
            )
        with anyio.fail_after(10):
            await sup.all_in.wait()
        gate.set()
        ids = sorted([json.loads(await peer.line())["id"] for _ in range(20)])
        assert ids == list(range(20))
        # And again, on the tasks kept from the first 20.
        sup.gate = None
        for i in range(20, 40):
            peer.send(
                {
                    "id": i,
                    "method": "tools/call",
                    "params": {"name": "run_command", "arguments": {"command": ["x"]}},
                }
            )
        ids = sorted([json.loads(await peer.line())["id"] for _ in range(20)])
        assert ids == list(range(20, 40))
        assert len(peer.claims) == 40  # type: ignore[attr-defined]


async def _closing_reply(lane: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, int]:
    sup = _Sup()
    sup.gate = anyio.Event()
    sup.expect = 1
    async with _serving(sup, lane=lane, monkeypatch=monkeypatch) as peer:
        peer.send(
            {
                "id": 9,
                "method": "tools/call",
                "params": {"name": "run_command", "arguments": {"command": ["x"]}},
            }
        )
        with anyio.fail_after(10):
            await sup.all_in.wait()
        peer.close()  # the client leaves with the call in flight
        line = await peer.line()
        with anyio.fail_after(10):
            await sup.was_cancelled.wait()
        return line, len(peer.claims)  # type: ignore[attr-defined]


async def test_a_lane_call_in_flight_at_the_end_is_answered_as_the_sdks_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as m:
        sdk, _ = await _closing_reply(False, m)
    with monkeypatch.context() as m:
        lane, claimed = await _closing_reply(True, m)
    assert claimed == 1
    assert lane == sdk
    assert json.loads(lane)["error"]["message"] == "Connection closed"


def test_send_result_writes_what_send_writes_for_the_response_model() -> None:
    results: list[dict[str, Any]] = [
        {},
        {"content": [{"type": "text", "text": 'é\u2028\x00 "q" \\'}], "isError": False},
        {"a": [1, 2.5, None, float("nan"), float("inf"), -float("inf"), 1e-7, 1e22, 10**30, True, -0.0]},
        {"nested": {"k": [{"x": ["y", {"z": None}]}]}, "s": "\ud800x"},
    ]

    async def both(result: dict[str, Any], rid: int | str) -> tuple[bytes, bytes]:
        r, w = os.pipe()
        try:
            out = WireOut(w)
            await out.send_result(rid, result)
            a = os.read(r, 1 << 16)
            from mcp.shared.message import SessionMessage

            await out.send(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=rid, result=result)))
            return a, os.read(r, 1 << 16)
        finally:
            os.close(r)
            os.close(w)

    for result in results:
        for rid in (0, 7, "abc", "é"):
            try:
                a, b = anyio.run(both, result, rid)
            except Exception as err:  # the model refuses it: so must send_result's serializer
                with pytest.raises(type(err)):
                    anyio.run(both, result, rid)
                continue
            assert a == b


async def test_lane_tasks_are_kept_between_calls_each_call_in_a_fresh_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []
    work = _mcp_stdio._Workers._work

    async def counted(self: Any, job: Any) -> None:
        started.append(1)
        await work(self, job)

    monkeypatch.setattr(_mcp_stdio._Workers, "_work", counted)
    sup = _Sup()
    async with _serving(sup, lane=True, monkeypatch=monkeypatch) as peer:
        for i in range(10):
            reply = json.loads(
                await peer.call(i, "tools/call", {"name": "describe_sandbox", "arguments": {}})
            )
            assert "result" in reply
        # Each of these sets a context variable: none sees the one an earlier call set.
        for i in range(10, 15):
            reply = json.loads(
                await peer.call(i, "tools/call", {"name": "run_command", "arguments": {"command": ["x"]}})
            )
            assert "result" in reply
    assert sup.contexts == ["fresh"] * 5
    if anyio_backend_name() == "asyncio":
        assert len(started) <= 6  # one task for the ten describe_sandbox calls, one for each run_command
    else:
        assert len(started) == 15  # trio: a task per call


async def test_without_the_sdk_internals_it_uses_there_is_no_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mcp_stdio, "_InFlight", None)
    async with _serving(_Sup(), lane=True, monkeypatch=monkeypatch) as peer:
        for i in range(3):
            reply = json.loads(
                await peer.call(i, "tools/call", {"name": "run_command", "arguments": {"command": ["x"]}})
            )
            assert reply["result"]["structuredContent"]["pid"] == RESULT.pid
        assert peer.claims == []  # type: ignore[attr-defined]
        assert peer.takes == []  # type: ignore[attr-defined]
