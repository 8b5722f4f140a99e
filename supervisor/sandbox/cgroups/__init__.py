"""cgroups: one leaf cgroup per child, with kernel-enforced memory, cpu and pids limits, sampled
through persistent fds, killed as a whole group, removed after the child is reaped. Direct cgroupfs
I/O on cgroup v2, v1 and hybrid hosts (see docs/cgroups.md).

  _layout.py   layout discovery: which hierarchies are mounted where, and this process's cgroup in each
  _manager.py  corral's parent cgroups (made, locked, swept of dead supervisors' ones, removed) and the
               leaves' registry (CgroupManager)
  _leaf.py     one child's leaf: its limits, its kill and removal (Leaf)
  _pool.py     reused leaves: a reaped child's leaf, provably empty, kept for the next child (LeafPool)
  _stats.py    reading a leaf's usage (LeafSampler, which Leaf is) and the parsers of the files' formats
  _fs.py       the cgroupfs I/O they share: OSError -> SandboxSetupError in one place, locks, subtree kill
  _notify.py   event counters by kernel notification (kernfs EPOLLPRI, v1 OOM eventfds; one epoll for
               all leaves)

Parent-side only and synchronous. The sandbox init places itself, writing 0 into each of
`Leaf.placement_files` before any other step, so the command never runs an instruction outside its
cgroup.

Which calls may run on the event loop, and why (the one place that says so). Every path touched here is
corral's own, in cgroupfs: no sandbox can write a cgroup directory or file of corral's (its own cgroup
namespace and read-only /sys/fs/cgroup view), so no call can be made slow or sent elsewhere by a sandbox.
What decides is whether a call can wait:
  on the loop   CgroupManager.create_leaf (a few mkdirs and writes, ~0.1 ms: a worker-thread hop costs
                the loop more; a kept leaf: only the limit writes that differ), Leaf.require,
                Leaf.placement_files/paths/enforced (attributes),
                Leaf.stats and Leaf.events (pread(2)s on fds already open; the supervisor takes a child's
                final sample on the loop, the sampler batches the others in a worker thread)
  off the loop  CgroupManager.open and close (stale sweeps, kills, rmdir retries: seconds), Leaf.kill
                (waits for the group to empty), Leaf.release (CgroupManager.recycle: checks, resets, or
                removal), Leaf.remove and remove_reaped (rmdir retried for up to 2 s while killed tasks
                exit), Leaf.pids; the supervisor runs them in worker threads
                (its leaf remover, `_discard_leaf`) or at its exit
"""

from supervisor.sandbox.cgroups._layout import (
    CONTROLLERS,
    CgroupLayout,
    Hierarchy,
    discover,
    parse_mountinfo,
    parse_proc_cgroup,
)
from supervisor.sandbox.cgroups._leaf import CPU_PERIOD_US, Leaf
from supervisor.sandbox.cgroups._manager import CgroupManager
from supervisor.sandbox.cgroups._stats import CgroupStats, parse_stats

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
