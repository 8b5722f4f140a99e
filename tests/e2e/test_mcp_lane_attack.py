"""Attacks on `corral mcp`'s stdio fast lane (session 12: `supervisor/_mcp_stdio.py`, `_Lane`, `_Dispatcher`,
`WireIn._take`) from outside: a real server process spoken to with raw bytes on its stdin, its replies read
from its stdout, its sandboxes, cgroups and descendants checked in /proc and the cgroup tree.

Three servers are driven: `lane` (the `corral mcp` CLI as shipped), `sdk` (the same CLI with the lane off:
`_lane_fits` answers False, so every request goes the SDK's way, as before session 12) and `trio` (the same
CLI on trio, where the lane runs without the readiness-callback dispatch). What the lane answers must be
what the SDK's path answers, byte for byte but for a run's measured figures (`_normalized`).
tests/e2e/test_mcp.py has the cases it already covers (split, CRLF and pipelined calls; a cancelled call;
EOF mid-call; a call before initialize); tests/unit/test_mcp_lane.py the in-process ones."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp.shared.exceptions import MCPError

from tests.e2e.test_mcp import ROOT, _alive, _has_child, _occupied, _wait_sandboxes, connect, inits, ws

pytestmark = pytest.mark.kernel

__all__ = ["ws"]  # the fixture, imported for the tests here

#: The CLI with the fast lane off (the SDK's way for every request) and the CLI on trio.
LANE_OFF = (
    "import sys; import supervisor._mcp_stdio as s; s._lane_fits = lambda d: False; "
    "from supervisor.cli import main; main()"
)
ON_TRIO = (
    "import functools, sys, anyio; anyio.run = functools.partial(anyio.run, backend='trio'); "
    "from supervisor.cli import main; main()"
)
LAUNCH = {
    "lane": [sys.executable, "-m", "supervisor.cli", "mcp"],
    "sdk": [sys.executable, "-c", LANE_OFF, "mcp"],
    "trio": [sys.executable, "-c", ON_TRIO, "mcp"],
}
LANED = pytest.mark.parametrize("server", ["lane", "trio"])
INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
NO_REPLY = {"<no reply>": True}


def req(rid: Any, name: str = "list_commands", arguments: Any = None, **params: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, **params}
    if arguments is not None:
        p["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": p}


def run(rid: Any, *argv: str) -> dict[str, Any]:
    return req(rid, "run_command", {"command": list(argv)})


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


class Raw:
    """A server of `LAUNCH[kind]` on pipes; every read bounded in time."""

    def __init__(
        self, kind: str, ws: Path, *extra: str, handshake: bool = True, capabilities: Any = None
    ) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [*LAUNCH[kind], "--workdir", str(ws / "work"), *extra],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.server = psutil.Process(self.proc.pid)
        self._buf = b""
        if handshake:
            init = {**INIT, "capabilities": capabilities or {}}
            self.write(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}))
            assert "result" in self.recv()
            self.write(line({"jsonrpc": "2.0", "method": "notifications/initialized"}))

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        """The next message; TimeoutError when none comes within `timeout` s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            assert chunk, "the server closed stdout"
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\n")
        return dict(json.loads(raw))

    def ask(self, data: bytes, timeout: float = 30) -> dict[str, Any]:
        """Write `data` (one message) and return its one reply, or NO_REPLY when none comes in time."""
        self.write(data)
        try:
            return self.recv(timeout)
        except TimeoutError:
            return NO_REPLY

    def replies(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.recv(max(0.1, deadline - time.monotonic())) for _ in range(n)]

    def quiet(self, seconds: float = 0.5) -> None:
        """Nothing more comes within `seconds`."""
        with pytest.raises(TimeoutError):
            print("unexpected:", self.recv(seconds))

    def end(self) -> int:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextlib.contextmanager
def raw(kind: str, ws: Path, *extra: str, **kw: Any) -> Iterator[Raw]:
    r = Raw(kind, ws, *extra, **kw)
    try:
        yield r
    finally:
        code = r.end()
        assert code == 0, code


_FIGURES = ("duration_s", "cpu_s", "peak_memory_bytes", "pid")


def _normalized(message: dict[str, Any]) -> dict[str, Any]:
    """`message` without a run's measured figures (its times, memory, pid)."""
    message = json.loads(json.dumps(message))
    result = message.get("result")
    if isinstance(result, dict):
        sc = result.get("structuredContent")
        if isinstance(sc, dict):
            for k in _FIGURES:
                if k in sc:
                    sc[k] = "*"
        for c in result.get("content") or []:
            if isinstance(c, dict) and isinstance(c.get("text"), str):
                c["text"] = re.sub(r"\(\d+(\.\d+)? s\)", "(* s)", c["text"])
    return message


