"""Reused cgroup leaves (supervisor/sandbox/cgroups/_pool.py) on this host's real cgroup v1 hierarchies.

Real sandboxes through the public API take leaves a previous child used; from outside, the tests read each
child's limit files and watch the kernel enforce them (an OOM kill under a lowered limit, a bomb that
survives once the limit is lifted, forks refused at a lowered pids.max and allowed once it is lifted), and
check that no child is told another's figures (peak memory, CPU, OOM kills, refused forks). At the manager's
level: a leaf holding a process, or a task exited but not yet reaped, is removed and never kept; kept leaves
are removed at the manager's close and by the next start's stale sweep after a SIGKILLed supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from policies import ResourcePolicy, profiles
from supervisor import DEVNULL, Child, Result, Supervisor
from supervisor.sandbox.cgroups import CgroupManager, discover
from supervisor.sandbox.cgroups._pool import LEFTOVER_KMEM, LEFTOVER_PAGES
from tests.kernel import conftest_cgroups as cg
from tests.kernel.test_limits import BOMB, STORM

_LAYOUT = discover()
_V1 = [c for c in ("memory", "cpu", "cpuacct", "pids") if _LAYOUT.version(c) == 1]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroup leaf reuse tests need root"),
    pytest.mark.skipif(
        len(_V1) < 4,
        reason=f"leaves are reused on cgroup v1 only, and these tests need memory, cpu, cpuacct and pids "
        f"there; this host has {_V1} on v1 (layout {_LAYOUT.mode})",
    ),
]

PY = os.path.realpath(sys.executable)
MiB = 1 << 20
#: The most a kept leaf may hold when the next child comes: what the last one left (pages, kernel objects)
#: and the kernel's per-CPU charge batches (64 pages per CPU), far below the 32-64 MiB the tests' children
#: held.
CARRIED_MAX = LEFTOVER_PAGES + LEFTOVER_KMEM + (os.cpu_count() or 1) * 64 * 4096
#: v1's "no limit" as memory.limit_in_bytes reads it (PAGE_COUNTER_MAX pages).
UNLIMITED = 1 << 62

# Burns argv[1] seconds of CPU holding argv[2] MiB.
HEAVY = """
import sys, time
held = b"x" * (int(sys.argv[2]) << 20)
t = time.process_time()
while time.process_time() - t < float(sys.argv[1]):
    pass
"""

SLEEP = ["/bin/sleep", "30"]


@pytest.fixture
async def rsup() -> AsyncIterator[Supervisor]:
    # No pre-forked sandboxes: each child's leaf is taken at its request, so the tests know which it gets.
    async with Supervisor(max_concurrency=4, prefork=0) as s:
        yield s


async def _kept(
    sup: Supervisor, n: int = 1, paths: tuple[str, ...] | None = None, wait: float = 10.0, must: bool = True
) -> bool:
    """Wait until the supervisor's leaf remover has kept `n` leaves, or the leaf of `paths` (it runs ~20 ms
    after a child ends). Raises AssertionError after `wait` seconds if `must`, else returns False."""
    mgr = sup.cgroups
    assert mgr is not None
    for _ in range(int(wait * 100)):
        if (paths in mgr.pool.held()) if paths is not None else len(mgr.pool) >= n:
            return True
        await anyio.sleep(0.01)
    if must:
        raise AssertionError(f"kept after {wait} s: {mgr.pool.held()}, not {paths or n}")
    return False


async def _run_then_keep(sup: Supervisor, pol: object, argv: list[str], tries: int = 5) -> tuple[str, ...]:
    """Run `argv` until its leaf is kept (up to `tries` times: on a loaded machine the kernel may still hold
    more than LEFTOVER_KMEM of a child's objects charged when the remover looks, and that leaf is removed,
    as it must be), and return the kept leaf's directories. Raises AssertionError when none was kept."""
    for _ in range(tries):
        child = await sup.start(argv, policy=pol, stdout=DEVNULL, stderr=DEVNULL)  # type: ignore[arg-type]
        paths = _paths(child)
        r = await child.wait()
        assert r.exit_code == 0, r
        if await _kept(sup, paths=paths, wait=3.0, must=False):
            return paths
    raise AssertionError(f"no leaf of {tries} runs of {argv} was kept")


