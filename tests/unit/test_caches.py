"""Bounded caches (issue 13 item 3): what the supervisor tells the fork server to forget, what the fork
server drops, and the compile parts shared by policies that differ only in their paths."""

from __future__ import annotations

import errno
import marshal
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from policies import SyscallPolicy, profiles
from supervisor._plan import SharedParts, compile_policy
from supervisor.forkserver.client import ForkServer
from supervisor.forkserver.netpool import NetPool
from supervisor.forkserver.server import Server
from supervisor.sandbox.probe import Feature, KernelCaps

Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def _sent(fs: ForkServer, a: socket.socket, b: socket.socket, policy_id: int) -> dict[str, object]:
    fs._send(a, {"cwd": "/"}, policy_id, {"p": policy_id}, [])
    msg = marshal.loads(b.recv(1 << 16))
    assert isinstance(msg, dict)
    return msg


def test_the_fork_server_is_told_to_forget_evicted_policies(pair: Pair) -> None:
    a, b = pair
    fs = ForkServer()
    fs.live = {1}
    assert _sent(fs, a, b, 1)["policy"] == {"p": 1}  # first request of a policy: sent with it
    assert "policy" not in _sent(fs, a, b, 1)  # then kept there
    fs.live.discard(1)
    fs.forget(1)
    msg = _sent(fs, a, b, 2)
    assert msg["forget"] == [1]  # told with the next request that leaves, once
    assert "forget" not in _sent(fs, a, b, 2)
    fs.forget(7)  # never sent: nothing to forget
    assert "forget" not in _sent(fs, a, b, 2)


def test_a_policy_no_longer_kept_is_sent_once(pair: Pair) -> None:
    """A pre-fork build still in flight for an evicted policy must not make the fork server keep it again."""
    a, b = pair
    fs = ForkServer()
    fs.live = set()
    for _ in range(2):
        msg = _sent(fs, a, b, 3)
        assert msg["policy"] == {"p": 3}
        assert msg["once"] is True
    assert not fs._sent_policies


def test_a_forget_that_could_not_be_sent_goes_with_the_next(pair: Pair) -> None:
    a, b = pair
    a.setblocking(False)
    fs = ForkServer()
    fs.live = {1, 2}
    _sent(fs, a, b, 1)
    fs.forget(1)
    big = {"x": b"\0" * (8 << 20)}
    try:  # EMSGSIZE or a full buffer: nothing left
        fs._send(a, {"cwd": "/"}, 2, big, [])
    except OSError as err:
        assert err.errno in (errno.EMSGSIZE, errno.EAGAIN, errno.ENOBUFS)  # noqa: PT017
    else:
        raise AssertionError("an 8 MiB message was sent")
    assert _sent(fs, a, b, 2)["forget"] == [1]


def test_the_fork_server_drops_everything_of_a_forgotten_policy() -> None:
    server = Server(-1)
    try:
        server._policy({"policy_id": 5, "policy": {"ns": {}}})
        server._policy({"policy_id": 6, "policy": {"ns": {}}})
        for pid in (5, 6):
            server.cache._head[pid] = b"h"  # type: ignore[assignment]
            server.cache._lockdown[pid] = b"l"  # type: ignore[assignment]
            server.cache._views[(pid, "/w", False)] = ((), b"v", ())  # type: ignore[assignment]
        server.forget(5)
        assert list(server.policies) == [6]
        assert list(server.cache._head) == [6]
        assert list(server.cache._lockdown) == [6]
        assert list(server.cache._views) == [(6, "/w", False)]
    finally:
        server.netpool = NetPool()


def _fds(n: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        r, w = os.pipe()
        out.append((r, w))
    return out


def test_idle_network_namespaces_are_bounded_and_leave_no_empty_keys() -> None:
    pool = NetPool()
    pool.MAX_IDLE = 4
    entries = _fds(6)
    try:
        for i, entry in enumerate(entries):
            pool._keep((i, f"/w{i}"), entry)
        # The oldest keys' namespaces went (closed), not the newest: a workdir used once must not keep
        # the pool from the next ones.
        assert list(pool._idle) == [(2, "/w2"), (3, "/w3"), (4, "/w4"), (5, "/w5")]
        assert pool._n_idle == 4
        for r, _w in entries[:2]:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(r)
        pool.forget(3)
        assert (3, "/w3") not in pool._idle
        assert pool._n_idle == 3
    finally:
        for key in list(pool._idle):
            pool.forget(key[0])
    assert pool._n_idle == 0


def test_policies_differing_only_in_workdir_share_their_seccomp_filter(tmp_path: Path) -> None:
    caps = KernelCaps(
        landlock_abi=6,
        landlock=Feature(True, 0),
        seccomp=Feature(True, 0),
        namespaces={n: Feature(True, 0) for n in ("user", "pid", "net", "mount", "ipc", "uts", "cgroup")},
    )
    pytest.importorskip("pyseccomp")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa, pb = profiles.workspace_write(tmp_path / "a"), profiles.workspace_write(tmp_path / "b")
    shared = SharedParts()
    ca, cb = compile_policy(pa, caps, shared), compile_policy(pb, caps, shared)
    assert ca.payload["seccomp"] is cb.payload["seccomp"]
    assert ca.payload["mounts"] != cb.payload["mounts"]  # the paths' parts are each policy's own
    # Sound: the shared filter is what each policy compiles to alone.
    assert compile_policy(pb, caps).payload == cb.payload
    # A different syscall policy is not served the shared one.
    pc = replace(pa, syscalls=SyscallPolicy(deny=("getpid",)))
    other = compile_policy(pc, caps, shared)
    assert other.payload["seccomp"] != ca.payload["seccomp"]
    assert other.payload["seccomp"] == compile_policy(pc, caps).payload["seccomp"]
    # Nor is one whose socket families differ (the filter's socket rules read them).
    pd = replace(pa, network=replace(pa.network, families=("vsock",)))
    vsock = compile_policy(pd, caps, shared)
    assert vsock.payload["seccomp"] != ca.payload["seccomp"]
    assert vsock.payload["seccomp"] == compile_policy(pd, caps).payload["seccomp"]