def _cgroup_parents(pid: int) -> list[Path]:
    """Where the supervisor of server `pid` keeps its sandboxes' cgroups, in each hierarchy it is in:
    `<its own cgroup>/corral-<pid>-*` (docs/cgroups.md, "Layout and names")."""
    out: list[Path] = []
    for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = entry.split(":", 2)
        names = [c for c in controllers.split(",") if c and not c.startswith("name=")]
        dirs = [Path("/sys/fs/cgroup") / c for c in names] or [Path("/sys/fs/cgroup")]
        for d in dirs:
            base = d / path.lstrip("/")
            with contextlib.suppress(OSError):
                out += [p for p in base.iterdir() if p.name.startswith(f"corral-{pid}-")]
    return out


def _assert_nothing_left(r: Raw, descendants: list[psutil.Process], parents: list[Path]) -> None:
    """After the server exited: no descendant runs, no cgroup of its supervisor is left, and nothing holds
    the server's stdout open (a leaked fd would keep the pipe from reaching its end)."""
    deadline = time.monotonic() + 15
    while alive := [d for d in descendants if _alive(d)]:
        assert time.monotonic() < deadline, alive
        time.sleep(0.05)
    assert parents, "the server made no cgroup: nothing was checked"
    while left := [p for p in parents if p.exists()]:
        assert time.monotonic() < deadline, left
        time.sleep(0.05)
    assert r.proc.stdout is not None
    fd = r.proc.stdout.fileno()
    while True:  # the rest of stdout, then its end
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], "stdout still open"
        if not os.read(fd, 1 << 20):
            break


# ---------------------------------------------------------------------------------------------------------
# The lane answers every request as the SDK's path answers it.

