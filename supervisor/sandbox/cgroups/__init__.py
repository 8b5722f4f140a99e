"""cgroups: one leaf cgroup per child, with kernel-enforced memory, cpu and pids limits, sampled
through persistent fds, killed as a whole group, removed after the child is reaped. Direct cgroupfs
I/O on cgroup v2, v1 and hybrid hosts (see docs/cgroups.md).

Parent-side only and synchronous: the supervisor calls it off the event loop. The sandbox init places
itself, writing 0 into each of `Leaf.placement_files` before any other step, so the command never runs
an instruction outside its cgroup.
"""

from supervisor.sandbox.cgroups._layout import (
    CONTROLLERS,
    CgroupLayout,
    Hierarchy,
    discover,
    parse_mountinfo,
    parse_proc_cgroup,
)
from supervisor.sandbox.cgroups._manager import (
    CPU_PERIOD_US,
    CgroupManager,
    CgroupStats,
    Leaf,
    parse_stats,
)

__all__ = [
    "CONTROLLERS",
    "CPU_PERIOD_US",
    "CgroupLayout",
    "CgroupManager",
    "CgroupStats",
    "Hierarchy",
    "Leaf",
    "discover",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "parse_stats",
]
