"""Fixtures for tests that run real sandboxed children on this kernel.

`sup` is a running Supervisor; `workspace` a fresh project directory that is NOT under /tmp (children get a
private /tmp, so a workspace there would exercise the re-bind path only; see test_mounts for that case).
`canary` files and processes let attack tests check effects from outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from supervisor import Supervisor
from tests.kernel.preforked import always_preforked

SCRATCH = Path("/var/tmp/corral-tests")


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with Supervisor(max_concurrency=16) as s:
        if os.environ.get("CORRAL_TEST_PREFORKED") == "1":
            # Every command in a sandbox confined ahead of it (see Makefile: the attack suites run twice).
            always_preforked(s)
        yield s


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A writable project root outside /tmp, world-traversable (the unprivileged tests use it too)."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    d = SCRATCH / f"ws-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host directory the sandbox may read but must never write, with a canary file in it."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"host-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    (d / "canary.txt").write_text("host canary\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def proc_state(pid: int) -> str | None:
    """The /proc state letter of host process `pid` (R, S, D, Z, ...), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2]


async def readline(stream: ByteReceiveStream) -> bytes:
    """One line from a child's stdout (an unbuffered child may write it in pieces), within 5 s."""
    line = b""
    with anyio.fail_after(5):
        while not line.endswith(b"\n"):
            line += await stream.receive()
    return line


def pid_exists(pid: int) -> bool:
    """Whether `pid` exists on the host (a zombie counts: it exists until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accept_all(listener: socket.socket) -> int:
    """How many connections wait in `listener`'s queue (non-blocking accept until EAGAIN). Connections
    a child made and closed again are still queued, so this sees every completed handshake."""
    listener.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


@contextlib.contextmanager
def canary_process() -> Iterator[subprocess.Popen[bytes]]:
    """A host process the sandbox must not be able to touch. Killed (by its own pid) at the end."""
    proc = subprocess.Popen(["/bin/sleep", "60"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, not yet reaped: the pid is still ours
        proc.wait(timeout=10)


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory listing with each file's hash: 'unchanged' checks."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()