_BIG = 2**64 + 5
#: (label, the bytes of one message) each answered with one reply (or none, alike on both paths).
SCRIPT: list[tuple[str, bytes]] = [
    # ids of every JSON type
    *((f"id {rid!r}", line(req(rid))) for rid in ("s", "", "\u00fc\U0001f600", "7", 0, -1, 2**53 + 1)),
    *((f"id {rid!r}", line(req(rid))) for rid in (2**63 - 1, -(2**63), 2**63, _BIG, -(10**30))),
    ("id 1.0", b'{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"list_commands"}}\n'),
    ("id 1e2", b'{"jsonrpc":"2.0","id":1e2,"method":"tools/call","params":{"name":"list_commands"}}\n'),
    ("id null", line(req(None))),
    ("id true", line(req(True))),
    ("id {}", line(req({}))),
    ("id control char", line(req("a\u0007b"))),
    # the message's shape
    ("unknown top-level field", line({**req(20), "extra": {"x": 1}})),
    ("unknown params field", line(req(21, foo=1))),
    ("params null", line({"jsonrpc": "2.0", "id": 22, "method": "tools/call", "params": None})),
    (
        "params a list",
        line({"jsonrpc": "2.0", "id": 23, "method": "tools/call", "params": ["list_commands"]}),
    ),
    ("no params", line({"jsonrpc": "2.0", "id": 24, "method": "tools/call"})),
    ("jsonrpc 1.0", line({**req(25), "jsonrpc": "1.0"})),
    ("no jsonrpc", line({k: v for k, v in req(26).items() if k != "jsonrpc"})),
    (
        "_meta progressToken",
        line(req(27, "run_command", {"command": ["/bin/echo", "p"]}, _meta={"progressToken": "t"})),
    ),
    ("_meta empty", line(req(28, _meta={}))),
    (
        "\\u escapes",
        b'{"jsonrpc":"2.0","id":29,"method":"tools/call","params":{"name":"run_\\u0063ommand",'
        b'"arguments":{"command":["/bin/echo","\\u00e9"]}}}\n',
    ),
    (
        "duplicate keys",
        b'{"jsonrpc":"2.0","id":30,"id":31,"method":"tools/call","params":{"name":"nope",'
        b'"name":"list_commands"}}\n',
    ),
    ("trailing whitespace", line(req(32))[:-1] + b" \t \n"),
    # the tool's name and arguments
    ("no name", line({"jsonrpc": "2.0", "id": 40, "method": "tools/call", "params": {"arguments": {}}})),
    ("name 5", line(req(41, 5))),  # type: ignore[arg-type]
    ("unknown tool", line(req(42, "nope", {}))),
    (
        "arguments null",
        line(
            {
                "jsonrpc": "2.0",
                "id": 43,
                "method": "tools/call",
                "params": {"name": "list_commands", "arguments": None},
            }
        ),
    ),
    ("arguments a list", line(req(44, "list_commands", []))),
    ("arguments a string", line(req(45, "list_commands", "{}"))),
    ("arguments an int", line(req(46, "run_command", 5))),
    ("command a string", line(req(47, "run_command", {"command": "/bin/echo"}))),
    ("command empty", line(req(48, "run_command", {"command": []}))),
    ("command of ints", line(req(49, "run_command", {"command": [1, 2]}))),
    ("command nested", line(req(50, "run_command", {"command": [["/bin/echo"]]}))),
    ("command of objects", line(req(51, "run_command", {"command": [{"a": 1}]}))),
    ("command and shell", line(req(52, "run_command", {"command": ["/bin/true"], "shell": "true"}))),
    ("neither command nor shell", line(req(53, "run_command", {}))),
    ("timeout a string", line(req(54, "run_command", {"command": ["/bin/true"], "timeout": "5"}))),
    ("timeout negative", line(req(55, "run_command", {"command": ["/bin/true"], "timeout": -1}))),
    ("timeout huge", line(req(56, "run_command", {"command": ["/bin/true"], "timeout": 1e300}))),
    ("timeout true", line(req(57, "run_command", {"command": ["/bin/true"], "timeout": True}))),
    ("unknown argument", line(req(58, "run_command", {"command": ["/bin/true"], "nope": 1}))),
    ("input an object", line(req(59, "run_command", {"command": ["/bin/cat"], "input": {"a": 1}}))),
    ("arguments to describe_sandbox", line(req(60, "describe_sandbox", {"x": 1}))),
    ("read_output of no command", line(req(61, "read_output", {"id": "nope"}))),
    ("a NUL in argv", line(req(62, "run_command", {"command": ["/bin/echo", "a\u0000b"]}))),
    ("argv over the bound", line(run(64, "/bin/echo", "x" * (200 * 1024)))),
    (
        "input over the bound",
        line(req(65, "run_command", {"command": ["/bin/cat"], "input": "z" * (2 << 20)})),
    ),
    ("bad UTF-8 in an argument", line(run(66, "/bin/echo", "@"))[:-1].replace(b"@", b"\xff\xfe") + b"\n"),
    ("a BOM first", b"\xef\xbb\xbf" + line(req(67))),
    ("method upper case", line({**req(68), "method": "TOOLS/CALL"})),
    ("method with a space", line({**req(69), "method": "tools/call "})),
    ("2026-07-28 envelope", line(req(70, _meta={"io.modelcontextprotocol/protocolVersion": "2026-07-28"}))),
    ("progressToken an int", line(req(71, _meta={"progressToken": 9}))),
    ("progressToken a list", line(req(72, _meta={"progressToken": [1]}))),
    ("a run", line(run(63, "/bin/echo", "ok"))),
    # no reply: a response, an error, notifications (a `tools/call` among them: it must run nothing)
    ("quiet: a response", line({"jsonrpc": "2.0", "id": 80, "result": {}})),
    ("quiet: an error", line({"jsonrpc": "2.0", "id": 81, "error": {"code": 1, "message": "m"}})),
    (
        "quiet: tools/call as a notification",
        line({k: v for k, v in run(0, "/bin/touch", "n").items() if k != "id"}),
    ),
    (
        "quiet: cancel of no call",
        line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}),
    ),
    (
        "quiet: progress",
        line(
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": 1, "progress": 1},
            }
        ),
    ),
]
SENTINEL = line(req("sentinel"))


def _answers(kind: str, ws: Path) -> list[tuple[str, dict[str, Any]]]:
    with raw(kind, ws) as r:
        got = []
        for label, data in SCRIPT:
            if label.startswith("quiet:"):  # the reply that comes next must be the sentinel's
                got.append((label, r.ask(data + SENTINEL)))
            else:
                got.append((label, _normalized(r.ask(data))))
        r.quiet()
        (ws / "work" / "n").unlink(missing_ok=True)  # test_a_tools_call_notification_runs_nothing
        return got


