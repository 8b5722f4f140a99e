"""The fork-server boundary (supervisor/forkserver/): what the fork server's interpreter loads, and the status
record framing every sandbox init's reports go through."""

from __future__ import annotations

import ast
import marshal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.forkserver import protocol

ROOT = Path(__file__).resolve().parents[2]


def run_as_fork_server(code: str) -> str:
    """The output of `code` run as the fork server's interpreter runs (`python -I -S`, the tree's root
    first on sys.path: protocol.BOOT's prelude)."""
    prelude = protocol.BOOT.split("from supervisor.forkserver.server import main")[0]
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code, str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def test_the_fork_server_loads_only_the_stdlib_the_sandbox_modules_and_its_own() -> None:
    # What BOOT loads, short of serving: the same interpreter flags as client.ForkServer uses.
    stdout = run_as_fork_server(
        "import supervisor.forkserver.server\n"
        "tops = ('supervisor', 'policies', 'exporters')\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in tops)\n"
        "print(ours)\n"
        "print(sorted(m for m in ('anyio', 'psutil', 'sniffio', 'pyseccomp', 'typing_extensions') "
        "if m in sys.modules))\n"
    )
    ours_line, third_party = stdout.strip().splitlines()
    ours = ast.literal_eval(ours_line)  # a printed list of module names
    allowed = (
        "supervisor.sandbox",
        "supervisor.forkserver.protocol",
        "supervisor.forkserver.netpool",
        "supervisor.forkserver._recheck",  # the cached views' Recheck: stats on held fds, stdlib + sandbox
        "supervisor.forkserver._overlays",  # the views' shared overlays: stdlib + the C extension
    )
    outside = [
        m
        for m in ours
        if m not in ("supervisor", "supervisor.forkserver", "supervisor.forkserver.server")
        and not m.startswith(allowed)
    ]
    assert outside == []
    assert "supervisor.sandbox.cgroups" not in ours  # parent-side only
    assert third_party == "[]"


def _record(kind: bytes, payload: object) -> bytes:
    body = marshal.dumps(payload)
    return protocol.RECORD_HEADER.pack(kind, len(body)) + body


def test_records_split_in_order_with_what_follows_kept() -> None:
    buf = _record(protocol.EXEC, {"pid": 2}) + _record(protocol.EXIT, {"status": 0, "cpu": 0.5, "maxrss": 9})
    first = protocol.split_record(buf)
    assert first is not None
    (kind, payload), rest = first
    assert (kind, payload) == (protocol.EXEC, {"pid": 2})
    second = protocol.split_record(rest)
    assert second is not None
    assert second[0][0] == protocol.EXIT
    assert second[1] == b""
    assert protocol.split_record(buf[:-1]) is not None  # the first record is whole
    assert protocol.split_record(rest[:-1]) is None  # the second is not, yet
    assert protocol.split_record(rest[:3]) is None  # nor is its header


def test_non_utf8_strings_come_back_decoded() -> None:
    split = protocol.split_record(_record(protocol.FAILED, {"path": b"/tmp/\xff"}))
    assert split is not None
    assert split[0][1]["path"] == "/tmp/\udcff"


@pytest.mark.parametrize(
    "bad",
    [
        b"Q" + protocol.RECORD_HEADER.pack(b"Q", 0)[1:],  # unknown kind
        protocol.RECORD_HEADER.pack(protocol.EXIT, protocol.MAX_RECORD + 1),  # oversized
        protocol.RECORD_HEADER.pack(protocol.EXIT, 1) + b"\xff",  # not marshal
        _record(protocol.EXIT, [1, 2]),  # not a dict
    ],
)
def test_malformed_records_are_refused(bad: bytes) -> None:
    with pytest.raises(protocol.Malformed):
        protocol.split_record(bad)


def test_an_exit_record_is_checked_field_by_field() -> None:
    full = {"status": 9, "cpu": 1, "maxrss": 4096, "alone": True, "ended": 5, "elf": "i386"}
    assert protocol.exit_record(full) == {
        "status": 9,
        "cpu": 1.0,
        "maxrss": 4096,
        "alone": True,
        "ended": 5,
        "elf": "i386",
    }
    assert protocol.exit_record({"status": 0, "cpu": 0.0, "maxrss": 0, "alone": 1}) == {
        "status": 0,
        "cpu": 0.0,
        "maxrss": 0,
        "alone": False,  # only True is alone
    }
    assert protocol.exit_record({"status": "0", "cpu": 0.0, "maxrss": 0}) is None
    assert protocol.exit_record({"cpu": 0.0, "maxrss": 0}) is None


def test_requests_and_replies_cross_as_the_dicts_they_are() -> None:
    request: protocol.SpawnRequest = {"cwd": "/w", "policy_id": 3, "cmd": b"x", "ctty": True}
    assert protocol.decode_request(protocol.encode(request)) == request
    reply: protocol.Reply = {"pid": 7, "error": protocol.bug_failure(ValueError("x"))}
    assert protocol.decode_reply(protocol.encode(reply)) == reply
    prefork: protocol.PreforkRequest = {"op": "prefork", "cwd": "/", "cgroup_procs": [], "policy_id": 1}
    assert protocol.is_prefork(prefork)
    assert not protocol.is_prefork(request)
