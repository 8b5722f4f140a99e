"""The supervisor's fds per live child (docs/cgroups.md, "Fds per child"): the pidfd, the status pipe and
the cgroup files its limits need sampled, no more. On cgroup v1 the OOM notifier is one eventfd for all
leaves (not one per child) and pids.events is held open only for a child with a pids limit; without one it is
read by path at the full samples. With 2,000 concurrent children at ten fds each, the supervisor was at this
host's hard RLIMIT_NOFILE (20,000) and refused starts (benchmarks/scale.py). Counted from outside the
supervisor's code: /proc/self/fd, grouped by what each fd is. Run on this host's cgroup version and (marker
cgroup_v2) on v2 in ../shared/v2vm."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import time
from pathlib import Path

import anyio
import pytest

import supervisor._supervisor
from policies import profiles
from supervisor import DEVNULL, Child, Supervisor
from supervisor.sandbox.cgroups import discover
from supervisor.sandbox.cgroups._notify import OOM
from supervisor.sandbox.cgroups._stats import QUIET_OOM
from tests.kernel.test_oom_events import STORM, _record_fired

pytestmark = [pytest.mark.kernel, pytest.mark.cgroup_v2]

PYTHON = "/usr/bin/python3"
MiB = 1 << 20
CHILDREN = 50
#: The bound per live memory-limited child without a pids limit: the pidfd, the status pipe, and six cgroup
#: files at most (v2: memory.current, .peak, .events, cpu.stat, pids.current, pids.events; v1:
#: memory.usage_in_bytes, .max_usage_in_bytes, .oom_control, the socket-buffer peak, cpuacct.usage,
#: pids.current). It was ten on v1 (an OOM eventfd per child, pids.events).
PER_CHILD = 8


def _need(controller: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limit tests need root (or a delegated cgroup)")
    if discover().version(controller) is None:
        pytest.skip(f"no {controller} controller here (corral's cgroup discovery)")


def _kinds() -> collections.Counter[str]:
    """This process's fds by what they are: the file name for a cgroup file, else the link's kind
    (anon_inode:[eventfd], pipe:[N], ...)."""
    out: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/sys/fs/cgroup/"):
            target = "cgroup:" + target.rsplit("/", 1)[1]
        out[re.sub(r"\[\d+\]", "[N]", target)] += 1
    return out


def _targets() -> set[str]:
    """What this process's fds link to."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, gone
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


async def _wait_armed(children: list[Child]) -> None:
    """Until the sampler has seen (and so armed) every child: a few rounds."""
    with anyio.fail_after(30):
        while any(c.last_stats is None for c in children):  # noqa: ASYNC110 (no event for a sample)
            await anyio.sleep(0.05)
    await anyio.sleep(0.3)


async def test_the_supervisor_holds_at_most_eight_fds_per_live_child(workspace: Path) -> None:
    _need("memory")
    policy = profiles.workspace_write(workspace, memory=64 * MiB)
    async with Supervisor(max_concurrency=CHILDREN + 4, prefork=0, monitor_interval=0.1) as sup:
        before = _kinds()
        children = [
            await sup.start(["/bin/sleep", "600"], policy=policy, stdout=DEVNULL, stderr=DEVNULL)
            for _ in range(CHILDREN)
        ]
        try:
            await _wait_armed(children)
            assert all(c.running for c in children)
            grown = _kinds() - before
            per_child = sum(grown.values()) / CHILDREN
            assert per_child <= PER_CHILD, (per_child, dict(grown))
            assert grown["anon_inode:[pidfd]"] == CHILDREN, dict(grown)  # counted what it should count
            # No eventfd per child: v1's OOM notifier is one for all leaves (v2 has none).
            assert grown["anon_inode:[eventfd]"] == 0, dict(grown)
            if discover().version("pids") == 1:  # no pids limit: pids.events is read by path
                assert grown["cgroup:pids.events"] == 0, dict(grown)
        finally:
            for c in children:
                c.kill()
            for c in children:
                await c.wait()


async def test_pids_events_without_a_pids_limit_is_read_by_path_at_full_samples(workspace: Path) -> None:
    """v1, no pids limit: no fd on the leaf's pids.events, its count held between full samples and read
    (by path) at a full sample such as the final one: forks refused at a pids.max that the test writes on
    corral's leaf from outside (the policy sets none) show there (STORM forks a dozen sleepers after
    1.2 s)."""
    _need("pids")
    if discover().version("pids") != 1:
        pytest.skip("cgroup v2 pids.events is held open for its EPOLLPRI notifier whatever the limits")
    policy = profiles.workspace_write(workspace, memory=64 * MiB, timeout=50)
    async with Supervisor(prefork=0, monitor_interval=0.1) as sup:
        child = await sup.start([PYTHON, "-I", "-S", "-c", STORM], policy=policy)
        try:
            leaf = child.leaf
            assert leaf is not None
            pids_dir = leaf.dir("pids")
            assert pids_dir is not None
            await anyio.Path(pids_dir, "pids.max").write_text("4")
            await _wait_armed([child])
            held = _targets()
            assert f"{pids_dir}/pids.events" not in held
            assert f"{pids_dir}/pids.current" in held  # the leaf's other pids file is held: found by this
            with anyio.fail_after(20):
                while (await anyio.Path(pids_dir, "pids.events").read_text()).split()[1] == "0":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            assert (leaf.stats(notified=True).pids_max_events or 0) == 0  # held between full samples
            assert (leaf.stats().pids_max_events or 0) >= 1  # read at a full one
            assert child.running
        finally:
            child.kill()
            await child.wait()


#: Sleeps past several sampler rounds, then one process allocates past the limit and is OOM-killed, and the
#: shell would sleep on.
BOMB = f"sleep 1.2; {PYTHON} -c 'b = b\"x\" * (400 << 20)'; sleep 60"


async def test_the_shared_oom_eventfd_ends_only_the_child_whose_counter_moved(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1: one eventfd for every leaf's OOM notifier. An OOM kill in one of several memory-limited children
    signals it; the sampler ends that child (a memory violation, well before its timeout) and no other: their
    counters did not move, so they stay unread between full rounds."""
    _need("memory")
    if discover().version("memory") != 1:
        pytest.skip("cgroup v2's OOM notifier is each leaf's memory.events fd (EPOLLPRI), not an eventfd")
    # Only the first round is a full one: the OOM kill can be seen only through the notifier.
    monkeypatch.setattr(supervisor._supervisor, "FULL_EVERY", 10_000)
    fired = _record_fired(monkeypatch, OOM)
    policy = profiles.workspace_write(workspace, memory=64 * MiB, timeout=50)
    async with Supervisor(prefork=0, monitor_interval=0.1) as sup:
        calm = [await sup.start(["/bin/sleep", "60"], policy=policy) for _ in range(3)]
        try:
            t0 = time.monotonic()
            bomb = await sup.start(["/bin/sh", "-c", BOMB], policy=policy)
            r = await bomb.wait()
            took = time.monotonic() - t0
            assert r.violation is not None, r
            assert (r.violation.kind, r.violation.limit) == ("memory", 64 * MiB)
            assert took < 20, f"the sandbox lived on {took:.1f} s after its OOM kill"
            assert fired == [bomb], fired
            for c in calm:
                assert c.running
                assert c.violation is None, c.violation
                assert c.leaf is not None
                assert c.leaf._quiet & QUIET_OOM, "a calm child's counter is to stay unread"
        finally:
            for c in calm:
                c.kill()
            for c in calm:
                await c.wait()