def test_the_lane_answers_every_request_as_the_sdks_path(ws: Path) -> None:
    sdk = _answers("sdk", ws)
    for kind in ("lane", "trio"):
        got = _answers(kind, ws)
        diff = [
            (label, want, have) for (label, want), (_, have) in zip(sdk, got, strict=True) if want != have
        ]
        assert not diff, (kind, diff)
    by = dict(sdk)
    for label, _ in SCRIPT:
        if label.startswith("quiet:"):
            assert by[label]["id"] == "sentinel", (label, by[label])
    # JSON-RPC 2.0: a request's id comes back as it was sent (its type too), an id of another type is refused
    for label, data in SCRIPT:
        if label.startswith("id "):
            rid = json.loads(data)["id"]
            if type(rid) in (int, str) and rid != "a\u0007b":
                assert type(by[label]["id"]) is type(rid), label
                assert by[label]["id"] == rid, label
                assert "result" in by[label], (label, by[label])
    for label in ("id 1.0", "id 1e2", "id null", "id true", "id {}"):
        assert by[label]["id"] is None, by[label]
        assert by[label]["error"]["code"] == -32600, by[label]
    assert by["a run"]["result"]["structuredContent"]["stdout"] == "ok\n"
    assert by["_meta progressToken"]["result"]["structuredContent"]["stdout"] == "p\n"
    assert by["\\u escapes"]["result"]["structuredContent"]["stdout"] == "\u00e9\n"
    for label in ("command a string", "command of ints", "command empty", "unknown tool"):
        assert by[label].get("error") or by[label]["result"]["isError"], (label, by[label])