async def _wait(child: Child) -> tuple[Result, bytes]:
    """The child's result and everything it wrote to stdout."""
    out = b""

    async def read() -> None:
        nonlocal out
        assert child.stdout is not None
        async for data in child.stdout:
            out += data

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        r = await child.wait()
    return r, out


async def _released(child: Child) -> bool:
    """Wait until the leaf remover has dealt with the child's leaf; returns whether it was kept (else it is
    gone)."""
    leaf = child.leaf
    assert leaf is not None
    for _ in range(500):
        if leaf.handed_over:
            return True
        if not any([await anyio.Path(p).exists() for p in leaf.paths]):
            return False
        await anyio.sleep(0.01)
    raise AssertionError(f"{leaf.paths} neither kept nor removed after 5 s")


def _paths(child: Child) -> tuple[str, ...]:
    assert child.leaf is not None
    return tuple(child.leaf.paths)


def _file(child: Child, controller: str, name: str) -> str:
    assert child.leaf is not None
    d = child.leaf.dir(controller)
    assert d is not None
    return cg.read(f"{d}/{name}")


def _memory_limits(child: Child) -> list[int]:
    assert child.leaf is not None
    memsw = os.path.exists(f"{child.leaf.dir('memory')}/memory.memsw.limit_in_bytes")
    files = ["memory.limit_in_bytes", "memory.kmem.tcp.limit_in_bytes"]
    files += ["memory.memsw.limit_in_bytes"] if memsw else []
    return [int(_file(child, "memory", f)) for f in files]


async def test_a_reused_leaf_holds_exactly_each_childs_limits(rsup: Supervisor, workspace: Path) -> None:
    """64M/50 pids, then 32M/20 pids, then no limits, then cpus 0.5 and 0.2: each child's files, read from
    outside while it runs in the leaf the previous one used, hold its own policy's values."""
    pol = profiles.workspace_write(workspace, memory=64 * MiB, pids=50)
    first = await _run_then_keep(rsup, pol, ["true"])

    lower = await rsup.start(SLEEP, policy=profiles.workspace_write(workspace, memory=32 * MiB, pids=20))
    assert _paths(lower) == first
    assert _memory_limits(lower) == [32 * MiB] * len(_memory_limits(lower))
    assert _file(lower, "pids", "pids.max") == "20"
    lower.kill()
    await lower.wait()
    await _kept(rsup, paths=first)

    free = await rsup.start(SLEEP, policy=profiles.workspace_write(workspace))
    assert _paths(free) == first
    assert all(v >= UNLIMITED for v in _memory_limits(free)), _memory_limits(free)
    assert _file(free, "pids", "pids.max") == "max"
    free.kill()
    await free.wait()

    cpu_first = await _run_then_keep(rsup, profiles.workspace_write(workspace, cpus=0.5), ["true"])
    slow = await rsup.start(SLEEP, policy=profiles.workspace_write(workspace, cpus=0.2))
    assert _paths(slow) == cpu_first
    assert _file(slow, "cpu", "cpu.cfs_quota_us") == "20000"
    assert _file(slow, "cpu", "cpu.cfs_period_us") == "100000"
    slow.kill()
    await slow.wait()


