"""The sampler's turns on the real kernel (supervisor/sandbox/cgroups/_stats.py, `stats(turn=True)`): in full
rounds a child under kernel-enforced limits reads one of its usage files in turn, carrying
the others. What a child's Result reports (its peak memory and CPU time) is read from every file at its exit,
exact whatever the turns skipped; the live gauges (`Child.last_stats`) catch up within one turn of every file,
and the carried peak is never above the kernel's. Checked from outside: the kernel's own peak file of the
child's cgroup, and the CPU time the command measured of itself. Run on this host's cgroup version and
(marker cgroup_v2) on v2 in ../shared/v2vm. The reader's logic on fake trees: tests/unit/test_sample_turns.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import PIPE, Supervisor

pytestmark = [pytest.mark.kernel, pytest.mark.cgroup_v2]

PYTHON = "/usr/bin/python3"
MiB = 1 << 20
SPIKE = 48 * MiB
#: 48 MiB touched and freed at once (the usage drops back between two samples, most likely), 0.3 s of CPU,
#: its own CPU time printed, then asleep for argv[1] seconds.
SCRIPT = f"""
import os, sys, time
b = bytearray({SPIKE})
for i in range(0, len(b), 4096):
    b[i] = 1
del b
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
u = os.times()
print(u.user + u.system, flush=True)
time.sleep(float(sys.argv[1]))
"""


def _kernel_peak(memory_dir: str) -> int:
    """The leaf's own high-water mark, read from outside (v2 memory.peak, v1 memory.max_usage_in_bytes)."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int(Path(memory_dir, name).read_text())
        except FileNotFoundError:
            continue
    raise AssertionError(f"no peak file in {memory_dir}")


async def test_gauges_catch_up_within_a_turn_and_never_pass_the_kernels_peak(workspace: Path) -> None:
    interval = 0.05  # a full round every 0.2 s: a turn of five files in 1 s
    async with Supervisor(monitor_interval=interval) as sup:
        policy = profiles.workspace_write(workspace, memory=256 * MiB, timeout=30)
        child = await sup.start([PYTHON, "-I", "-S", "-c", SCRIPT, "3"], policy=policy, stdout=PIPE)
        assert child.leaf is not None
        memory_dir = child.leaf.dir("memory")
        if memory_dir is None:
            pytest.skip(f"no memory cgroup: {child.leaf.missing(('memory',))}")
        assert child.stdout is not None
        line = b""
        async for data in child.stdout:
            line += data
            if b"\n" in line:
                break
        burnt = float(line)
        caught_peak = caught_cpu = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5 and (caught_peak is None or caught_cpu is None):
            s = child.last_stats
            kernel = _kernel_peak(memory_dir)
            if s is not None and s.memory_peak_bytes is not None:
                # Never above the kernel's peak (v1 adds the socket-buffer peak: none here).
                assert s.memory_peak_bytes <= kernel, (s, kernel)
                if caught_peak is None and s.memory_peak_bytes >= SPIKE:
                    caught_peak = time.monotonic() - t0
            if caught_cpu is None and s is not None and s.cpu_seconds is not None and s.cpu_seconds >= burnt:
                caught_cpu = time.monotonic() - t0
            await anyio.sleep(0.01)
        print(f"gauges caught up {caught_peak} s (peak), {caught_cpu} s (CPU) after the command said so")
        assert caught_peak is not None, "the peak gauge never showed the spike"
        assert caught_cpu is not None, "the CPU gauge never showed the CPU time"
        child.kill()
        await child.wait()


async def test_the_result_reports_the_exact_peak_and_cpu_after_turns(workspace: Path) -> None:
    """A child sampled for a second in turns, then ending: its Result has the kernel's peak (the spike,
    which the turns may have missed) and all of its CPU time, read from every file at the exit."""
    async with Supervisor(monitor_interval=0.05) as sup:
        policy = profiles.workspace_write(workspace, memory=256 * MiB, timeout=30)
        r = await sup.run([PYTHON, "-I", "-S", "-c", SCRIPT, "1"], policy=policy)
    assert r.exit_code == 0, r
    burnt = float(r.stdout)
    assert SPIKE <= r.peak_memory_bytes <= 256 * MiB, r
    assert r.cpu_s >= burnt, (r.cpu_s, burnt)


async def test_a_spike_right_before_the_exit_is_in_the_result(workspace: Path) -> None:
    """No sample can have seen it: the final sample reads the peak."""
    async with Supervisor(monitor_interval=0.05) as sup:
        policy = profiles.workspace_write(workspace, memory=256 * MiB, timeout=30)
        r = await sup.run([PYTHON, "-I", "-S", "-c", SCRIPT, "0"], policy=policy)
    assert r.exit_code == 0, r
    assert r.peak_memory_bytes >= SPIKE, r
    assert r.cpu_s >= float(r.stdout), r
