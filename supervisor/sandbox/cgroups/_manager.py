"""corral's cgroups: created, limited, sampled, killed and removed by direct cgroupfs I/O.

Layout on disk, per hierarchy (v2: the one unified tree; v1: one per mounted hierarchy, the same
names in each):

    <base>/                          the supervisor's own cgroup, or a delegated one (`delegate=`)
        <prefix>-<pid>-<start>-l<nonce>/      corral's parent cgroup for one supervisor (one
                                              CgroupManager)
            <child_id>/                       one leaf per child, limits written before the child is
                                              placed in it
        <prefix>-<pid>-<start>-l<nonce>.self/ v2 only: where the supervisor moved itself (no
                                              internal processes rule)

Liveness is proven by a lock, not inferred from the pid in the name: the owner holds flock(LOCK_EX) on
each of these directories (an fd kept open for its life; the kernel drops the lock when the process dies,
however it dies), and a starting supervisor removes such a directory only when it can take that lock
itself. A pid and start time mean nothing to a supervisor in another pid or time namespace (a live
supervisor that is pid 1 of its own namespace looked dead), while a cgroup directory is one kernel object
in every mount, pid, time and cgroup namespace, so its lock is too. `<pid>-<start>` stays in the name for
people; the nonce makes names unique across namespaces. Names of the earlier format (`<prefix>-<pid>
[-<start>][.<n>][.self]`, which held no lock) are still judged by pid and start time.
Everything here is synchronous file I/O: call it off the event loop.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import logging
import os
import re
import secrets
import select
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from supervisor.sandbox.cgroups._layout import (
    CONTROLLERS,
    V2_DOMAIN_CONTROLLERS,
    CgroupLayout,
    Hierarchy,
    discover,
)
from supervisor.sandbox.cgroups._notify import open_v1_notifier

if TYPE_CHECKING:
    from types import TracebackType

    from policies import ResourcePolicy
    from supervisor._errors import SandboxSetupError

log = logging.getLogger("corral.cgroups")

#: CFS period written with every cpu quota (100 ms, the kernel default).
CPU_PERIOD_US = 100_000
#: The kernel refuses quotas under 1 ms.
MIN_CPU_QUOTA_US = 1_000

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_CHILD_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_NIP_HINT = (
    "cgroup v2's no-internal-processes rule: a cgroup that holds processes cannot enable "
    "controllers for its children. Run corral as the only process of its cgroup (it then moves "
    "itself into a leaf, as nsjail does), e.g. `systemd-run --user --scope -p Delegate=yes "
    "corral ...`, pass delegate= an empty delegated "
    "cgroup, or set best_effort to run without cgroup limits"
)


def _hint(code: int, operation: str) -> str:
    if code in (_errno.EACCES, _errno.EPERM):
        return (
            f"uid {os.geteuid()} may not do this: run as root, or use a delegated cgroup (cgroup "
            "v2: start under `systemd-run --user --scope -p Delegate=yes`; cgroup v1: have root "
            "mkdir and chown a "
            "directory in each hierarchy and pass it as delegate=), or set best_effort"
        )
    if code == _errno.EROFS:
        return (
            "cgroupfs is mounted read-only (a container without its own writable cgroup tree?): "
            "run the container with a private cgroup namespace and a writable /sys/fs/cgroup, or "
            "set best_effort"
        )
    if code == _errno.EBUSY and "subtree_control" in operation:
        return _NIP_HINT
    if code == _errno.EBUSY:
        return "processes are still in the cgroup: kill() it and reap the child first"
    if code == _errno.ENOENT:
        return (
            "the interface file is missing: the controller is not enabled in the parent's "
            "cgroup.subtree_control (v2) or not compiled into this kernel"
        )
    if code == _errno.ENOSPC:
        return "cgroup.max.descendants or cgroup.max.depth of an ancestor is reached"
    if code == _errno.EINVAL:
        return "the kernel rejected the value"
    if code == _errno.EOPNOTSUPP:
        return "this cgroup's type does not allow the operation (a threaded cgroup?)"
    return ""


def _setup_error(
    err: OSError, operation: str, path: str | None, hint: str | None = None
) -> SandboxSetupError:
    """The one place OSError becomes SandboxSetupError(layer="cgroups"); callers `raise ... from
    err`."""
    from supervisor._errors import SandboxSetupError

    code = err.errno or 0
    return SandboxSetupError(
        "cgroups", operation, code, path, _hint(code, operation) if hint is None else hint
    )


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _write_or_raise(path: str, data: str) -> None:
    try:
        _write(path, data)
    except OSError as err:
        raise _setup_error(err, f"write {data!r} to {os.path.basename(path)}", path) from err


def _mkdir(path: str, exist_ok: bool = False) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not exist_ok:
            raise
    except OSError as err:
        raise _setup_error(err, f"mkdir {os.path.basename(path)}", path) from err


def _read_pids(cgroup_dir: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(cgroup_dir, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def _subtree_dirs(top: str) -> list[str]:
    """`top` and every cgroup below it, deepest first (rmdir order)."""
    if not os.path.isdir(top):
        return []
    out = [root for root, _dirs, _files in os.walk(top, topdown=False)]
    return out


def _subtree_pids(dirs: list[str]) -> set[int]:
    pids: set[int] = set()
    for top in dirs:
        for d in _subtree_dirs(top):
            pids.update(_read_pids(d))
    return pids


def _proc_stat(proc_root: str, pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of `pid`, or None when there is no such process."""
    try:
        data = _read(os.path.join(proc_root, str(pid), "stat"))
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def owner_alive(pid: int, start: int | None, proc_root: str = "/proc") -> bool:
    """Whether the supervisor that named a cgroup `<prefix>-<pid>[-<start>]` still runs: `pid`
    exists, is not a zombie, and (when the name carries it) started at `start`, so a reused pid does
    not keep garbage alive."""
    st = _proc_stat(proc_root, pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return start is None or st[1] == start


def stale_name_re(prefix: str) -> re.Pattern[str]:
    """Matches the names corral gives its parent cgroups (and v2 self leaves) for `prefix`: `lock` is set
    for names whose owner holds their lock (today's), None for the earlier, pid-judged format."""
    tail = (
        r"-(?P<pid>[0-9]+)(?:-(?P<start>[0-9]+))?"
        r"(?:-l(?P<lock>[0-9a-f]{8})|(?:\.(?P<inst>[0-9]+))?)(?P<self>\.self)?"
    )
    return re.compile(re.escape(prefix) + tail)


#: Locks on the `.self` cgroups this process moved itself into: held for the life of the process (it stays
#: there after its manager closes), so that no other supervisor takes it for a dead one's.
_SELF_LOCKS: list[int] = []


def _try_lock(path: str) -> int | None:
    """An fd of the directory `path` holding flock(LOCK_EX), or None when another open file holds the lock
    (its owner is alive). Raises OSError when it cannot be opened (gone, EACCES: then nothing is proven)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mkdir_locked(path: str, timeout: float = 5.0) -> int:
    """Create the directory `path` (or take it over if it exists unlocked) and hold its lock: returns the
    fd. A starting supervisor may take the lock of the directory between the mkdir and the flock (it
    then removes it, being empty and unlocked): so the lock is taken without waiting, retried while held,
    and the directory made again when the one locked is no longer the one at `path`. Raises
    SandboxSetupError."""
    deadline = time.monotonic() + timeout
    while True:
        _mkdir(path, exist_ok=True)
        try:
            fd = _try_lock(path)
        except FileNotFoundError:
            continue  # removed by a sweeper between the two: make it again
        except OSError as err:
            raise _setup_error(err, "open+flock cgroup", path) from err
        if fd is not None:
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            continue
        if time.monotonic() >= deadline:  # a sweeper holds it no longer than an empty cgroup's removal
            busy = OSError(_errno.EWOULDBLOCK, "locked by another process")
            raise _setup_error(busy, "flock cgroup", path)
        time.sleep(0.002)


def _rmdir_retry(path: str, deadline: float) -> None:
    """rmdir, retrying on EBUSY until `deadline` while killed tasks finish exiting. Raises
    OSError."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != _errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.002)


def _signal_all(pids: set[int]) -> None:
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _v1_freeze(freezer_dir: str, timeout: float) -> bool:
    """Write FROZEN and wait until the group reads FROZEN (tasks in uninterruptible sleep can delay
    it). Returns whether it froze in time; the caller kills and thaws either way."""
    _write(os.path.join(freezer_dir, "freezer.state"), "FROZEN")
    deadline = time.monotonic() + timeout
    while True:
        if _read(os.path.join(freezer_dir, "freezer.state")).strip() == "FROZEN":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def _kill_places(places: list[tuple[Hierarchy, str]], timeout: float) -> bool:
    """SIGKILL every process in the given cgroup subtrees, the same group seen through each
    hierarchy.

    v2: cgroup.kill (kernel >= 5.14) kills the subtree atomically, forks included. v1: freeze,
    SIGKILL every pid listed (frozen tasks cannot fork or exit, so the list is complete and no pid
    is reused under us), thaw. Without either, SIGKILL rounds until empty. Waits up to `timeout` for
    the subtree to empty (killed tasks leave cgroup.procs when they exit, before they are reaped);
    returns whether it did. Raises OSError.
    """
    dirs = [d for _h, d in places if os.path.isdir(d)]
    if not dirs:
        return True
    pids = _subtree_pids(dirs)
    if os.getpid() in pids:
        # Freezing or cgroup.kill would hit the caller itself; only signal the others.
        log.warning("cgroups: %s holds this process; signalling the others only", dirs)
        _signal_all(pids)
        return False
    killed = False
    for h, d in places:
        if h.version == 2 and os.path.exists(os.path.join(d, "cgroup.kill")):
            _write(os.path.join(d, "cgroup.kill"), "1")
            killed = True
    if not killed:
        freezers = [
            d for h, d in places if h.version == 1 and "freezer" in h.controllers and os.path.isdir(d)
        ]
        try:
            for d in freezers:
                if not _v1_freeze(d, min(timeout, 1.0)):
                    log.warning("cgroups: %s did not reach FROZEN in time; killing anyway", d)
            _signal_all(_subtree_pids(dirs))
        finally:
            for d in freezers:
                with contextlib.suppress(FileNotFoundError):
                    _write(os.path.join(d, "freezer.state"), "THAWED")
    deadline = time.monotonic() + timeout
    while True:
        left = _subtree_pids(dirs)
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        _signal_all(left)  # stragglers: forked between the freeze-less list and the signal
        time.sleep(0.002)


class CgroupStats(NamedTuple):
    """One sample of a leaf. None where the controller or file is unavailable.

    memory_bytes: current usage (v2 memory.current; v1 memory.usage_in_bytes, page cache included).
    memory_peak_bytes: high-water mark (v2 memory.peak, kernel >= 5.19; v1
                       memory.max_usage_in_bytes).
    cpu_seconds: user + system CPU of the whole group (v2 cpu.stat usage_usec; v1 cpuacct.usage).
    pids: tasks now in the group (pids.current).
    oom_kills: processes killed by the OOM killer in the group (v2 memory.events oom_kill; v1
        memory.oom_control oom_kill, kernel >= 4.13).
    pids_max_events: forks refused because pids.max was reached (pids.events max).
    """

    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_seconds: float | None
    pids: int | None
    oom_kills: int | None
    pids_max_events: int | None


_NO_STATS = CgroupStats(None, None, None, None, None, None)

#: v1 socket buffers count as having reached the memory limit within this much of it: the kernel charges a
#: buffer whole (up to a GSO segment's truesize, under 256 KiB) or refuses it, so a refused charge leaves the
#: high-water mark that close below the limit.
_SOCKET_SLACK = 512 << 10


def _field(data: bytes, key: bytes) -> int | None:
    """The integer after `key` (which ends with a space) at the start of a line of a flat-keyed
    file."""
    i = data.find(key)
    while i > 0 and data[i - 1] != 0x0A:
        i = data.find(key, i + 1)
    if i < 0:
        return None
    j = data.find(b"\n", i)
    return int(data[i + len(key) : j if j >= 0 else len(data)])


def parse_stats(
    version: int,
    memory: bytes | None,
    peak: bytes | None,
    events: bytes | None,
    cpu: bytes | None,
    pids: bytes | None,
    pids_events: bytes | None,
) -> CgroupStats:
    """Turn the raw contents of the six sampled files into CgroupStats (`version` of the cpu file's
    hierarchy decides its format: v2 cpu.stat in microseconds, v1 cpuacct.usage in nanoseconds)."""
    cpu_s: float | None = None
    if cpu is not None:
        if version == 2:
            usec = _field(cpu, b"usage_usec ")
            cpu_s = usec / 1e6 if usec is not None else None
        else:
            cpu_s = int(cpu) / 1e9
    return CgroupStats(
        int(memory) if memory is not None else None,
        int(peak) if peak is not None else None,
        cpu_s,
        int(pids) if pids is not None else None,
        _field(events, b"oom_kill ") if events is not None else None,
        _field(pids_events, b"max ") if pids_events is not None else None,
    )


_tuple_new = tuple.__new__


def _pread(fd: int) -> bytes | None:
    if fd < 0:
        return None
    try:
        return os.pread(fd, 1024, 0)
    except OSError:
        return None


class Leaf:
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
        manager: CgroupManager,
        name: str,
        places: list[tuple[Hierarchy, str]],
        dirs: dict[str, str],
        versions: dict[str, int],
    ) -> None:
        self._manager = manager
        self.name = name
        self._places = places
        self._dirs = dirs
        self.versions = versions
        self.paths: list[str] = [d for _h, d in places]
        # `tasks` on v1 moves the calling thread without the kernel's global threadgroup lock (cgroup.procs
        # takes it, and waits out an RCU grace period for it: 8-20 ms on an idle machine); the init has one
        # thread, so its process moves. v2 has no per-thread file outside threaded subtrees.
        self.placement_files: list[str] = [
            f"{d}/tasks" if h.version == 1 else f"{d}/cgroup.procs" for h, d in places
        ]
        self.enforced: dict[str, bool] = {}
        self.reasons: dict[str, str] = {}
        self._fds: tuple[int, int, int, int, int, int] | None = None
        self._fast = False
        # v1 only: memory.kmem.tcp.max_usage_in_bytes, and the level at which it counts as the limit
        # reached (see _apply). -1 / None: not sampled.
        self._tcp_fd = -1
        self._tcp_hit_at: int | None = None
        self._oom_efd = -1  # v1: the eventfd of oom_notifier
        #: v1: the socket-buffer high-water mark once it reached the memory limit (the kernel refused
        #: socket memory past it), else None. Set by stats().
        self.socket_limit_hit: int | None = None
        self._cpu_version = versions.get("cpuacct", 0)
        self._lock = threading.Lock()
        self._removed = False

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

    def _apply(self, r: ResourcePolicy) -> None:
        unavailable = self._manager.unavailable

        def missing(key: str, controller: str) -> None:
            self.enforced[key] = False
            why = unavailable.get(controller, f"the {controller} controller is unavailable")
            self.reasons[key] = why

        def put(controller: str, file: str, value: str) -> None:
            _write_or_raise(f"{self._dirs[controller]}/{file}", value)

        def has(controller: str, file: str) -> bool:
            # Which interface files a hierarchy has is the kernel's configuration: look once per manager.
            known = self._manager._has_file
            key = (controller, file)
            if key not in known:
                known[key] = os.path.exists(f"{self._dirs[controller]}/{file}")
            return known[key]

        if r.memory is not None:
            if "memory" not in self._dirs:
                missing("memory", "memory")
                missing("swap", "memory")
            elif self.versions["memory"] == 2:
                put("memory", "memory.max", str(r.memory))
                self.enforced["memory"] = True
                if has("memory", "memory.swap.max"):
                    put("memory", "memory.swap.max", "0")
                    self.enforced["swap"] = True
                else:
                    self.enforced["swap"] = False
                    self.reasons["swap"] = (
                        "memory.swap.max is missing: this kernel has no swap accounting "
                        "(CONFIG_MEMCG_SWAP, or swapaccount=0 on the command line); swap is not "
                        "limited"
                    )
                if has("memory", "memory.oom.group"):
                    put("memory", "memory.oom.group", "1")
                # v2 charges socket buffers to memory.current with everything else (unless booted with
                # cgroup.memory=nosocket): memory.max holds them (tests/kernel/test_limits_v2.py).
                self.enforced["socket_memory"] = True
            else:
                put("memory", "memory.limit_in_bytes", str(r.memory))
                self.enforced["memory"] = True
                if has("memory", "memory.memsw.limit_in_bytes"):
                    # memsw is memory+swap; equal to the memory limit means no swap. Written after
                    # limit_in_bytes because the kernel requires memsw >= limit at every step.
                    put("memory", "memory.memsw.limit_in_bytes", str(r.memory))
                    self.enforced["swap"] = True
                else:
                    self.enforced["swap"] = False
                    self.reasons["swap"] = (
                        "memory.memsw.limit_in_bytes is missing: boot with swapaccount=1 to limit swap"
                    )
                # Keep the OOM killer on: with it disabled the group would hang at the limit instead
                # of dying.
                put("memory", "memory.oom_control", "0")
                # v1 charges socket buffers (TCP, UDP, every protocol with socket memory accounting;
                # the file's name is historical) to a counter of their own, and only once its limit is
                # set: without it, a command queued 1 GiB in never-read loopback connections under a
                # 64 MiB limit. The kernel refuses buffers past it (senders wait, receivers drop) and
                # the sampler reports reaching it as a memory violation (see stats()). Written before
                # any socket exists: sockets made earlier are never charged.
                if has("memory", "memory.kmem.tcp.limit_in_bytes"):
                    put("memory", "memory.kmem.tcp.limit_in_bytes", str(r.memory))
                    self.enforced["socket_memory"] = True
                    self._tcp_hit_at = max(0, r.memory - _SOCKET_SLACK)
                else:
                    self.enforced["socket_memory"] = False
                    self.reasons["socket_memory"] = (
                        "memory.kmem.tcp.limit_in_bytes is missing: socket buffers are not charged to "
                        "the cgroup on this cgroup v1 kernel"
                    )
        if r.cpus is not None:
            if "cpu" not in self._dirs:
                missing("cpus", "cpu")
            else:
                quota = max(MIN_CPU_QUOTA_US, round(r.cpus * CPU_PERIOD_US))
                if self.versions["cpu"] == 2:
                    put("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}")
                else:
                    put("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    put("cpu", "cpu.cfs_quota_us", str(quota))
                self.enforced["cpus"] = True
        if r.pids is not None:
            if "pids" not in self._dirs:
                missing("pids", "pids")
            else:
                put("pids", "pids.max", str(r.pids))
                self.enforced["pids"] = True

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

    def _open_fds(self) -> tuple[int, int, int, int, int, int]:
        def o(controller: str, file: str) -> int:
            d = self._dirs.get(controller)
            if d is None:
                return -1
            try:
                return os.open(f"{d}/{file}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return -1

        if self.versions.get("memory") == 2:
            mem = (
                o("memory", "memory.current"),
                o("memory", "memory.peak"),
                o("memory", "memory.events"),
            )
        else:
            mem = (
                o("memory", "memory.usage_in_bytes"),
                o("memory", "memory.max_usage_in_bytes"),
                o("memory", "memory.oom_control"),
            )
        cpu = o("cpuacct", "cpu.stat" if self._cpu_version == 2 else "cpuacct.usage")
        if self._tcp_hit_at is not None and self._tcp_fd < 0:
            self._tcp_fd = o("memory", "memory.kmem.tcp.max_usage_in_bytes")
        return (*mem, cpu, o("pids", "pids.current"), o("pids", "pids.events"))

    def _prime(self) -> None:
        """Open the sampling fds now, with the leaf (often in a worker thread, for a sandbox built ahead),
        rather than at the first sample, which for a short command is the final one on its result's
        path (six opens: ~100 us there)."""
        with self._lock:
            if self._fds is None and not self._removed:
                self._fds = self._open_fds()
                self._fast = min(self._fds) >= 0

    def stats(self) -> CgroupStats:
        """Sample the leaf: six pread(2)s on fds opened with the leaf (or at the first call) and kept until
        remove().
        Never raises for a missing file (the field is None). Thread-safe against remove()."""
        with self._lock:
            fds = self._fds
            if fds is None:
                if self._removed:
                    return _NO_STATS
                fds = self._fds = self._open_fds()
                self._fast = min(fds) >= 0
            if self._fast:
                # The common case, inlined: this runs for every child at every sample.
                pread = os.pread
                try:
                    ev = pread(fds[2], 256, 0)
                    i = ev.index(b"oom_kill ") + 9
                    cpu = pread(fds[3], 64, 0)
                    pe = pread(fds[5], 64, 0)
                    if self._cpu_version == 2:
                        cpu_s = int(cpu[11 : cpu.index(b"\n")]) / 1e6
                    else:
                        cpu_s = int(cpu) / 1e9
                    peak = int(pread(fds[1], 32, 0))
                    if self._tcp_fd >= 0:
                        peak += self._socket_peak()
                    # tuple.__new__ directly: a NamedTuple's own __new__ is one more Python call.
                    return _tuple_new(
                        CgroupStats,
                        (
                            int(pread(fds[0], 32, 0)),
                            peak,
                            cpu_s,
                            int(pread(fds[4], 32, 0)),
                            int(ev[i : ev.index(b"\n", i)]),
                            int(pe[4 : pe.index(b"\n")]) if pe.startswith(b"max ") else None,
                        ),
                    )
                except (OSError, ValueError):
                    # An older kernel's format (no oom_kill line before 4.13...) or a vanished file:
                    # take the careful path from now on.
                    self._fast = False
            out = parse_stats(
                self._cpu_version,
                _pread(fds[0]),
                _pread(fds[1]),
                _pread(fds[2]),
                _pread(fds[3]),
                _pread(fds[4]),
                _pread(fds[5]),
            )
            if self._tcp_fd >= 0 and out.memory_peak_bytes is not None:
                with contextlib.suppress(OSError, ValueError):
                    out = out._replace(memory_peak_bytes=out.memory_peak_bytes + self._socket_peak())
            return out

    def _socket_peak(self) -> int:
        """v1: the socket buffers' high-water mark (their own counter, not in memory.max_usage_in_bytes, so
        the peak reported is the sum of the two: an upper bound of the combined high-water mark). Records
        `socket_limit_hit` once it reached the limit. Raises OSError/ValueError."""
        t = int(os.pread(self._tcp_fd, 32, 0))
        if self._tcp_hit_at is not None and t >= self._tcp_hit_at and self.socket_limit_hit is None:
            self.socket_limit_hit = t
        return t

    def events(self, memory: bool, pids: bool) -> bytes | None:
        """The raw contents of the leaf's event counters: the OOM kills' file (v2 memory.events, v1
        memory.oom_control) when `memory`, pids.events when `pids`; one pread(2) each, on the sampling fds.
        What a sampler compares between rounds to know whether a full sample is due. None once removed.
        Never raises. Thread-safe against remove()."""
        with self._lock:
            fds = self._fds
            if fds is None:
                if self._removed:
                    return None
                fds = self._fds = self._open_fds()
                self._fast = min(fds) >= 0
            out = b""
            if memory:
                out = _pread(fds[2]) or b"-"
            if pids:
                out += b"|" + (_pread(fds[5]) or b"-")
            return out

    def oom_notifier(self) -> tuple[int, int]:
        """(fd, epoll events) that turn ready on an OOM in the leaf (cgroups/_notify.py): on v1 an eventfd
        registered for memory.oom_control. The leaf owns the fd and closes it at remove(). (-1, 0) when
        there is none (v2, no memory controller, removed, refused). Never raises. Thread-safe against
        remove()."""
        with self._lock:
            if self._removed or "memory" not in self._dirs:
                return -1, 0
            fds = self._fds
            if fds is None:
                fds = self._fds = self._open_fds()
                self._fast = min(fds) >= 0
            if fds[2] < 0:
                return -1, 0
            if self.versions.get("memory") != 1:
                # v2: memory.events should poll POLLPRI when it changes (kernfs_notify), but a notifier on
                # it did not fire in the v2 test VM: not used until a test shows it does.
                return -1, 0
            if self._oom_efd < 0:
                try:
                    self._oom_efd = open_v1_notifier(self._dirs["memory"], fds[2])
                except OSError:
                    return -1, 0
            return self._oom_efd, select.EPOLLIN

    def pids(self) -> list[int]:
        """The processes now in the leaf (union over its hierarchies), sorted. Raises
        SandboxSetupError."""
        out: set[int] = set()
        for d in self.paths:
            try:
                out.update(_read_pids(d))
            except OSError as err:
                raise _setup_error(err, "read cgroup.procs", d) from err
        return sorted(out)

    def kill(self, timeout: float = 1.0) -> bool:
        """SIGKILL every process in the leaf, descendants and double-forked daemons included.

        v2: write 1 to cgroup.kill. v1: freezer.state FROZEN (waiting until it reads FROZEN),
        SIGKILL each pid in cgroup.procs, THAWED. Waits up to `timeout` seconds for the leaf to
        empty and returns whether it did (0: do not wait). Raises SandboxSetupError on an unexpected
        cgroupfs error.
        """
        try:
            return _kill_places(self._places, timeout)
        except OSError as err:
            raise _setup_error(err, "kill the cgroup's processes", self.paths[0]) from err

    def remove(self, timeout: float = 2.0) -> None:
        """Close the sampling fds and rmdir the leaf in every hierarchy, retrying EBUSY for up to
        `timeout` seconds while killed tasks exit. Call after kill() and after reaping the child.
        Idempotent. Raises SandboxSetupError (EBUSY: processes remain)."""
        with self._lock:
            if self._fds is not None:
                for fd in self._fds:
                    if fd >= 0:
                        os.close(fd)
                self._fds = None
            if self._tcp_fd >= 0:
                os.close(self._tcp_fd)
                self._tcp_fd = -1
            if self._oom_efd >= 0:
                os.close(self._oom_efd)
                self._oom_efd = -1
            self._removed = True
        deadline = time.monotonic() + timeout
        for d in self.paths:
            try:
                _rmdir_retry(d, deadline)
            except OSError as err:
                raise _setup_error(err, "rmdir leaf cgroup", d) from err
        self._manager._forget(self)

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


@dataclass(slots=True)
class _Tree:
    """One hierarchy as the manager uses it."""

    hierarchy: Hierarchy
    base: str
    serves: set[str]
    parent: str = ""


class CgroupManager:
    """corral's cgroups for one supervisor process. Synchronous; call it off the event loop.

    >>> mgr = CgroupManager()
    >>> mgr.open("corral")                 # parent cgroup(s), stale cleanup
    >>> leaf = mgr.create_leaf("c1", policy.resources)
    >>> # the sandbox init writes 0 into each of leaf.placement_files (or: a pid into leaf.procs_files)
    >>> leaf.stats(); leaf.kill(); leaf.remove()
    >>> mgr.close()

    After open(): `available` says whether any controller is usable, `controllers` maps each usable
    controller to its cgroup version, `unavailable` maps the others to the reason (the caller falls
    back to rlimits and supervisor-enforced limits with a warning when best_effort, or refuses),
    `stale_removed` lists the cgroups of dead supervisors that were removed, and `moved_self_to` is
    set when the supervisor moved itself into a v2 leaf to satisfy the no-internal-processes rule.
    """

    def __init__(
        self,
        layout: CgroupLayout | None = None,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
    ) -> None:
        self._layout = layout
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._trees: list[_Tree] = []
        self._serve: dict[str, _Tree] = {}
        self._leaves: dict[str, Leaf] = {}
        self._has_file: dict[tuple[str, str], bool] = {}  # (controller, interface file) -> exists
        self._lock = threading.Lock()
        self._locks: list[int] = []  # fds holding the locks of our parent cgroups: see the module's doc
        self._opened = False
        self._closed = False
        self.name = ""
        self.unavailable: dict[str, str] = {}
        self.errors: list[SandboxSetupError] = []
        self.stale_removed: list[str] = []
        self.moved_self_to: str | None = None

    def __enter__(self) -> CgroupManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def layout(self) -> CgroupLayout:
        """The discovered (or given) layout; discovers on first use."""
        if self._layout is None:
            self._layout = discover(self._proc_root, self._cgroup_root)
        return self._layout

    @property
    def available(self) -> bool:
        """Whether open() made at least one controller usable."""
        return bool(self._serve)

    @property
    def controllers(self) -> dict[str, int]:
        """Usable controller -> cgroup version (1 or 2)."""
        return {c: t.hierarchy.version for c, t in self._serve.items()}

    @property
    def reason(self) -> str:
        """One line saying why controllers are unusable ("" when all are usable)."""
        return "; ".join(f"{c}: {why}" for c, why in sorted(self.unavailable.items()))

    @property
    def brief(self) -> str:
        """`reason` said once: controllers that failed the same way share one short clause (the
        syscall, errno and where), without the fix (`FIX` says it). "" when all are usable."""
        by_cause: dict[str, list[str]] = {}
        errors = {c: e for e in self.errors for c in self.unavailable if e.path and f"/{c}/" in e.path + "/"}
        for controller, why in sorted(self.unavailable.items()):
            err = errors.get(controller)
            if err is not None and err.errno:
                where = os.path.dirname(err.path or "") or self._cgroup_root
                for c in (controller, *controller.split(",")):
                    where = where.replace(f"/{c}/", "/*/").replace(f"/{c}", "/*")
                verb = err.operation.split()[0]
                cause = f"{verb} under {where}: {_errno.errorcode.get(err.errno, err.errno)}"
            else:
                cause = why.split("; ")[0]
            by_cause.setdefault(cause, []).append(controller)
        return "; ".join(f"{', '.join(cs)}: {cause}" for cause, cs in by_cause.items())

    @property
    def fix(self) -> str:
        """What to do about the unusable controllers (the first failure's hint), once."""
        return next((e.hint for e in self.errors if e.hint), "see docs/cgroups.md")

    @property
    def parents(self) -> list[str]:
        """corral's parent cgroup directories, one per hierarchy in use."""
        return [t.parent for t in self._trees]

    def open(
        self,
        name_prefix: str = "corral",
        *,
        delegate: str | Mapping[str, str] | None = None,
        move_self: bool = True,
        cleanup_stale: bool = True,
    ) -> None:
        """Create corral's parent cgroup `<name_prefix>-<pid>-<start>` in each hierarchy in use,
        after removing stale ones left by dead supervisors (their processes are killed first).

        delegate: a cgroup path to create under instead of this process's own cgroup, for ordinary
        users, who cannot write elsewhere: one path used in every hierarchy (e.g. "/corral-alice"
        chowned in each v1 hierarchy), or a mapping controller -> path when they differ. On v2 the
        usual delegated cgroup is the own one (`systemd-run --user --scope -p Delegate=yes`), which
        needs no `delegate`.
        move_self: on v2, when the own cgroup holds processes (so that the no-internal-processes rule
        forbids enabling controllers) and this process is the only one there, move it into a `.self`
        leaf first, as nsjail does. Otherwise the EBUSY is reported with its explanation.

        Never raises for an unusable hierarchy: its controllers land in `unavailable` with the
        reason, and the translated SandboxSetupError in `errors`. Raises ValueError for a bad
        prefix, RuntimeError when already opened. Stale cleanup failures are logged, not raised.
        """
        if self._opened:
            msg = "CgroupManager.open() called twice"
            raise RuntimeError(msg)
        if not _PREFIX_RE.fullmatch(name_prefix):
            msg = f"cgroup name prefix must match {_PREFIX_RE.pattern}: {name_prefix!r}"
            raise ValueError(msg)
        self._opened = True
        layout = self.layout
        pid = os.getpid()
        st = _proc_stat(self._proc_root, pid)
        # The nonce: unique across supervisors (two in one process; two that are each pid 1 of their own
        # pid namespace), and the mark of a name whose owner holds its lock.
        self.name = f"{name_prefix}-{pid}-{st[1] if st else 0}-l{secrets.token_hex(4)}"
        self.unavailable = dict(layout.missing)

        trees: list[_Tree] = []
        for h in layout.hierarchies():
            serves = {c for c in CONTROLLERS if layout.controllers.get(c) == h}
            if delegate is None:
                path = h.cgroup
            elif isinstance(delegate, str):
                path = delegate
            else:
                given = [delegate[c] for c in sorted(serves) if c in delegate]
                if not given:
                    for c in serves:
                        self.unavailable[c] = f"no delegated cgroup given for {c}"
                    continue
                path = given[0]
            try:
                base = h.dir_of(path)
            except ValueError as err:
                for c in serves:
                    self.unavailable[c] = str(err)
                continue
            trees.append(_Tree(h, base, serves))

        if cleanup_stale:
            self._cleanup_stale(trees, name_prefix)

        for tree in trees:
            try:
                if tree.hierarchy.version == 2:
                    self._open_v2(tree, move_self=move_self and delegate is None)
                else:
                    tree.parent = os.path.join(tree.base, self.name)
                    self._locks.append(_mkdir_locked(tree.parent))
            except Exception as err:
                from supervisor._errors import SandboxSetupError

                if not isinstance(err, SandboxSetupError):
                    raise
                self.errors.append(err)
                for c in tree.serves:
                    self.unavailable[c] = str(err)
                if tree.parent:
                    with contextlib.suppress(OSError):
                        os.rmdir(tree.parent)
                continue
            if tree.serves:
                self._trees.append(tree)
                for c in tree.serves:
                    self._serve[c] = tree
                    self.unavailable.pop(c, None)
        if self.unavailable:
            log.info("cgroups: unavailable controllers: %s", self.reason)

    def _open_v2(self, tree: _Tree, move_self: bool) -> None:
        base = tree.base
        want = tree.serves & set(V2_DOMAIN_CONTROLLERS)
        try:
            avail = set(_read(os.path.join(base, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
        except OSError as err:
            raise _setup_error(err, "read cgroup.controllers", base) from err
        for c in sorted(want - avail):
            self.unavailable[c] = (
                f"cgroup2 controller {c} is not delegated to {base} (absent from its cgroup.controllers)"
            )
            tree.serves.discard(c)
        want &= avail
        need = sorted(want - enabled)
        if need:
            # Settle the no-internal-processes rule before writing anything: enabling a threaded
            # controller (cpu, pids) in a cgroup that holds processes succeeds and turns it into a thread
            # root, after which memory fails with EOPNOTSUPP instead of the EBUSY that names the problem.
            # The true root cgroup (the only one without cgroup.type) is exempt from the rule.
            is_root = not os.path.exists(os.path.join(base, "cgroup.type"))
            if not is_root and _read_pids(base):
                busy = OSError(_errno.EBUSY, os.strerror(_errno.EBUSY))
                self._move_self_or_explain(base, move_self, busy)
            try:
                self._enable(base, need)
            except OSError as err:
                if err.errno != _errno.EBUSY:
                    raise _setup_error(err, "write cgroup.subtree_control", base) from err
                self._move_self_or_explain(base, move_self, err)  # a process arrived meanwhile
                try:
                    self._enable(base, need)
                except OSError as err2:
                    raise _setup_error(err2, "write cgroup.subtree_control", base) from err2
        tree.parent = os.path.join(base, self.name)
        self._locks.append(_mkdir_locked(tree.parent))
        try:
            self._enable(tree.parent, sorted(want))
        except OSError as err:
            raise _setup_error(err, "write cgroup.subtree_control", tree.parent) from err
        if "freezer" in tree.serves and not (
            os.path.exists(os.path.join(tree.parent, "cgroup.kill"))
            or os.path.exists(os.path.join(tree.parent, "cgroup.freeze"))
        ):
            # Kill then falls back to SIGKILL rounds until the group is empty.
            tree.serves.discard("freezer")
            self.unavailable["freezer"] = "no cgroup.kill or cgroup.freeze (kernel older than 5.2)"

    @staticmethod
    def _enable(cgroup_dir: str, controllers: list[str]) -> None:
        # One write: the kernel vets the whole set at once, so a refusal leaves nothing half-enabled.
        order = sorted(controllers, key=lambda c: (c != "memory", c))
        _write(os.path.join(cgroup_dir, "cgroup.subtree_control"), " ".join(f"+{c}" for c in order))

    def _move_self_or_explain(self, base: str, move_self: bool, err: OSError) -> None:
        me = os.getpid()
        others = [p for p in _read_pids(base) if p != me]
        if others or not move_self:
            shown = " ".join(map(str, others[:5])) + (" ..." if len(others) > 5 else "")
            who = f"processes {shown}" if others else "this process"
            raise _setup_error(
                err,
                "write cgroup.subtree_control",
                base,
                hint=f"{base} holds {who}; {_NIP_HINT}",
            ) from err
        selfdir = os.path.join(base, self.name + ".self")
        _SELF_LOCKS.append(_mkdir_locked(selfdir))
        _write_or_raise(os.path.join(selfdir, "cgroup.procs"), str(me))
        self.moved_self_to = selfdir
        log.warning(
            "cgroups: moved the supervisor (pid %d) into %s: cgroup v2 forbids enabling "
            "controllers in a cgroup that holds processes",
            me,
            selfdir,
        )

    def _cleanup_stale(self, trees: list[_Tree], prefix: str) -> None:
        """Kill and remove the corral cgroups of dead supervisors under each tree's base: a directory
        of today's format only when its lock can be taken (its owner is proven gone; the lock is held
        while it is removed), one of the earlier format when its pid and start time name no live
        process. Failures are logged."""
        rx = stale_name_re(prefix)
        stale: dict[str, list[tuple[Hierarchy, str]]] = {}
        alive: set[str] = set()
        for t in trees:
            try:
                entries = list(os.scandir(t.base))
            except OSError:
                continue
            for e in entries:
                m = rx.fullmatch(e.name)
                if not m or not e.is_dir(follow_symlinks=False) or e.name == self.name:
                    continue
                if m["lock"] is None:
                    start = int(m["start"]) if m["start"] else None
                    if owner_alive(int(m["pid"]), start, self._proc_root):
                        continue
                stale.setdefault(e.name, []).append((t.hierarchy, e.path))
        for name, places in sorted(stale.items()):
            locks: list[int] = []
            try:
                if rx.fullmatch(name)["lock"] is not None:  # type: ignore[index]
                    for _h, d in places:
                        try:
                            fd = _try_lock(d)
                        except FileNotFoundError:
                            continue  # removed meanwhile (by its owner, or another sweeper)
                        except OSError as err:  # cannot open it: nothing proven, leave it
                            log.info("cgroups: cannot test the lock of %s: %s; left alone", d, err)
                            fd = None
                        if fd is None:
                            alive.add(name)
                            break
                        locks.append(fd)
                    if name in alive:
                        continue
                if not _kill_places(places, timeout=2.0):
                    log.warning("cgroups: stale %s: processes survive SIGKILL; left alone", name)
                    continue
                deadline = time.monotonic() + 2.0
                for _h, d in places:
                    for sub in _subtree_dirs(d):
                        _rmdir_retry(sub, deadline)
            except OSError as err:
                log.warning("cgroups: could not remove stale %s: %s", name, err)
                continue
            finally:
                for fd in locks:
                    os.close(fd)
            self.stale_removed.append(name)
            log.warning("cgroups: removed stale cgroup %s left by a dead supervisor", name)

    def create_leaf(self, child_id: str, resources: ResourcePolicy, *, freezer: bool = True) -> Leaf:
        """Create the leaf `<parent>/<child_id>` in each hierarchy it needs and write the limits
        `resources` sets. On v1 each hierarchy costs a mkdir, a cgroup.procs write and an rmdir per
        child, so a hierarchy serving only `cpu` is skipped when no cpus limit is set, and one serving
        only `freezer` when `freezer` is False (the caller kills the tree another way: a child with its
        own pid namespace dies with its init). The limits: v2 memory.max, memory.swap.max 0,
        memory.oom.group 1, cpu.max "<quota> 100000", pids.max; v1 memory.limit_in_bytes,
        memory.memsw.limit_in_bytes, memory.oom_control 0, cpu.cfs_period_us and cpu.cfs_quota_us,
        pids.max. The leaf's `enforced`/`reasons` say which took effect; with cgroups unavailable it
        has no paths and every requested limit is reported missing (see Leaf.require).

        Raises ValueError for a bad or duplicate child_id, SandboxSetupError when a directory or
        limit cannot be written (the partly made leaf is removed first), RuntimeError when not
        opened.
        """
        if not self._opened or self._closed:
            msg = "CgroupManager is not open"
            raise RuntimeError(msg)
        if not _CHILD_ID_RE.fullmatch(child_id) or child_id in (".", ".."):
            msg = f"child id must match {_CHILD_ID_RE.pattern}: {child_id!r}"
            raise ValueError(msg)
        with self._lock:
            if child_id in self._leaves:
                msg = f"a leaf named {child_id!r} exists"
                raise ValueError(msg)
        places: list[tuple[Hierarchy, str]] = []
        dirs: dict[str, str] = {}
        needed = {"memory", "cpuacct", "pids"}
        if resources.cpus is not None:
            needed.add("cpu")
        if freezer:
            needed.add("freezer")
        try:
            for t in self._trees:
                if t.hierarchy.version == 1 and not t.serves & needed:
                    continue
                d = f"{t.parent}/{child_id}"
                try:
                    os.mkdir(d, 0o755)
                except OSError as err:
                    raise _setup_error(err, "mkdir leaf cgroup", d) from err
                places.append((t.hierarchy, d))
                for c in t.serves:
                    dirs[c] = d
            versions = {c: self._serve[c].hierarchy.version for c in dirs}
            leaf = Leaf(self, child_id, places, dirs, versions)
            leaf._apply(resources)
            leaf._prime()
        except BaseException:
            for _h, d in reversed(places):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise
        with self._lock:
            self._leaves[child_id] = leaf
        return leaf

    def leaves(self) -> list[Leaf]:
        """The leaves created and not yet removed."""
        with self._lock:
            return list(self._leaves.values())

    def _forget(self, leaf: Leaf) -> None:
        with self._lock:
            if self._leaves.get(leaf.name) is leaf:
                del self._leaves[leaf.name]

    def close(self, timeout: float = 2.0) -> None:
        """Kill and remove every remaining leaf, then remove the parent cgroups. Idempotent. A v2
        supervisor that moved itself stays in its `.self` leaf (the next start removes it once this
        process is gone). Tries everything, then raises the first SandboxSetupError met."""
        if self._closed:
            return
        self._closed = True
        first: Exception | None = None
        for leaf in self.leaves():
            try:
                leaf.kill(timeout)
                leaf.remove(timeout)
            except Exception as err:  # keep going: the other leaves and parents still need removing
                first = first or err
        deadline = time.monotonic() + timeout
        for t in self._trees:
            try:
                _rmdir_retry(t.parent, deadline)
            except OSError as err:
                first = first or _setup_error(err, "rmdir parent cgroup", t.parent)
        # Held until the directories are gone (a parent left behind stays ours until this process exits:
        # then the next start removes it).
        if first is None:
            for fd in self._locks:
                os.close(fd)
            self._locks.clear()
        if first is not None:
            raise first
