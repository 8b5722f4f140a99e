"""The engine under faults (issue 13): fd numbers past select()'s 1024, fds dropped in flight under a low
RLIMIT_NOFILE, a fork server that is killed or stopped. Each test checks from outside: no zombie child of
this process, no sandbox init left, every call either succeeded or raised a CorralError."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel


def children_of(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, comm) of every child of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append((int(entry), fields[0], comm))
    return out


def zombies() -> list[int]:
    return [pid for pid, state, _comm in children_of(os.getpid()) if state == "Z"]


async def no_zombies_left(within: float = 5.0) -> list[int]:
    """This process's zombie children once none is left or `within` seconds have passed (an init is reaped a
    moment after its Result)."""
    with anyio.move_on_after(within):
        while zombies():  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.01)
    return zombies()


@contextlib.contextmanager
def high_fd_numbers(above: int = 1100) -> Iterator[None]:
    """Every fd opened from here on numbers more than `above`: the soft RLIMIT_NOFILE is lifted and the
    numbers below are taken by copies of /dev/null."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < above + 256:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) is below {above + 256}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, above + 256), hard))
    dummies = []
    base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            fd = os.dup(base)
            dummies.append(fd)
            if fd >= above:
                break
        yield
    finally:
        for fd in dummies:
            os.close(fd)
        os.close(base)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ----------------------------------------------------------------------------------------------------------
# 1. No select() ceiling.


async def test_fd_numbers_past_1024_serve_every_path(workspace: Path) -> None:
    """With the supervisor's new fds all numbered past 1024 (as with ~130 live children), several policies,
    each run often enough to be served by pre-forked sandboxes, all succeed, and no sandbox is left a
    zombie. (select() raised ValueError on the pre-forked path's pidfd and leaked the sandbox.)"""
    policies = [profiles.workspace_write(workspace, timeout=30 + i) for i in range(3)]
    policies.append(profiles.read_only(workspace))
    with high_fd_numbers():
        async with Supervisor() as sup:
            pool = sup._prefork
            assert pool is not None
            prefork_served = 0
            for pol in policies:
                for _ in range(2):  # from the second exit on, the key gets sandboxes built
                    r = await sup.run(["/bin/sh", "-c", "echo ok"], policy=pol)
                    assert (r.exit_code, r.stdout) == (0, b"ok\n"), r
                key = (sup.compile(pol).policy_id, pol.workdir)
                with anyio.fail_after(10):
                    while not pool._ready.get(key):  # noqa: ASYNC110 (no event to wait on)
                        await anyio.sleep(0.005)
                ready = {s.pid: s.pidfd for s in pool._ready[key]}
                assert min(ready.values()) > 1024
                for _ in range(2):
                    r = await sup.run(["/bin/sh", "-c", "echo ok"], policy=pol)
                    assert (r.exit_code, r.stdout) == (0, b"ok\n"), r
                    prefork_served += r.pid in ready
            assert prefork_served >= len(policies)
        assert await no_zombies_left() == []
    assert [c for c in children_of(os.getpid()) if c[2] == "corral-init"] == []
