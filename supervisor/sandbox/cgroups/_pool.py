"""Reused leaves: a leaf whose child is reaped is kept, when it is provably empty, and given to the next child
instead of an rmdir now and a mkdir then (docs/cgroups.md, "Reused leaves").

On a v1 hybrid host each leaf is a directory in three to five hierarchies; making and removing them was
about 9% of all CPU in a throughput run (cgroup_mkdir, then the kernel's deferred css_killed_work_fn and
css_free_rwork_fn with mem_cgroup_css_free, cgroup_rmdir, css_release), plus the supervisor's opens of the
leaf's sampling files and its OOM eventfd (one per leaf then). A reused leaf costs the writes of the limits
that differ (none for the same policy) on the event loop, the checks and resets below in the leaf remover's
worker thread, and the opens of its sampling files at its next child's first sample (a kept leaf holds no
fd).

A leaf is kept (`recyclable`, then `reset`) only when:
- no task is in it in any of its hierarchies and none is still exiting: pids.current reads 0 (the pids
  controller uncharges a task at its release, after it was reaped; every task of a sandbox is in the leaf
  in all its hierarchies at once, so the one count covers them all), or without the pids controller
  cgroup.procs is empty in each hierarchy. No task can enter an empty leaf but by a write to its
  cgroup.procs or tasks, which only corral (and the host's root) can make: nothing inside a sandbox can (its
  cgroup view is read-only, so it cannot make a child cgroup either). A leaf with a straggler of a killed
  child is removed as before (killed, then rmdir).
- what its child left charged to it is small (LEFTOVER_PAGES of page cache and shmem, LEFTOVER_KMEM of
  kernel objects), so that the next child's usage, peak and limit never carry what another child left.
- the counters that cannot be reset read 0: memory.oom_control oom_kill and pids.events max. A leaf whose
  child met an OOM kill or a refused fork is removed, so that no child is ever told of another's (the
  baseline of every kept leaf is 0; such leaves are rare, and their removal costs what it did before).
- it is cgroup v1. On cgroup v2, leaves are not reused: memory.peak can be reset only on kernels >= 6.12 and
  only for the fd that writes it, cpu.stat's usage cannot be reset at all, and the v2 notifiers
  (EPOLLPRI on memory.events, pids.events) would need baselines; a v2 leaf is removed as before.

Then reset, for the next child's figures to be its own: memory.max_usage_in_bytes and memory.failcnt (and
the memsw and kmem.tcp ones where they exist), and cpuacct.usage, each written 0; its sampling fds closed (a
kept leaf holds no fd; its registration with the supervisor's shared v1 OOM eventfd stays, for the next
child).
What cannot be reset and stays readable from inside (memory.stat's cumulative event counters, cpuacct.stat,
cpu.stat's throttling counts) is in docs/security.md, "Reused cgroup leaves".
Blocking cgroupfs I/O: the leaf remover's worker thread.
"""

from __future__ import annotations

import os
import resource
import threading
from typing import TYPE_CHECKING

from supervisor.sandbox.cgroups import _fs
from supervisor.sandbox.cgroups._stats import field_value

if TYPE_CHECKING:
    from supervisor.sandbox.cgroups._leaf import Leaf

#: Leaves kept per supervisor at most (beyond it, leaves are removed as before). A kept leaf costs the kernel
#: its memory cgroup (a few KiB) and the supervisor no fd (its sampling fds are closed when
#: it is kept, and opened again at the next child's first sample); still at most one leaf per FDS_PER_KEPT
#: of the soft RLIMIT_NOFILE (`size_for`), since a reused leaf's child opens five to seven, as a new one's:
#: a supervisor under `prlimit --nofile=256` keeps at most 8.
POOL_SIZE = 64
FDS_PER_KEPT = 32