async def test_the_kernel_enforces_a_lowered_then_lifted_limit_in_a_reused_leaf(
    rsup: Supervisor, workspace: Path
) -> None:
    """A 48 MiB bomb survives under 128M, is OOM-killed under 32M in the same leaf; then, in a leaf that held
    32M, a 96 MiB bomb with no limit survives. Likewise forks: 10 allowed at pids.max 10 in a leaf that held
    50, then 30 of 30 in a leaf that held 10."""
    big = profiles.workspace_write(workspace, memory=128 * MiB, timeout=60)
    first = await _run_then_keep(rsup, big, [PY, "-I", "-S", "-c", BOMB, "48"])
    tight = profiles.workspace_write(workspace, memory=32 * MiB, timeout=60)
    small = await rsup.start([PY, "-I", "-S", "-c", BOMB, "48"], policy=tight)
    assert _paths(small) == first
    r, out = await _wait(small)
    assert r.violation is not None, r
    assert r.violation.kind == "memory"
    assert b"survived" not in out
    assert r.peak_memory_bytes <= 32 * MiB + MiB, r.peak_memory_bytes

    held_32 = await _run_then_keep(rsup, profiles.workspace_write(workspace, memory=32 * MiB), ["true"])
    free = await rsup.start([PY, "-I", "-S", "-c", BOMB, "96"], policy=profiles.workspace_write(workspace))
    assert _paths(free) == held_32
    r, out = await _wait(free)
    assert r.exit_code == 0, r
    assert b"survived" in out
    assert r.peak_memory_bytes >= 96 * MiB, r.peak_memory_bytes

    first = await _run_then_keep(rsup, profiles.workspace_write(workspace, pids=50), ["true"])
    ten = profiles.workspace_write(workspace, pids=10)
    few = await rsup.start([PY, "-I", "-S", "-c", STORM, "30", "1"], policy=ten)
    assert _paths(few) == first
    r, out = await _wait(few)
    assert int(out) == 10 - 2, out  # the sandbox init and the storm itself are two of the ten
    assert r.limit_hits.get("pids", 0) >= 1, r.limit_hits

    held_10 = await _run_then_keep(rsup, profiles.workspace_write(workspace, pids=10), ["true"])
    many = await rsup.start(
        [PY, "-I", "-S", "-c", STORM, "30", "1"], policy=profiles.workspace_write(workspace)
    )
    assert _paths(many) == held_10
    r, out = await _wait(many)
    assert int(out) == 30, (r, out)


async def test_no_child_is_told_the_previous_tenants_figures(rsup: Supervisor, workspace: Path) -> None:
    """After a child that held 64 MiB and burned 0.5 s of CPU, a `true` in its leaf reports its own small peak
    and CPU. A leaf that counted an OOM kill or a refused fork is not reused: the next child of the same
    policy gets another leaf, and no OOM or pids.max hit of its own."""
    pol = profiles.workspace_write(workspace, memory=256 * MiB, timeout=60)
    for _attempt in range(3):
        heavy = await rsup.start([PY, "-I", "-S", "-c", HEAVY, "0.5", "64"], policy=pol)
        first = _paths(heavy)
        r = await heavy.wait()
        assert r.exit_code == 0, r
        assert r.peak_memory_bytes >= 64 * MiB
        assert r.cpu_s >= 0.5
        # On a loaded host the exited child's last pages may still be charged when the remover looks (freed
        # through per-CPU batches and RCU): the leaf is then removed, rightly; try again.
        if await _kept(rsup, paths=first, wait=2.0, must=False):
            break
    else:
        raise AssertionError("the heavy child's leaf was never kept")
    light = await rsup.start(["true"], policy=pol)
    assert _paths(light) == first
    r = await light.wait()
    assert r.peak_memory_bytes <= CARRIED_MAX + 4 * MiB, r.peak_memory_bytes
    assert r.cpu_s < 0.25, r.cpu_s

    tight = profiles.workspace_write(workspace, memory=32 * MiB, timeout=60)
    oom = await rsup.start([PY, "-I", "-S", "-c", BOMB, "64"], policy=tight)
    oom_paths = _paths(oom)
    r = await oom.wait()
    assert r.limit_hits.get("memory_oom", 0) >= 1, r
    assert not await _released(oom)  # removed, not kept
    after = await rsup.start(["true"], policy=tight)
    assert _paths(after) != oom_paths
    r = await after.wait()
    assert r.violation is None, r
    assert "memory_oom" not in r.limit_hits, r.limit_hits

    few = profiles.workspace_write(workspace, pids=10)
    storm = await rsup.start([PY, "-I", "-S", "-c", STORM, "30", "1"], policy=few)
    storm_paths = _paths(storm)
    r, _ = await _wait(storm)
    assert r.limit_hits.get("pids", 0) >= 1, r.limit_hits
    assert not await _released(storm)  # removed, not kept
    after = await rsup.start(["true"], policy=few)
    assert _paths(after) != storm_paths
    r = await after.wait()
    assert r.violation is None, r
    assert "pids" not in r.limit_hits, r.limit_hits


