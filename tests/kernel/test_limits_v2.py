"""The limit tests of test_limits.py (and the supervisor-death cleanup of test_supervisor_death.py) under a
pure cgroup v2 hierarchy: memory.max + memory.oom.group, pids.max, cpu.max, cgroup.kill, stale cleanup.

Run them inside ../shared/v2vm (one CPU, forks ~14 ms: storms are small, timings loose):

    ../shared/v2vm/run-in-v2-vm.sh --timeout 600 -C /work/main /work/main/.venv/bin/python -m pytest -q \\
        -p no:cacheprovider -m cgroup_v2 tests/kernel

On a host whose memory, cpu and pids controllers are not on cgroup v2 (such as the hybrid development
machines) every test skips, saying why, from the project's own discovery.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from supervisor import Supervisor
from supervisor.sandbox.cgroups import discover
from tests.kernel import test_limits as limits
from tests.kernel import test_supervisor_death as death
from tests.kernel.conftest import SCRATCH

_LAYOUT = discover()
_NOT_V2 = [c for c in ("memory", "cpu", "pids") if _LAYOUT.version(c) != 2]

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.cgroup_v2,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v2 limit tests need root"),
    pytest.mark.skipif(
        bool(_NOT_V2),
        reason="memory/cpu/pids are not on cgroup v2 here ("
        + "; ".join(
            f"{c} on cgroup v{_LAYOUT.version(c)}" if _LAYOUT.version(c) else f"{c}: {_LAYOUT.missing.get(c)}"
            for c in _NOT_V2
        )
        + f"; layout {_LAYOUT.mode}); run inside ../shared/v2vm",
    ),
]

MiB = limits.MiB


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Path]:
    """A workspace outside /tmp where the host tree is writable, else (the VM mounts it read-only) under the
    guest's private /tmp."""
    try:
        SCRATCH.mkdir(mode=0o755, exist_ok=True)
        d = SCRATCH / f"v2-{uuid.uuid4().hex[:10]}"
        d.mkdir(mode=0o755)
    except OSError:
        d = tmp_path / "ws"
        d.mkdir(mode=0o755)
        os.chmod(tmp_path, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with Supervisor(max_concurrency=8) as s:
        assert s.cgroups is not None, "cgroups unavailable"
        assert {c: s.cgroups.controllers.get(c) for c in ("memory", "cpu", "pids")} == dict.fromkeys(
            ("memory", "cpu", "pids"), 2
        ), s.cgroups.controllers
        yield s


async def test_memory_bomb_is_oom_killed_and_reported(sup: Supervisor, ws: Path) -> None:
    # memory.oom.group: the kernel kills the whole group; memory.events says so.
    await limits.check_memory_bomb(sup, ws, cap_mib=512)


async def test_fork_storm_stops_at_pids_max(sup: Supervisor, ws: Path) -> None:
    await limits.check_fork_storm(sup, ws, limit=12, storm=60, hold=3.0)


async def test_busy_loop_is_held_to_its_cpu_quota(sup: Supervisor, ws: Path) -> None:
    await limits.check_cpu_quota(sup, ws, cpus=0.25, secs=3.0)


async def test_busy_loop_is_killed_at_its_cpu_time_limit(sup: Supervisor, ws: Path) -> None:
    await limits.check_cpu_time(sup, ws)


async def test_sleeper_is_killed_at_its_wall_time_limit(sup: Supervisor, ws: Path) -> None:
    await limits.check_wall_time(sup, ws)


async def test_kill_takes_the_whole_tree(sup: Supervisor, ws: Path) -> None:
    await limits.check_kill_tree(sup, ws)


async def test_child_cannot_raise_its_own_limits(sup: Supervisor, ws: Path) -> None:
    await limits.check_cannot_raise_own_limit(sup, ws)


async def test_children_die_with_the_supervisor_and_the_next_start_cleans_up(ws: Path) -> None:
    await death.check_supervisor_death(ws)


async def test_socket_buffers_count_in_memory_current(sup: Supervisor, ws: Path) -> None:
    # cgroup v2 charges socket buffers to memory.current by default (no tcp limit to set): never-read loopback
    # connections in the sandbox's own network namespace hit memory.max like any other memory.
    from tests.kernel import test_attack_kernel_memory as km

    result, _mem_drop, sock_growth = await km._attack(sup, ws, "tcp")
    km._held(result, "tcp")
    # Charged with the rest: memory.max is reached and the group OOM-killed (memory.oom.group).
    assert result.violation is not None, result
    assert result.violation.kind == "memory", result
    assert result.exit_code == 137, result
    assert sock_growth <= km.LIMIT + 16 * MiB, (sock_growth >> 20, result)
