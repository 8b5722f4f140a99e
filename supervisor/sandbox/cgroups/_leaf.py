"""One child's cgroup: its directories, the limits written into them, and its end (kill, remove). Made by
CgroupManager.create_leaf; sampled through LeafSampler (supervisor/sandbox/cgroups/_stats.py)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from supervisor.sandbox.cgroups import _fs
from supervisor.sandbox.cgroups._stats import SOCKET_SLACK, LeafSampler

if TYPE_CHECKING:
    from policies import ResourcePolicy
    from supervisor.sandbox.cgroups._layout import Hierarchy

#: CFS period written with every cpu quota (100 ms, the kernel default).
CPU_PERIOD_US = 100_000
#: The kernel refuses quotas under 1 ms.
MIN_CPU_QUOTA_US = 1_000


class LeafOwner(Protocol):
    """What a leaf needs of its manager (CgroupManager): why a controller is unusable, the cache of which
    interface files the kernel has, and to be told when the leaf is gone."""

    unavailable: dict[str, str]
    interface_files: dict[tuple[str, str], bool]

    def forget(self, leaf: Leaf) -> None: ...

    def recycle(self, leaf: Leaf) -> bool: ...


@dataclass(slots=True)
class Written:
    """The limits written in a leaf's files now (None: the kernel's default, no limit), so that a leaf
    reused for another child (cgroups/_pool.py) is written only what differs. A new leaf has none."""

    memory: int | None = None  # v1 memory.limit_in_bytes (and memsw), v2 memory.max
    tcp: int | None = None  # v1 memory.kmem.tcp.limit_in_bytes
    oom_control: bool = False  # v1 memory.oom_control 0 written
    period: bool = False  # v1 cpu.cfs_period_us written
    quota: int | None = None  # v1 cpu.cfs_quota_us, v2 cpu.max
    pids: int | None = None  # pids.max


class Leaf(LeafSampler):
    """One child's cgroup (a directory per hierarchy). Made by `CgroupManager.create_leaf`.

    name:        the child id it was created for.
    procs_files: the cgroup.procs files, one per v1 hierarchy or the single v2 one (writing a pid there
                 moves that whole process); empty when cgroups are unavailable.
    placement_files: where the sandbox init writes 0 to place itself (v1 `tasks`, v2 `cgroup.procs`;
                 see __init__).
    paths:       the leaf's directories, one per hierarchy.
    enforced:    for each limit the policy sets ("memory", "swap" with memory, "cpus", "pids"):
                 whether the kernel enforces it.
    reasons:     for each limit not enforced, why.
    versions:    controller -> cgroup version serving it, for the usable controllers.
    """

    def __init__(
        self,
        manager: LeafOwner,
        name: str,
        places: list[tuple[Hierarchy, str]],
        dirs: dict[str, str],
        versions: dict[str, int],
    ) -> None:
        super().__init__(dirs, versions)
        self._manager = manager
        self.name = name
        self._places = places
        self.paths: list[str] = [d for _h, d in places]
        # `tasks` on v1 moves the calling thread without the kernel's global threadgroup lock (cgroup.procs
        # takes it, and waits out an RCU grace period for it: 8-20 ms on an idle machine); the init has one
        # thread, so its process moves. v2 has no per-thread file outside threaded subtrees.
        self.placement_files: list[str] = [
            f"{d}/tasks" if h.version == 1 else f"{d}/cgroup.procs" for h, d in places
        ]
        self.enforced: dict[str, bool] = {}
        self.reasons: dict[str, str] = {}
        self.written = Written()
        #: Set when the leaf's directories were given to another Leaf object for the next child (`hand_over`):
        #: this one then reads, kills and removes nothing.
        self._handed_over = False

    def __repr__(self) -> str:
        return f"Leaf({self.name!r}, paths={self.paths!r}, enforced={self.enforced!r})"

    @property
    def procs_files(self) -> list[str]:
        """The leaf's cgroup.procs files, one per hierarchy (writing a pid moves that whole process)."""
        return [f"{d}/cgroup.procs" for d in self.paths]

    @property
    def available(self) -> bool:
        """Whether the leaf exists in at least one hierarchy (False: cgroups unavailable, nothing
        placed)."""
        return bool(self.paths)

    def dir(self, controller: str) -> str | None:
        """The leaf's directory in the hierarchy serving `controller`, or None."""
        return self._dirs.get(controller)

    # ------------------------------------------------------------------------------------------------------
    # Limits (written by CgroupManager.create_leaf, before anything is placed in the leaf).

    def apply_limits(self, r: ResourcePolicy) -> None:
        """Write the limits `r` sets (and, in a reused leaf, lift those it no longer sets), writing only the
        files whose value differs from what the leaf holds (`written`); record in `enforced`/`reasons` which
        took effect. Raises SandboxSetupError when one cannot be written."""
        w = self.written
        # Before the fds are opened (prime): no pids limit, no fd for v1 pids.events (LeafSampler).
        self._pids_by_path = r.pids is None and self.versions.get("pids") == 1
        if r.memory is not None:
            if "memory" not in self._dirs:
                self._missing("memory", "memory")
                self._missing("swap", "memory")
            elif self.versions["memory"] == 2:
                self._memory_v2(r.memory)
            else:
                self._memory_v1(r.memory)
        elif "memory" in self._dirs and (w.memory is not None or w.tcp is not None):
            self._unlimit_memory()
        if r.cpus is not None:
            if "cpu" not in self._dirs:
                self._missing("cpus", "cpu")
            else:
                self._quota(max(MIN_CPU_QUOTA_US, round(r.cpus * CPU_PERIOD_US)))
                self.enforced["cpus"] = True
        elif "cpu" in self._dirs and w.quota is not None:
            self._quota(None)
        if r.pids is not None:
            if "pids" not in self._dirs:
                self._missing("pids", "pids")
            else:
                if w.pids != r.pids:
                    self._put("pids", "pids.max", str(r.pids))
                    w.pids = r.pids
                self.enforced["pids"] = True
        elif "pids" in self._dirs and w.pids is not None:
            self._put("pids", "pids.max", "max")
            w.pids = None

    def _quota(self, quota: int | None) -> None:
        """Write the cpu quota (None: none) unless the leaf holds it already."""
        w = self.written
        if w.quota == quota:
            return
        if self.versions["cpu"] == 2:
            self._put("cpu", "cpu.max", f"{quota if quota is not None else 'max'} {CPU_PERIOD_US}")
        else:
            if not w.period:
                self._put("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
                w.period = True
            self._put("cpu", "cpu.cfs_quota_us", str(quota if quota is not None else -1))
        w.quota = quota

    def _memory_v2(self, memory: int) -> None:
        self._put("memory", "memory.max", str(memory))
        self.written.memory = memory
        self.enforced["memory"] = True
        if self._has("memory", "memory.swap.max"):
            self._put("memory", "memory.swap.max", "0")
            self.enforced["swap"] = True
        else:
            self.enforced["swap"] = False
            self.reasons["swap"] = (
                "memory.swap.max is missing: this kernel has no swap accounting "
                "(CONFIG_MEMCG_SWAP, or swapaccount=0 on the command line); swap is not "
                "limited"
            )
        if self._has("memory", "memory.oom.group"):
            self._put("memory", "memory.oom.group", "1")
        # v2 charges socket buffers to memory.current with everything else (unless booted with
        # cgroup.memory=nosocket): memory.max holds them (tests/kernel/test_limits_v2.py).
        self.enforced["socket_memory"] = True

    def _memory_v1(self, memory: int) -> None:
        w = self.written
        memsw = self._has("memory", "memory.memsw.limit_in_bytes")
        if w.memory != memory:
            # memsw is memory+swap; equal to the memory limit means no swap. The kernel requires memsw >=
            # limit at every step: lowering writes limit_in_bytes first, raising (a reused leaf) memsw first.
            lower = w.memory is None or memory < w.memory
            if memsw and not lower:
                self._put("memory", "memory.memsw.limit_in_bytes", str(memory))
            self._put("memory", "memory.limit_in_bytes", str(memory))
            if memsw and lower:
                self._put("memory", "memory.memsw.limit_in_bytes", str(memory))
            w.memory = memory
        self.enforced["memory"] = True
        if memsw:
            self.enforced["swap"] = True
        else:
            self.enforced["swap"] = False
            self.reasons["swap"] = (
                "memory.memsw.limit_in_bytes is missing: boot with swapaccount=1 to limit swap"
            )
        # Keep the OOM killer on: with it disabled the group would hang at the limit instead
        # of dying.
        if not w.oom_control:
            self._put("memory", "memory.oom_control", "0")
            w.oom_control = True
        # v1 charges socket buffers (TCP, UDP, every protocol with socket memory accounting;
        # the file's name is historical) to a counter of their own, and only once its limit is
        # set: without it, a command queued 1 GiB in never-read loopback connections under a
        # 64 MiB limit. The kernel refuses buffers past it (senders wait, receivers drop) and
        # the sampler reports reaching it as a memory violation (see stats()). Written before
        # any socket exists: sockets made earlier are never charged.
        if self._has("memory", "memory.kmem.tcp.limit_in_bytes"):
            if w.tcp != memory:
                self._put("memory", "memory.kmem.tcp.limit_in_bytes", str(memory))
                w.tcp = memory
            self.enforced["socket_memory"] = True
            self._tcp_hit_at = max(0, memory - SOCKET_SLACK)
        else:
            self.enforced["socket_memory"] = False
            self.reasons["socket_memory"] = (
                "memory.kmem.tcp.limit_in_bytes is missing: socket buffers are not charged to "
                "the cgroup on this cgroup v1 kernel"
            )

    def _unlimit_memory(self) -> None:
        """A reused leaf's memory limits lifted (the policy sets none): memsw first, as for a raise."""
        w = self.written
        if self.versions["memory"] == 2:
            self._put("memory", "memory.max", "max")
        else:
            if w.memory is not None:
                if self._has("memory", "memory.memsw.limit_in_bytes"):
                    self._put("memory", "memory.memsw.limit_in_bytes", "-1")
                self._put("memory", "memory.limit_in_bytes", "-1")
            if w.tcp is not None:
                self._put("memory", "memory.kmem.tcp.limit_in_bytes", "-1")
                w.tcp = None
        w.memory = None

    def _missing(self, key: str, controller: str) -> None:
        self.enforced[key] = False
        why = self._manager.unavailable.get(controller, f"the {controller} controller is unavailable")
        self.reasons[key] = why

    def _put(self, controller: str, file: str, value: str) -> None:
        _fs.write_or_raise(f"{self._dirs[controller]}/{file}", value)

    def has(self, controller: str, file: str) -> bool:
        """Whether the leaf's hierarchy serving `controller` has the interface file `file` (cached per
        manager: it is the kernel's configuration). False without that controller."""
        return controller in self._dirs and self._has(controller, file)

    def _has(self, controller: str, file: str) -> bool:
        # Which interface files a hierarchy has is the kernel's configuration: look once per manager.
        known = self._manager.interface_files
        key = (controller, file)
        if key not in known:
            known[key] = os.path.exists(f"{self._dirs[controller]}/{file}")
        return known[key]

    def missing(self, keys: tuple[str, ...] = ("memory", "socket_memory", "cpus", "pids")) -> dict[str, str]:
        """The limits among `keys` that were asked for but are not enforced, with the reason for
        each."""
        return {k: self.reasons.get(k, "") for k in keys if self.enforced.get(k) is False}

    def require(self, keys: tuple[str, ...] = ("memory", "socket_memory", "cpus", "pids")) -> None:
        """Fail closed: raise SandboxSetupError naming the first limit among `keys` that the policy
        sets and the kernel does not enforce ("socket_memory": socket buffers charged under the memory
        limit). "swap" is not required by default (irrelevant on hosts without swap)."""
        from supervisor._errors import SandboxSetupError

        for key, why in self.missing(keys).items():
            layer = "cgroups"
            raise SandboxSetupError(
                layer,
                f"enforce the {key} limit",
                hint=f"{why}; set best_effort to run with supervisor-enforced limits only",
            )

    # ------------------------------------------------------------------------------------------------------
    # The end.

    def pids(self) -> list[int]:
        """The processes now in the leaf (union over its hierarchies), sorted. Raises
        SandboxSetupError."""
        out: set[int] = set()
        if self._handed_over:
            return []
        for d in self.paths:
            try:
                out.update(_fs.read_pids(d))
            except OSError as err:
                raise _fs.setup_error(err, "read cgroup.procs", d) from err
        return sorted(out)

    def kill(self, timeout: float = 1.0) -> bool:
        """SIGKILL every process in the leaf, descendants and double-forked daemons included.

        v2: write 1 to cgroup.kill. v1: freezer.state FROZEN (waiting until it reads FROZEN),
        SIGKILL each pid in cgroup.procs, THAWED. Waits up to `timeout` seconds for the leaf to
        empty and returns whether it did (0: do not wait). Raises SandboxSetupError on an unexpected
        cgroupfs error.
        """
        if self._handed_over:  # the directories hold the next child now
            return True
        try:
            return _fs.kill_places(self._places, timeout)
        except OSError as err:
            raise _fs.setup_error(err, "kill the cgroup's processes", self.paths[0]) from err

    def remove(self, timeout: float = 2.0) -> None:
        """Close the sampling fds and rmdir the leaf in every hierarchy, retrying EBUSY for up to
        `timeout` seconds while killed tasks exit. Call after kill() and after reaping the child.
        Idempotent. Raises SandboxSetupError (EBUSY: processes remain)."""
        self.close_fds()
        if self._handed_over:
            return
        deadline = time.monotonic() + timeout
        for d in self.paths:
            try:
                _fs.rmdir_retry(d, deadline)
            except OSError as err:
                raise _fs.setup_error(err, "rmdir leaf cgroup", d) from err
        self._manager.forget(self)

    def remove_reaped(self) -> None:
        """Remove the leaf of a child whose init has been reaped. Its pid namespace is then empty and so
        is the leaf, usually: rmdir at once (the kernel refuses, EBUSY, a cgroup with a process in it), and
        only when something escaped into the cgroup (no pid namespace) kill the group and retry. Raises
        SandboxSetupError."""
        from supervisor._errors import SandboxSetupError

        with contextlib.suppress(SandboxSetupError):
            self.remove(timeout=0.0)
            return
        self.kill(timeout=1.0)
        self.remove()

    # ------------------------------------------------------------------------------------------------------
    # Reuse (cgroups/_pool.py).

    def release(self) -> bool:
        """The child is reaped: give the leaf back to its manager, which keeps it for the next child when it
        is provably empty and its event counters are clean (CgroupManager.recycle), else removes it (as
        remove_reaped). Blocking: a worker thread's job. Returns whether it was kept. Raises
        SandboxSetupError from the removal."""
        return self._manager.recycle(self)

    def hand_over(self) -> Leaf:
        """A new Leaf object for the same directories, taking this one's `written` (the limits the directories
        hold) and the registration of the directories with the shared v1 OOM eventfd, and no fd (this one's
        sampling fds are closed: a kept leaf holds none, and the next child's opens them, as a new leaf's
        does): the next child's. This object then
        reports nothing (NO_STATS), lists no pids, and its kill() and remove() leave the directories alone,
        so the finished child that holds it cannot reach the next one. Thread-safe against the sampler."""
        self.close_fds()
        new = Leaf(self._manager, self.name, self._places, self._dirs, self.versions)
        new.written = self.written
        new._oom_token = self._oom_token
        with self._lock:
            self._handed_over = True
        return new

    @property
    def handed_over(self) -> bool:
        """Whether the directories went to another Leaf object (`hand_over`)."""
        return self._handed_over