async def test_the_oom_notifier_fires_for_the_next_tenant_of_a_leaf(
    rsup: Supervisor, workspace: Path
) -> None:
    """The v1 OOM eventfd armed for one child is drained and registered again for the next: an OOM inside a
    child that keeps running is seen by notification and ends it as a memory violation, well before 30 s."""
    pol = profiles.workspace_write(workspace, memory=48 * MiB, timeout=60)
    first = await _run_then_keep(rsup, pol, ["sleep", "0.8"])  # sampled: its notifier armed
    oom = rsup._oom
    assert oom is not None
    fired = oom.fired_total
    # The bomb waits for the sampler's first round, which arms the notifier of the child it finds.
    script = f"sleep 0.6; {PY} -I -S -c '{BOMB}' 128; sleep 30"
    t0 = time.monotonic()
    child = await rsup.start(["/bin/sh", "-c", script], policy=pol)
    assert _paths(child) == first
    r = await child.wait()
    assert r.violation is not None, r
    assert r.violation.kind == "memory"
    assert time.monotonic() - t0 < 20
    assert oom.fired_total > fired


async def test_kept_leaves_are_removed_when_the_supervisor_exits(workspace: Path) -> None:
    async with Supervisor(max_concurrency=8, prefork=0) as sup:
        pol = profiles.workspace_write(workspace, memory=64 * MiB)
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(partial(sup.run, ["true"], policy=pol))
        await _kept(sup, 2)
        mgr = sup.cgroups
        assert mgr is not None
        parents = list(mgr.parents)
        assert parents
    left = [p for p in parents if await anyio.Path(p).exists()]
    assert left == []