def _appears(path: Path, seconds: float) -> bool:
    """Whether `path` exists within `seconds`."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("server", ["lane", "sdk"])
def test_a_tools_call_notification_runs_nothing(ws: Path, server: str) -> None:
    with raw(server, ws) as r:
        notification = {k: v for k, v in run(0, "/bin/touch", "n").items() if k != "id"}
        assert r.ask(line(notification) + SENTINEL)["id"] == "sentinel"
        assert not _appears(ws / "work" / "n", 5)


# ---------------------------------------------------------------------------------------------------------
# Bytes on the wire: pipelined, split, garbage between calls.


@LANED
def test_pipelined_split_and_garbled_lines_are_each_answered_once(ws: Path, server: str) -> None:
    with raw(server, ws) as r:
        big = (
            b'{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{"pad":"'
            + b"p" * (5 << 20)
            + b'"}}\n'
        )
        r.write(
            line(run(1, "/bin/echo", "one"))
            + b"{not json\n"
            + line(run(2, "/bin/echo", "two"))
            + line(run(3, "/bin/echo", "three"))[:-1]
            + b" trailing garbage\n"
            + big
            + b"\n"  # an empty line
            + line({"jsonrpc": "2.0", "method": "notifications/nothing"})
            + line(run(4, "/bin/echo", "four"))
        )
        got = r.replies(7)
        ok = {m["id"]: m["result"]["structuredContent"]["stdout"] for m in got if "result" in m}
        assert ok == {1: "one\n", 2: "two\n", 4: "four\n"}, got
        errors = sorted((m["id"] is None, m["error"]["code"]) for m in got if "error" in m)
        # `{not json`, the trailing garbage (not JSON: answered with id null), the 5 MiB line (over the
        # bound), the empty line
        assert errors == [(True, -32700)] * 4, got
        # one request byte by byte, then the end of one and a whole other in one write
        one = line(run("bytes", "/bin/echo", "b"))
        for i in range(len(one)):
            r.write(one[i : i + 1])
        two, three = line(run("half", "/bin/echo", "h")), line(run("whole", "/bin/echo", "w"))
        r.write(two[:7])
        time.sleep(0.2)
        r.write(two[7:] + three[:-1])
        time.sleep(0.2)
        r.write(b"\n")
        got = r.replies(3)
        ok = {m["id"]: m["result"]["structuredContent"]["stdout"] for m in got}
        assert ok == {"bytes": "b\n", "half": "h\n", "whole": "w\n"}
        r.quiet()


@pytest.mark.parametrize("server", ["lane", "sdk", "trio"])
def test_a_deeply_nested_line_is_refused_and_the_server_goes_on(ws: Path, server: str) -> None:
    # The lane's readiness-callback parse and the receive loop's error path both read the line: JSON nested
    # deeper than a parser's recursion bound is still under the 4 MiB message bound. (It ended the server
    # on every path: Python's json.loads raised RecursionError, which is no ValueError.)
    with raw(server, ws) as r:
        nest = b"[" * 1200 + b"]" * 1200  # a 2.5 KB line; 500 deep is answered with -32700
        r.write(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_commands","x":'
            + nest
            + b"}}\n"
        )
        reply = r.recv(30)
        assert reply["error"]["code"] in (-32700, -32600)
        assert r.ask(line(req(2)))["id"] == 2


# ---------------------------------------------------------------------------------------------------------
# Requests in flight: duplicates, before `initialized`, cancelled.


def _duplicates(kind: str, ws: Path) -> list[tuple[Any, str]]:
    with raw(kind, ws) as r:
        r.write(
            line(run(5, "/bin/sh", "-c", "sleep 0.6; echo first"))
            + line(run(5, "/bin/sh", "-c", "sleep 0.3; echo second"))
        )
        got = r.replies(2)
        r.quiet()
        return sorted((m["id"], m["result"]["structuredContent"]["stdout"]) for m in got)


def test_duplicate_ids_in_flight_are_each_answered_as_on_the_sdks_path(ws: Path) -> None:
    want = _duplicates("sdk", ws)
    assert want == [(5, "first\n"), (5, "second\n")]
    assert _duplicates("lane", ws) == want
    assert _duplicates("trio", ws) == want


def _before_initialized(kind: str, ws: Path) -> tuple[dict[str, Any], bool]:
    with raw(kind, ws, handshake=False) as r:
        assert "result" in r.ask(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}))
        reply = _normalized(r.ask(line(run(1, "/bin/touch", f"early-{kind}"))))
        ran = (ws / "work" / f"early-{kind}").exists()
        r.write(line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        assert r.ask(line(req(2)))["id"] == 2
        return reply, ran


def test_a_call_between_initialize_and_initialized_is_answered_as_on_the_sdks_path(ws: Path) -> None:
    want = _before_initialized("sdk", ws)
    assert _before_initialized("lane", ws) == want
    assert _before_initialized("trio", ws) == want


@LANED
def test_a_call_cancelled_in_the_write_that_sent_it_runs_nothing_and_gets_no_reply(
    ws: Path, server: str
) -> None:
    with raw(server, ws) as r:
        marker = ws / "work" / "ran"
        r.write(
            line(run(1, "/bin/sh", "-c", "sleep 1; touch ran; sleep 300"))
            + line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        )
        r.quiet(2.5)
        assert not marker.exists()
        assert not any(_has_child(p) for p in inits(r.server))
        assert r.ask(line(run(2, "/bin/echo", "on")))["result"]["structuredContent"]["stdout"] == "on\n"


def _cancel_by_string(kind: str, ws: Path) -> tuple[list[Any], bool]:
    """A call of id 3 cancelled by `"requestId": "3"`: what comes back, and whether its sandbox ran on."""
    with raw(kind, ws) as r:
        r.write(line(run(3, "/bin/sh", "-c", "sleep 2; echo done")))
        _wait_sandboxes(r.server, 1)
        r.write(line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "3"}}))
        got: list[Any] = []
        with contextlib.suppress(TimeoutError):
            got.append(_normalized(r.recv(5)))
        return got, bool(got)


def test_a_cancel_naming_the_id_as_a_string_acts_as_on_the_sdks_path(ws: Path) -> None:
    want = _cancel_by_string("sdk", ws)
    assert _cancel_by_string("lane", ws) == want
    assert _cancel_by_string("trio", ws) == want


@LANED
def test_twenty_lane_calls_in_one_write_run_at_once_each_in_its_own_sandbox(ws: Path, server: str) -> None:
    with raw(server, ws) as r:
        gate = ws / "work" / "go"
        wait = "while [ ! -e go ]; do sleep 0.05; done; echo $$"
        r.write(b"".join(line(run(i, "/bin/sh", "-c", wait)) for i in range(20)))
        sandboxes = _wait_sandboxes(r.server, 20)  # all twenty at once: none answered before the gate opens
        assert len(set(sandboxes.values())) >= 20
        gate.touch()
        got = r.replies(20)
        assert sorted(m["id"] for m in got) == list(range(20))
        pids = {m["result"]["structuredContent"]["pid"] for m in got}
        assert len(pids) == 20
        assert r.server.pid not in pids
        r.quiet()


def _in_flight(r: Raw, n: int) -> tuple[list[psutil.Process], list[Path]]:
    r.write(b"".join(line(run(i, "/bin/sleep", "300")) for i in range(n)))
    _wait_sandboxes(r.server, n)
    return r.server.children(recursive=True), _cgroup_parents(r.server.pid)


@LANED
def test_eof_with_twenty_lane_calls_in_flight_leaves_nothing_behind(ws: Path, server: str) -> None:
    r = Raw(server, ws)
    try:
        descendants, parents = _in_flight(r, 20)
        assert r.proc.stdin is not None
        r.proc.stdin.close()
        assert r.proc.wait(60) == 0
        got = []
        with contextlib.suppress(TimeoutError, AssertionError):
            while True:
                got.append(r.recv(5))
        # each call ends with an error (the SDK's "Connection closed") or not at all, never twice
        ids = [m["id"] for m in got]
        assert len(ids) == len(set(ids)), got
        assert set(ids) <= set(range(20)), got
        assert all("error" in m for m in got), got
        _assert_nothing_left(r, descendants, parents)
    finally:
        r.end()


@LANED
def test_sigterm_with_twenty_lane_calls_in_flight_leaves_nothing_behind(ws: Path, server: str) -> None:
    r = Raw(server, ws)
    try:
        descendants, parents = _in_flight(r, 20)
        r.proc.send_signal(signal.SIGTERM)
        assert r.proc.wait(60) == 0
        assert r.proc.stdin is not None
        r.proc.stdin.close()
        _assert_nothing_left(r, descendants, parents)
    finally:
        r.end()


def _cancel(rid: Any) -> bytes:
    return line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}})


@LANED
def test_calls_cancelled_as_soon_as_sent_leave_no_sandbox_and_get_no_reply(ws: Path, server: str) -> None:
    # Each call and its cancel in two writes back to back: on asyncio the call is dispatched by the stdin
    # readiness callback, the cancel by the receive loop, so the cancel may find the call queued for a kept
    # worker that has not started it yet, starting its sandbox, or running it.
    with raw(server, ws) as r:
        for i in range(12):
            r.write(line(run(i, "/bin/sleep", "300")))
            r.write(_cancel(i))
        deadline = time.monotonic() + 30
        while any(_has_child(p) for p in inits(r.server)):
            assert time.monotonic() < deadline, "a cancelled call's sandbox still runs"
            time.sleep(0.05)
        reply = r.ask(line(run("after", "/bin/echo", "on")))
        assert reply["id"] == "after", reply  # nothing came for the cancelled ids
        assert reply["result"]["structuredContent"]["stdout"] == "on\n"
        r.quiet()


@LANED
def test_twenty_calls_cancelled_at_once_then_twenty_more_all_answered(ws: Path, server: str) -> None:
    with raw(server, ws) as r:
        r.write(b"".join(line(run(i, "/bin/sleep", "300")) for i in range(20)))
        sandboxes = _wait_sandboxes(r.server, 20)
        r.write(b"".join(_cancel(i) for i in range(20)))
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) or _occupied(c) for p, c in sandboxes.items()):
            assert time.monotonic() < deadline, "a cancelled call's sandbox is still there"
            time.sleep(0.05)
        r.quiet()
        # the lane's kept workers, every one of them cancelled mid-call, serve the next calls
        r.write(b"".join(line(run(100 + i, "/bin/echo", str(i))) for i in range(20)))
        got = {m["id"]: m["result"]["structuredContent"]["stdout"] for m in r.replies(20)}
        assert got == {100 + i: f"{i}\n" for i in range(20)}
        r.quiet()


@LANED
def test_more_calls_at_once_than_kept_workers_and_sandbox_slots_are_all_answered(
    ws: Path, server: str
) -> None:
    # IDLE_WORKERS (32) tasks are kept; max_concurrency (32) sandboxes run at once, the rest wait their turn.
    with raw(server, ws) as r:
        for rnd in range(3):
            r.write(b"".join(line(run(f"{rnd}-{i}", "/bin/echo", str(i))) for i in range(48)))
            got = {m["id"]: m["result"]["structuredContent"]["stdout"] for m in r.replies(48, timeout=120)}
            assert got == {f"{rnd}-{i}": f"{i}\n" for i in range(48)}
        r.quiet()


@LANED
def test_a_line_of_exactly_the_bound_is_read_and_one_byte_more_is_refused(ws: Path, server: str) -> None:
    bound = 4 * 1024 * 1024

    def padded(rid: int, size: int) -> bytes:
        head = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",' % rid
        head += b'"params":{"name":"list_commands","arguments":{},"pad":"'
        body = head + b"p" * (size - len(head) - 3) + b'"}}'
        assert len(body) == size
        return body + b"\n"

    with raw(server, ws) as r:
        at = r.ask(padded(1, bound))
        assert at["id"] == 1, at
        assert "result" in at, at
        over = r.ask(padded(2, bound + 1))
        assert (over["id"], over["error"]["code"]) == (None, -32700)
        assert r.ask(line(run(3, "/bin/echo", "on")))["result"]["structuredContent"]["stdout"] == "on\n"


# ---------------------------------------------------------------------------------------------------------
# The SDK's own client: what a lane call answers over stdio is what the same call answers over HTTP.

BAD_ARGUMENTS: list[dict[str, Any]] = [
    {"command": "/bin/echo"},
    {"command": []},
    {"command": [1, 2]},
    {"command": [["/bin/echo"]]},
    {"command": ["/bin/true"], "shell": "true"},
    {},
    {"command": ["/bin/true"], "timeout": -1},
    {"command": ["/bin/true"], "timeout": 1e300},
    {"command": ["/bin/true"], "timeout": "5"},
    {"command": ["/bin/true"], "nope": 1},
    {"command": ["/bin/cat"], "input": {"a": 1}},
    {"command": ["/bin/echo", "a\u0000b"]},
    {"command": ["/bin/echo", "x" * (200 * 1024)]},
]


async def _sdk_answers(transport: str, ws: Path) -> list[Any]:
    out: list[Any] = []
    async with connect(transport, ws) as (client, _):
        for args in BAD_ARGUMENTS:
            try:
                result = await client.call_tool("run_command", args)
            except MCPError as err:
                out.append(("protocol error", err.error.code, err.error.message))
            else:
                dumped = _normalized(
                    {"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
                )
                out.append(("result", dumped["result"]))
    return out


@pytest.mark.anyio
async def test_invalid_arguments_over_stdio_are_answered_as_over_http(ws: Path) -> None:
    http = await _sdk_answers("http", ws)
    stdio = await _sdk_answers("stdio", ws)
    diff = [(args, h, s) for args, h, s in zip(BAD_ARGUMENTS, http, stdio, strict=True) if h != s]
    assert not diff
    assert http[0][0] == "result"
    assert http[0][1]["isError"] is True
    assert http[-1][:2] == ("protocol error", -32602)


@LANED
def test_calls_and_eof_in_one_write_leave_nothing_behind(ws: Path, server: str) -> None:
    # The last calls come with the end of stdin: some are dispatched, some may be read after the end.
    r = Raw(server, ws)
    try:
        r.write(line(run("first", "/bin/sleep", "300")))
        _wait_sandboxes(r.server, 1)
        descendants, parents = r.server.children(recursive=True), _cgroup_parents(r.server.pid)
        assert r.proc.stdin is not None
        r.proc.stdin.write(b"".join(line(run(i, "/bin/sh", "-c", "sleep 300")) for i in range(10)))
        r.proc.stdin.close()
        assert r.proc.wait(60) == 0
        got = []
        with contextlib.suppress(TimeoutError, AssertionError):
            while True:
                got.append(r.recv(5))
        ids = [m["id"] for m in got]
        assert len(ids) == len(set(ids)), got
        assert set(ids) <= {"first", *range(10)}, got
        _assert_nothing_left(r, descendants, parents)
    finally:
        r.end()


@LANED
def test_a_client_on_a_socketpair_is_served_and_its_shutdown_ends_the_server(ws: Path, server: str) -> None:
    # Some clients give a server sockets for stdin and stdout (libuv's `pipe` stdio is a socketpair), not
    # pipes: the lane's reads, readiness callbacks and writes must serve them alike.
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [*LAUNCH[server], "--workdir", str(ws / "work")],
        cwd=ROOT,
        stdin=theirs.fileno(),
        stdout=theirs.fileno(),
        stderr=subprocess.DEVNULL,
    )
    theirs.close()
    ours.settimeout(60)
    buf = b""

    def recv() -> dict[str, Any]:
        nonlocal buf
        while b"\n" not in buf:
            chunk = ours.recv(1 << 20)
            assert chunk, "the server closed its socket"
            buf += chunk
        one, _, buf = buf.partition(b"\n")
        return dict(json.loads(one))

    try:
        ours.sendall(line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}))
        assert "result" in recv()
        ours.sendall(line({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        ours.sendall(b"".join(line(run(i, "/bin/echo", str(i))) for i in range(10)))
        got = {m["id"]: m["result"]["structuredContent"]["stdout"] for m in (recv() for _ in range(10))}
        assert got == {i: f"{i}\n" for i in range(10)}
        ours.sendall(line(run("slow", "/bin/sleep", "300")))
        sandboxes = _wait_sandboxes(psutil.Process(proc.pid), 1)
        ours.sendall(_cancel("slow"))
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) for p in sandboxes):
            assert time.monotonic() < deadline, "the cancelled call's sandbox still runs"
            time.sleep(0.05)
        ours.sendall(line(run("after", "/bin/echo", "on")))
        assert recv()["id"] == "after"
        ours.shutdown(socket.SHUT_WR)  # the end of the server's stdin
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_with_lane_calls_in_flight_leave_nothing_behind(ws: Path, sig: int) -> None:
    r = Raw("lane", ws)
    try:
        descendants, parents = _in_flight(r, 8)
        r.proc.send_signal(sig)
        assert r.proc.wait(60) == 0
        assert r.proc.stdin is not None
        r.proc.stdin.close()
        _assert_nothing_left(r, descendants, parents)
    finally:
        r.end()


def test_a_tools_call_notification_over_http_runs_nothing(ws: Path) -> None:
    import urllib.request

    from tests.e2e.test_mcp import http_server

    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    def post(url: str, body: dict[str, Any], extra: dict[str, str]) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(url, json.dumps(body).encode(), {**headers, **extra}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}

    with http_server(ws) as (url, _):
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}
        status, got = post(url, init, {})
        assert status == 200
        session = {"mcp-session-id": got["mcp-session-id"]}
        assert post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)[0] == 202
        notification = {k: v for k, v in run(0, "/bin/touch", "n").items() if k != "id"}
        assert post(url, notification, session)[0] == 202
        assert not _appears(ws / "work" / "n", 5)


def _prompted(kind: str, ws: Path) -> list[Any]:
    """A lane call that asks the user (a `prompt` rule: the tool reads the request context, which the lane
    makes only then) cancelled while the question waits, then the question answered late: what comes."""
    from tests.e2e.test_mcp import PROMPT_RULES

    rules = ws / "rules.toml"
    rules.write_text(PROMPT_RULES)
    seen: list[Any] = []
    with raw(kind, ws, "--rules", str(rules), capabilities={"elicitation": {}}) as r:
        r.write(line(run(1, "touch", f"asked-{kind}")))
        ask = r.recv(30)
        assert ask["method"] == "elicitation/create", ask
        seen.append(("asked", ask["params"]["message"].replace(kind, "K")))
        r.write(_cancel(1))
        with contextlib.suppress(TimeoutError):
            while True:
                m = r.recv(1.5)
                seen.append(
                    ("then", m.get("method"), m.get("params", {}).get("requestId") == ask["id"], m.get("id"))
                )
        r.write(line({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept", "content": {}}}))
        reply = r.ask(line(run(2, "/bin/echo", "on")))
        seen.append(("next", reply["id"], reply["result"]["structuredContent"]["stdout"]))
        r.quiet()
    seen.append(("ran", (ws / "work" / f"asked-{kind}").exists()))
    return seen


def test_a_call_cancelled_while_it_asks_the_user_acts_as_on_the_sdks_path(ws: Path) -> None:
    want = _prompted("sdk", ws)
    assert want[-1] == ("ran", False)
    assert want[-2] == ("next", 2, "on\n")
    assert ("then", "notifications/cancelled", True, None) in want  # the question is withdrawn
    assert _prompted("lane", ws) == want
    assert _prompted("trio", ws) == want


def _handshake_in_one_write(kind: str, ws: Path) -> list[Any]:
    """`initialize`, a call, `notifications/initialized`, a call, and a call with the same id as one in flight
    as a string, all in one write (a client that waits for nothing): the replies, by id."""
    with raw(kind, ws, handshake=False) as r:
        r.write(
            line({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
            + line(run(1, "/bin/echo", "before initialized"))
            + line({"jsonrpc": "2.0", "method": "notifications/initialized"})
            + line(run(2, "/bin/sh", "-c", "sleep 0.5; echo two"))
            + line(run("2", "/bin/echo", "string two"))
        )
        got = sorted((_normalized(m) for m in r.replies(4)), key=lambda m: json.dumps(m["id"]))
        r.quiet()
        for m in got:
            if m["id"] == 0:
                m["result"] = "*"
        return got


def test_a_handshake_and_calls_in_one_write_are_answered_as_on_the_sdks_path(ws: Path) -> None:
    want = _handshake_in_one_write("sdk", ws)
    outs = {json.dumps(m["id"]): m["result"]["structuredContent"]["stdout"] for m in want if m["id"] != 0}
    assert outs == {"1": "before initialized\n", "2": "two\n", '"2"': "string two\n"}
    assert _handshake_in_one_write("lane", ws) == want
    assert _handshake_in_one_write("trio", ws) == want


def _cancel_a_duplicate(kind: str, ws: Path) -> tuple[int, list[Any]]:
    """Two calls in flight under id 5, then `notifications/cancelled` for 5: the sandboxes still running
    afterwards, and what came back."""
    with raw(kind, ws) as r:
        r.write(line(run(5, "/bin/sleep", "300")) + line(run(5, "/bin/sh", "-c", "sleep 300")))
        _wait_sandboxes(r.server, 2)
        r.write(_cancel(5))
        time.sleep(2)
        running = sum(1 for p in inits(r.server) if _has_child(p))
        got: list[Any] = []
        with contextlib.suppress(TimeoutError):
            got.append(r.recv(0.5))
        return running, got


def test_cancelling_a_duplicated_id_acts_as_on_the_sdks_path(ws: Path) -> None:
    want = _cancel_a_duplicate("sdk", ws)
    assert want[0] in (0, 1), want
    assert want[1] == [], want
    assert _cancel_a_duplicate("lane", ws) == want
    assert _cancel_a_duplicate("trio", ws) == want