def size_for(wanted: int) -> int:
    """`wanted`, bounded by this process's soft RLIMIT_NOFILE (one kept leaf per FDS_PER_KEPT fds)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(0, min(wanted, soft // FDS_PER_KEPT))


#: A leaf is kept only while the pages its last child left charged to it (memory.stat `cache` + `rss` once
#: it is empty: page cache of files it wrote or first read, shmem) are at most this, and the kernel objects
#: (memory.kmem.usage_in_bytes: dentries, inodes, slab) at most LEFTOVER_KMEM; else it is removed, so that the
#: next child's usage, peak and limit never carry what another left. (memory.usage_in_bytes is not the test:
#: it also holds the per-CPU charge batches, up to 64 pages per CPU precharged, which the next child's own
#: charges then consume.) A `/bin/true` leaves no page and 4-16 KiB of kernel objects. memory.force_empty
#: would reclaim the rest, but costs ~2.3 ms of CPU and 2-20 ms of sleeps per call here, more than the mkdir
#: and rmdir it would save.
LEFTOVER_PAGES = 128 << 10
LEFTOVER_KMEM = 512 << 10

#: Files written 0 when a leaf is kept (those the kernel lacks are skipped).
RESETS: tuple[tuple[str, str], ...] = (
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.memsw.max_usage_in_bytes"),
    ("memory", "memory.memsw.failcnt"),
    ("memory", "memory.kmem.tcp.max_usage_in_bytes"),
    ("memory", "memory.kmem.tcp.failcnt"),
    ("cpuacct", "cpuacct.usage"),
)


def _read(path: str) -> bytes:
    """A cgroup file's content, by three syscalls (open(2)'s text mode costs twice as much here). Raises
    OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def recyclable(leaf: Leaf, has_kmem: bool = True) -> str | None:
    """Why `leaf` may not be kept for another child, or None when it may (see the module's doc): empty in
    every hierarchy, nothing exiting, no child cgroup, no OOM kill or refused fork counted, little left
    charged (`has_kmem`: whether the kernel has memory.kmem.usage_in_bytes), cgroup v1. Raises OSError."""
    if any(v != 1 for v in leaf.versions.values()) or not leaf.paths:
        return "not cgroup v1"
    pids_dir = leaf.dir("pids")
    if pids_dir is None:
        for d in leaf.paths:
            if _fs.read_pids(d):
                return f"processes remain in {d}"
    else:
        # Every task of the sandbox is in the leaf in all its hierarchies at once (the init placed itself in
        # each before anything else ran; its descendants inherit them; nothing inside can move a task), so
        # the pids controller's count covers them all, and it also counts a task that exited but is not
        # reaped yet, which cgroup.procs no longer lists. (A v1 cgroup.procs read builds a pid list: ~60 us
        # per hierarchy here, against ~20 us for pids.current.)
        if _read(f"{pids_dir}/pids.current").strip() != b"0":
            return "tasks remain in it, or are still exiting (pids.current)"
        if field_value(_read(f"{pids_dir}/pids.events"), b"max ") != 0:
            return "forks were refused at pids.max"
    mem_dir = leaf.dir("memory")
    if mem_dir is not None:
        if field_value(_read(f"{mem_dir}/memory.oom_control"), b"oom_kill ") != 0:
            return "an OOM kill was counted"
        # What is charged bounds both kinds of leftover: when it is small, neither needs a closer look.
        if int(_read(f"{mem_dir}/memory.usage_in_bytes")) > LEFTOVER_PAGES:
            stat = _read(f"{mem_dir}/memory.stat")
            pages = (field_value(stat, b"cache ") or 0) + (field_value(stat, b"rss ") or 0)
            if pages > LEFTOVER_PAGES:
                return f"{pages} bytes of pages (page cache, shmem) are still charged to it"
            kmem = int(_read(f"{mem_dir}/memory.kmem.usage_in_bytes")) if has_kmem else 0
            if kmem > LEFTOVER_KMEM:
                return f"{kmem} bytes of kernel objects are still charged to it"
    return None


def reset(leaf: Leaf, has: dict[tuple[str, str], bool]) -> None:
    """Write 0 to each of RESETS the leaf has (`has`: the manager's cache of which interface files exist).
    Raises OSError."""
    for controller, file in RESETS:
        d = leaf.dir(controller)
        if d is None:
            continue
        key = (controller, file)
        if key not in has:
            has[key] = os.path.exists(f"{d}/{file}")
        if has[key]:
            _fs.write(f"{d}/{file}", "0")


class LeafPool:
    """The kept leaves of one CgroupManager, by the hierarchies they span (a leaf without the cpu or freezer
    hierarchy fits only a child that needs neither). Thread-safe: `put` runs in the leaf remover's worker
    thread, `take` on the event loop, `close` at the manager's close."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._free: dict[tuple[str, ...], list[Leaf]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Leaves kept, and leaves given to a child from the pool, so far (tests and benchmarks read them).
        self.kept = 0
        self.reused = 0

    @staticmethod
    def key_of(leaf: Leaf) -> tuple[str, ...]:
        return tuple(os.path.dirname(d) for d in leaf.paths)

    def has_room(self) -> bool:
        with self._lock:
            return not self._closed and self._count < self.size

    def put(self, leaf: Leaf) -> bool:
        """Keep `leaf`; False when the pool is full or closed (the caller removes it)."""
        with self._lock:
            if self._closed or self._count >= self.size:
                return False
            self._free.setdefault(self.key_of(leaf), []).append(leaf)
            self._count += 1
            self.kept += 1
            return True

    def take(self, key: tuple[str, ...]) -> Leaf | None:
        """A kept leaf spanning exactly the parents `key`, or None."""
        with self._lock:
            free = self._free.get(key)
            if not free:
                return None
            self._count -= 1
            self.reused += 1
            return free.pop()

    def held(self) -> list[tuple[str, ...]]:
        """The directories of each kept leaf (tests and benchmarks)."""
        with self._lock:
            return [tuple(leaf.paths) for free in self._free.values() for leaf in free]

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        """Keep nothing from now on (the manager removes the kept leaves with every other)."""
        with self._lock:
            self._closed = True
            self._free.clear()
            self._count = 0