def _fds_under(dirs: tuple[str, ...]) -> list[str]:
    """This process's open fds whose target is a file in one of `dirs`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tuple(d + "/" for d in dirs)):
                found.append(target)
    return found


async def test_a_kept_leaf_holds_no_fd(workspace: Path) -> None:
    # The supervisor's fd count must not grow with the pool: a kept leaf's sampling files and OOM eventfd are
    # closed, and its next child's Leaf opens them again.
    async with Supervisor(max_concurrency=8, prefork=0) as sup:
        pol = profiles.workspace_write(workspace, memory=64 * MiB, pids=64)
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(partial(sup.run, ["true"], policy=pol))
        await _kept(sup, 3)
        mgr = sup.cgroups
        assert mgr is not None
        kept = [d for paths in mgr.pool.held() for d in paths]
        assert kept
        assert _fds_under(tuple(kept)) == []
        # ... and its next child reads its figures from them as from a new leaf's.
        child = await sup.start(SLEEP, policy=pol, stdout=DEVNULL, stderr=DEVNULL)
        try:
            assert set(_paths(child)) <= set(kept)
            assert _fds_under(_paths(child))  # opened for the new tenant
        finally:
            child.kill()
            r = await child.wait()
        assert r.peak_memory_bytes > 0


async def test_reuse_can_be_turned_off(workspace: Path) -> None:
    async with Supervisor(max_concurrency=2, prefork=0, reuse_cgroups=False) as sup:
        pol = profiles.workspace_write(workspace, memory=64 * MiB)
        first = await sup.start(["true"], policy=pol)
        await first.wait()
        await anyio.sleep(0.2)  # the remover's turn
        second = await sup.start(["true"], policy=pol)
        await second.wait()
        assert _paths(second) != _paths(first)
        assert sup.cgroups is not None
        assert sup.cgroups.pool.kept == 0


# -- the manager's own checks ---------------------------------------------------------------------------


@pytest.fixture
def mgr() -> Iterator[CgroupManager]:
    yield from cg.manager_fixture()


def test_a_leaf_with_a_live_process_is_removed_not_kept(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("straggler", ResourcePolicy(memory=64 * MiB))
    proc = cg.gated(["/bin/sleep", "1000"])
    try:
        cg.place_and_release(leaf, proc)
        assert not leaf.release()
        assert proc.wait(timeout=10) == -signal.SIGKILL  # killed with the leaf
        assert len(mgr.pool) == 0
        assert not any(os.path.exists(p) for p in leaf.paths)
    finally:
        cg.stop(proc)


def test_a_leaf_whose_task_exited_unreaped_is_not_kept(mgr: CgroupManager) -> None:
    """A task that has exited but is not reaped yet is gone from cgroup.procs yet still counted in
    pids.current: such a leaf is not taken for empty."""
    leaf = mgr.create_leaf("zombie", ResourcePolicy(pids=10))
    proc = cg.gated(["/bin/sh", "-c", "read x"])
    try:
        cg.place_and_release(leaf, proc)
        deadline = time.monotonic() + 10
        while cg.read(f"/proc/{proc.pid}/stat").split(")")[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cg.read(f"{leaf.dir('pids')}/pids.current") == "1"  # the case this test is about
        assert not leaf.release()
        assert len(mgr.pool) == 0
    finally:
        cg.stop(proc)


def test_a_kept_leaf_starts_from_zero(mgr: CgroupManager) -> None:
    """A process held 32 MiB and burned CPU in the leaf, then was reaped: the kept leaf, taken for another
    child, reads a peak of at most CARRIED_MAX, no CPU, failcnt 0, and the new limit."""
    leaf = mgr.create_leaf("before", ResourcePolicy(memory=64 * MiB))
    proc = cg.gated([PY, "-I", "-S", "-c", "import sys; sys.stdin.readline()\n" + HEAVY, "0.3", "32"])
    try:
        cg.place_and_release(leaf, proc)
        assert proc.wait(timeout=30) == 0
        before = leaf.stats()
        assert (before.memory_peak_bytes or 0) >= 32 * MiB, before
        assert (before.cpu_seconds or 0) >= 0.3, before
        assert leaf.release()
        assert leaf.stats().cpu_seconds is None  # the finished child's Leaf reads nothing now
        nxt = mgr.create_leaf("after", ResourcePolicy(memory=16 * MiB))
        assert nxt.paths == leaf.paths
        st = nxt.stats()
        assert st.memory_peak_bytes is not None, st
        assert st.memory_peak_bytes <= CARRIED_MAX, st
        assert st.cpu_seconds == 0.0, st
        assert (st.oom_kills, st.pids_max_events, st.pids) == (0, 0, 0), st
        mem = nxt.dir("memory")
        assert cg.read(f"{mem}/memory.failcnt") == "0"
        assert int(cg.read(f"{mem}/memory.limit_in_bytes")) == 16 * MiB
    finally:
        cg.stop(proc)


KEEPER = """
import json, os, signal, subprocess, sys
sys.path.insert(0, sys.argv[2])
from policies import ResourcePolicy
from supervisor.sandbox.cgroups import CgroupManager
mgr = CgroupManager()
mgr.open(sys.argv[1])
leaf = mgr.create_leaf("k1", ResourcePolicy(memory=64 << 20))
p = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE)
for f in leaf.procs_files:
    with open(f, "w") as fh:
        fh.write(str(p.pid))
p.communicate(b"go\\n")
assert leaf.release()
print(json.dumps({"name": mgr.name, "paths": leaf.paths}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kept_leaves_of_a_killed_supervisor_are_swept_at_the_next_start() -> None:
    """A supervisor SIGKILLed with a kept leaf: the next start proves it dead by its lock and removes it."""
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([PY, "-c", KEEPER, cg.PREFIX, root], capture_output=True, timeout=60, check=False)
    assert out.returncode == -signal.SIGKILL, out
    kept = json.loads(out.stdout)
    assert all(os.path.isdir(p) for p in kept["paths"])
    mgr = CgroupManager()
    mgr.open(cg.PREFIX)
    try:
        assert kept["name"] in mgr.stale_removed
        assert not any(os.path.exists(p) for p in kept["paths"])
    finally:
        mgr.close()
