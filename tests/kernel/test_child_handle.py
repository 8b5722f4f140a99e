"""The child handle of DESIGN.md's API sketch (`sup.start(...)`: pid, stdout stream, stats(), kill()), used as
the sketch uses it, on a real sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import profiles
from supervisor import ChildStats, Supervisor

pytestmark = pytest.mark.kernel

HOLD = "import sys, time; x = bytearray(48 << 20); print('ready', flush=True); time.sleep(60)"


async def test_stats_is_the_trees_usage_now(sup: Supervisor, workspace: Path) -> None:
    policy = profiles.workspace_write(str(workspace), memory="512M", pids=64, timeout=60)
    child = await sup.start(["/usr/bin/python3", "-c", HOLD], policy=policy)
    assert child.pid > 0
    assert child.stdout is not None
    line = b""
    while not line.endswith(b"\n"):  # a pipe may hand the line over in parts
        line += await child.stdout.receive()
    assert line == b"ready\n"
    stats = await child.stats()  # at once: no periodic sample needs to have been taken
    assert isinstance(stats, ChildStats)
    assert stats.memory_bytes is not None
    assert stats.memory_bytes >= 48 << 20
    assert stats.pids is not None
    assert stats.pids >= 2  # the sandbox's init and the command
    assert stats.cpu_seconds is not None
    assert stats.cpu_seconds > 0
    child.kill()
    result = await child.wait()
    assert result.signal == 9
    assert await child.stats() is child.last_stats  # exited: the last sample, not a read of a gone tree


async def test_peak_memory_is_never_below_the_memory_that_got_it_killed(workspace: Path) -> None:
    # Without a cgroup the limit is enforced by sampling and the whole tree is killed: only the init's own
    # rusage was left, so peak_memory_bytes said a few MB for a command killed at the limit.
    hog = "import time; x = bytearray(160 << 20); time.sleep(60)"
    policy = profiles.workspace_write(str(workspace), memory="64M", best_effort=True, timeout=60)
    async with Supervisor(cgroups=False, prefork=0) as sup:
        result = await sup.run(["/usr/bin/python3", "-c", hog], policy=policy)
    assert result.violation is not None
    assert result.violation.kind == "memory"
    assert result.exit_code == 137
    assert result.peak_memory_bytes >= result.violation.observed > 64 << 20


async def test_cpu_s_is_never_below_the_cpu_time_that_got_it_killed(workspace: Path) -> None:
    policy = profiles.workspace_write(str(workspace), cpu_time=1, best_effort=True, timeout=60)
    async with Supervisor(cgroups=False, prefork=0) as sup:
        result = await sup.run(["/bin/sh", "-c", "while :; do :; done"], policy=policy)
    assert result.violation is not None
    assert result.violation.kind == "cpu_time"
    assert result.cpu_s >= result.violation.observed >= 1
