"""Monitoring and enforcement: one sampler for all children.

Every `interval` seconds the sampler looks at the running children, all reads together in one worker thread,
off the event loop. Every FULL_EVERY-th round it samples each child fully: its cgroup (pread(2)s on fds kept
open: every usage file for a child whose limits or rules need live values, else one usage file in turn,
the others carried: `LeafSampler.stats(turn=True)`) and, where a limit or rule
needs it or no cgroup serves the child, per-process detail through psutil (open fds, RSS, CPU). The rounds
between read only what each child's limits need live (`watch`): every
value for a cpu_time limit, a limit no cgroup enforces, or user rules; for limits the kernel enforces, only
its event counters (OOM kills, forks refused at pids.max), and a full sample of that child when they moved;
nothing for a child without limits. The verdicts are then applied on
the loop: a child over a supervisor-enforced limit (cpu_time, fds, and memory/pids where no cgroup enforces
them) or a user rule is killed and its Result reports the violation; a kernel OOM kill is reported as a memory
violation; forks refused at pids.max are counted and reported even when the child survives.
"""

from __future__ import annotations

import contextlib
import os
import signal as _signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psutil

from policies import CorralError
from supervisor._types import NOTHING, ChildStats, Rule, Verdict, Violation
from supervisor.sandbox.cgroups._stats import NEEDS_EXACT, NEEDS_MEMORY, NEEDS_PIDS

if TYPE_CHECKING:
    from policies import ResourcePolicy
    from supervisor._child import Child
    from supervisor.sandbox.cgroups import Leaf
    from supervisor.sandbox.cgroups._notify import Notifiers


def _tree(child: Child) -> list[psutil.Process]:
    """The live processes of a child: its cgroup's members, else the init and its descendants."""
    procs: list[psutil.Process] = []
    try:
        if child.leaf is not None and child.leaf.available:
            for pid in child.leaf.pids():
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
        else:
            init = psutil.Process(child.pid)
            procs = [init, *init.children(recursive=True)]
    except (psutil.Error, OSError):
        pass
    return procs


def held_fds(pids: Sequence[int], limit: int | None = None) -> int:
    """The fds the processes `pids` hold: those open in their fd tables, plus those parked in flight
    (SCM_RIGHTS sent and not yet received) in the receive queues of the unix sockets they hold, which the
    kernel shows as ``scm_fds`` in each socket's fdinfo (Linux 5.6; a listening socket's count includes the
    queues of connections not yet accepted). Each socket's queue counts once however many processes hold
    it. Not seen: fds queued on a unix socket that is itself in flight (inside another queue) rather than
    held; the kernel bounds those per user (docs/security.md, "fds in flight").

    The fd tables are listed first; when they alone exceed `limit`, that count is returned without looking
    at the sockets (one readlink per fd, so at most about `limit` of them per sample). Blocking (procfs
    reads); raises nothing: a process or fd that went away counts as what was read of it.
    """
    tables: list[tuple[int, list[str]]] = []
    total = 0
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        tables.append((pid, names))
        total += len(names)
    if limit is not None and total > limit:
        return total
    seen: set[str] = set()
    for pid, names in tables:
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:") and target not in seen:
                seen.add(target)
                total += _scm_fds(f"/proc/{pid}/fdinfo/{name}")
    return total


def _scm_fds(fdinfo: str) -> int:
    try:
        fd = os.open(fdinfo, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        data = os.read(fd, 4096)
    except OSError:
        return 0
    finally:
        os.close(fd)
    at = data.find(b"scm_fds:")
    if at < 0:
        return 0  # not a unix socket
    value = data[at + 8 :].split(b"\n", 1)[0].strip()
    return int(value) if value.isdigit() else 0


#: ChildStats' net_* fields of a child without the network proxy.
_NO_NET: tuple[None, None, None, None] = (None, None, None, None)


def sample(child: Child, with_fds: bool, now: float | None = None) -> ChildStats:
    """Sample one child (blocking; called in a worker thread). The cgroup is read once; psutil walks the tree
    only when an fd count is due for a child with an fd limit, or no cgroup measures its memory."""
    if now is None:
        now = time.monotonic()
    mem = peak = pids = fds = None
    cpu: float | None = None
    oom = hits = 0
    leaf = child.leaf
    has_leaf = leaf is not None and leaf.available
    if has_leaf:
        assert leaf is not None
        cg = leaf.stats()
        mem, peak, cpu, pids = cg.memory_bytes, cg.memory_peak_bytes, cg.cpu_seconds, cg.pids
        oom, hits = cg.oom_kills or 0, cg.pids_max_events or 0
    count_fds = with_fds and _counts_fds(child)
    need_usage = not has_leaf or mem is None
    if count_fds or need_usage:
        procs = _tree(child)
        if count_fds:
            assert child.policy is not None  # _counts_fds
            fds = held_fds([p.pid for p in procs], child.policy.resources.fds)
        if need_usage:
            rss = cpu_sum = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error), p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu_sum += t.user + t.system
            mem = int(rss)
            if cpu is None:
                cpu = cpu_sum
            if pids is None:
                pids = len(procs)
    net = _NO_NET if child.proxy is None else child.proxy.net()
    return ChildStats(mem, peak, cpu, pids, fds, oom, hits, now, *net)


#: Seconds between two samples of a child's disk budget and tmpfs use (Supervisor._watch_disk).
DISK_INTERVAL = 0.02


def disk_sample(child: Child) -> tuple[int | None, int | None]:
    """(disk_written, tmp_used) of `child`, each only when its policy sets the limit (blocking)."""
    pol = child.policy
    if pol is None:
        return None, None
    r = pol.resources
    disk = disk_written(child) if r.disk is not None else None
    # Only a private /tmp is the sandbox's own (full-access with private_tmp off sees the host's).
    private = pol.filesystem.private_tmp or pol.filesystem.confine
    tmp = tmp_used(child.pid) if r.tmp_size is not None and private else None
    return disk, tmp


def io_written(pid: int, proc_root: str = "/proc") -> int | None:
    """write_bytes - cancelled_write_bytes of /proc/<pid>/io: what the process (and every child it reaped)
    dirtied in page caches of filesystems that write back to storage (not tmpfs), less what was truncated or
    deleted before it reached the disk. None when the process is gone."""
    try:
        with open(f"{proc_root}/{pid}/io", "rb") as f:
            data = f.read(1024)
    except OSError:
        return None
    written = cancelled = 0
    for line in data.splitlines():
        if line.startswith(b"write_bytes: "):
            written = int(line[13:])
        elif line.startswith(b"cancelled_write_bytes: "):
            cancelled = int(line[23:])
    return max(0, written - cancelled)


def disk_written(child: Child) -> int | None:
    """Bytes the child's sandbox has written to disk (blocking; a worker thread's job): the sandbox init's
    /proc/<pid>/io, which holds every process it reaped (the kernel adds a reaped child's counts to its
    reaper's), plus each live process of its cgroup (or tree). Sampled: a process that exits between two
    samples still counts, through its reaper. None when nothing could be read."""
    pids = {child.pid}
    leaf = child.leaf
    try:
        if leaf is not None and leaf.available:
            pids.update(leaf.pids())
        else:
            pids.update(p.pid for p in psutil.Process(child.pid).children(recursive=True))
    except (psutil.Error, OSError, CorralError):
        pass
    total: int | None = None
    for pid in pids:
        n = io_written(pid)
        if n is not None:
            total = (total or 0) + n
    return total


def tmp_used(init_pid: int) -> int | None:
    """Bytes used in the fuller of the sandbox's private /tmp and /dev/shm, by fstatvfs through the init's
    root (blocking). Each component is opened O_PATH | O_NOFOLLOW: a symlink the sandbox made is not
    followed; a missing or replaced mount point gives None for it."""
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    worst: int | None = None
    try:
        for parts in (("tmp",), ("dev", "shm")):
            fds: list[int] = []
            try:
                at = root
                for part in parts:
                    at = os.open(part, flags, dir_fd=at)
                    fds.append(at)
                st = os.fstatvfs(at)
            except OSError:
                continue
            finally:
                for fd in fds:
                    os.close(fd)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            worst = used if worst is None else max(worst, used)
    finally:
        os.close(root)
    return worst


def sample_all(
    children: Sequence[Child], with_fds: bool, notifiers: Notifiers[Child] | None = None
) -> list[ChildStats]:
    """Sample every child in one go (one worker-thread hop per round, not one per child), with one
    timestamp for the round. With `notifiers`, each leaf's kernel notifiers are armed at its first sample
    and an event counter whose notifier has not fired is not read (`LeafSampler.arm`). A child whose limits
    need no live value but its event counters (`watch` not WATCH_ALL) reads one of its usage files in turn
    (`LeafSampler.stats(turn=True)`: one read per child and round where every file was five on v1; each of
    the usage, the peak, the CPU, pids.current and v1's socket-buffer peak is then read one full round in
    four or five, the others carried, and all of them at the child's first sample, when an
    event counter moves, and at its exit); the others read every file. The common case (a cgroup measures
    everything, no fd count due) is inlined: this loop runs for every child at every full round."""
    now = time.monotonic()
    out: list[ChildStats] = []
    append = out.append
    new = tuple.__new__  # a NamedTuple's own __new__ is one more Python call per child
    notified = notifiers is not None
    if notifiers is not None:
        _unquiet(notifiers)
    for c in children:
        w = c._watch
        if w is None:
            w = c._watch = watch(c)
            leaf = c.leaf
            if notifiers is not None and leaf is not None and leaf.paths:
                _arm(c, leaf, notifiers)
        s = None
        if w != WATCH_ALL:  # a cgroup measures everything (watch): the common case, kept short
            if not (with_fds and w & WATCH_FDS):
                s = c.leaf.stats(notified, True)  # type: ignore[union-attr]
        else:
            leaf = c.leaf
            if leaf is not None and leaf.paths and not (with_fds and _counts_fds(c)):
                s = leaf.stats(notified)
        if s is not None and s[0] is not None:
            m, peak, cpu, pids, oom, hits = s
            px = c.proxy
            net = _NO_NET if px is None else px.net()
            append(new(ChildStats, (m, peak, cpu, pids, None, oom or 0, hits or 0, now, *net)))
            continue
        append(sample(c, with_fds, now))
    return out


def _unquiet(notifiers: Notifiers[Child]) -> None:
    """Tell each leaf whose notifiers fired since the last round: it reads those counters from now on."""
    for c, kinds in notifiers.fired().items():
        if c.leaf is not None:
            c.leaf.unquiet(kinds)


def _arm(c: Child, leaf: Leaf, notifiers: Notifiers[Child]) -> None:
    """Arm `leaf`'s notifiers for `c`, telling it which counters the child's limits and rules need live."""
    pol = c.policy
    r = pol.resources if pol is not None else None
    needs = NEEDS_EXACT if r is None or c.rules else 0
    if r is not None and r.memory is not None and leaf.enforced.get("memory") is True:
        needs |= NEEDS_MEMORY
    if r is not None and r.pids is not None:
        needs |= NEEDS_PIDS
    leaf.arm(notifiers, c, needs)


#: Every FULL_EVERY-th round samples every child fully (its cgroup's files, or one of them in turn where no
#: limit needs them live; fd counts where an fd limit is set): that is what `Child.last_stats`, and so the
#: exporters' gauges, show (every second at the default monitor_interval of 0.25 s; the files in turn each
#: every four or five seconds). The rounds between look only at what the
#: children's limits need live.
FULL_EVERY = 4

#: What a child needs between full rounds (`watch`): every value, as in a full round (a cpu_time limit,
#: a memory or pids limit no cgroup enforces, user rules, no cgroup); or only whether the kernel's event
#: counters of the limits it does enforce moved (OOM kills, forks refused at pids.max: a bit each); or
#: nothing (no limit needs a live value).
WATCH_ALL = -1
WATCH_OOM = 1
WATCH_PIDS_MAX = 2
#: Not a reason to sample between full rounds: the child's fds are counted in full rounds (an fd limit), so
#: its full sample goes through `sample` (psutil), not the cgroup's turns.
WATCH_FDS = 4


_BETWEEN = WATCH_OOM | WATCH_PIDS_MAX  # what sample_due looks at (WATCH_ALL has every bit)


def watch(child: Child) -> int:
    """What `child` needs sampled between full rounds: WATCH_ALL, or a mask of WATCH_OOM and
    WATCH_PIDS_MAX (0: nothing), with WATCH_FDS for an fd limit. Anything but WATCH_ALL means a cgroup
    leaf measures the child's usage (its full rounds read in turn: `sample_all`)."""
    pol, leaf = child.policy, child.leaf
    if pol is None or leaf is None or not leaf.paths or child.rules:
        return WATCH_ALL
    r = pol.resources
    if r.cpu_time is not None:
        return WATCH_ALL
    if r.memory is not None and leaf.enforced.get("memory") is not True:
        return WATCH_ALL
    if r.pids is not None and leaf.enforced.get("pids") is not True:
        return WATCH_ALL
    return (
        (WATCH_OOM if r.memory is not None else 0)
        | (WATCH_PIDS_MAX if r.pids is not None else 0)
        | (WATCH_FDS if r.fds is not None else 0)
    )


def sample_due(
    children: Sequence[Child], notifiers: Notifiers[Child] | None = None
) -> list[tuple[Child, ChildStats]]:
    """A round between full rounds (blocking; in a worker thread): the children whose limits need a
    live value, each with its sample, for the enforcer. A child watched for every value is sampled in
    full; one watched for the kernel's event counters alone costs one pread(2) per counter file, and is
    sampled in full (and returned) only when they moved since the last round; the others cost nothing.
    With `notifiers`, a counter is not read while its kernel notifier there has not fired (one epoll_wait
    for all children: `LeafSampler.arm`), and the child is sampled in full in the round it fires. With
    1,000 sleeping children under kernel-enforced memory limits, this is what keeps the idle sampler
    cheap: no read per child (one pread each without notifiers) instead of six, and no enforcer call on
    the loop."""
    now = time.monotonic()
    out: list[tuple[Child, ChildStats]] = []
    new = tuple.__new__
    if notifiers is not None:
        _unquiet(notifiers)
    for c in children:
        w = c._watch
        leaf = c.leaf
        if w is None:
            w = c._watch = watch(c)
            if notifiers is not None and leaf is not None and leaf.paths:
                _arm(c, leaf, notifiers)
        if not w & _BETWEEN:
            continue
        if w != WATCH_ALL:
            assert leaf is not None
            ev = leaf.events(bool(w & WATCH_OOM), bool(w & WATCH_PIDS_MAX))
            if ev == c._events_seen:
                continue
            c._events_seen = ev
        if leaf is not None and leaf.paths:
            m, peak, cpu, pids, oom, hits = leaf.stats(notifiers is not None)
            if m is not None:
                net = _NO_NET if c.proxy is None else c.proxy.net()
                out.append((c, new(ChildStats, (m, peak, cpu, pids, None, oom or 0, hits or 0, now, *net))))
                continue
        out.append((c, sample(c, False, now)))
    return out


_SIGXFSZ = int(_signal.SIGXFSZ)
_PAGE = 4096


def tmp_full(used: int, size: int) -> bool:
    """Whether a tmpfs of `size` bytes (rounded up to pages by the kernel) with `used` bytes is full: less
    than a page left."""
    return used + _PAGE > -(-size // _PAGE) * _PAGE


def _counts_fds(child: Child) -> bool:
    return child.policy is not None and child.policy.resources.fds is not None


class Enforcer:
    """Turns samples into verdicts (`Verdict`), which the supervisor applies (`Child.apply`): it reads a
    child's policy, leaf and state, and changes none of them. Holds the consecutive-sample counters of user
    rules."""

    def __init__(self) -> None:
        self._streaks: dict[tuple[int, int], int] = {}

    def check(self, child: Child, s: ChildStats, rules: Sequence[Rule]) -> Verdict:
        """The first limit `child` breaks in sample `s` (kill), and the limits the kernel held."""
        pol = child.policy
        if pol is None or not child.running:
            return NOTHING
        r = pol.resources
        leaf = child.leaf
        kernel_mem = leaf is not None and leaf.enforced.get("memory") is True
        kernel_pids = leaf is not None and leaf.enforced.get("pids") is True
        hits: dict[str, int] = {}
        report = None
        if s.pids_limit_hits:
            hits["pids"] = s.pids_limit_hits
            if child.violation is None and r.pids is not None:
                # The kernel refused forks; the child lives on. Reported, not killed.
                report = Violation("pids", r.pids, s.pids if s.pids is not None else r.pids)
        kill = self._kill(child, s, rules, r, leaf, kernel_mem, kernel_pids, hits)
        return Verdict(hits, report, kill) if hits or report or kill else NOTHING

    def _kill(
        self,
        child: Child,
        s: ChildStats,
        rules: Sequence[Rule],
        r: ResourcePolicy,
        leaf: Leaf | None,
        kernel_mem: bool,
        kernel_pids: bool,
        hits: dict[str, int],
    ) -> Violation | None:
        """The violation to kill `child` for, in the order the limits are judged; adds to `hits`."""
        if s.oom_kills:
            hits["memory_oom"] = s.oom_kills
            if r.memory is not None:
                return Violation("memory", r.memory, s.memory_peak_bytes or s.memory_bytes or r.memory)
        if leaf is not None and leaf.socket_limit_hit is not None and r.memory is not None:
            # cgroup v1: socket buffers reached the memory limit (their own counter there; v2 counts them
            # with the rest and OOM-kills). The kernel refused buffers past it; the memory limit is broken
            # all the same, as it would be on v2.
            hits["memory_socket"] = 1
            return Violation("memory", r.memory, s.memory_peak_bytes or leaf.socket_limit_hit)
        if r.cpu_time is not None and s.cpu_seconds is not None and s.cpu_seconds > r.cpu_time:
            return Violation("cpu_time", r.cpu_time, round(s.cpu_seconds, 3))
        if r.fds is not None and s.open_fds is not None and s.open_fds > r.fds:
            return Violation("fds", r.fds, s.open_fds)
        if (
            r.memory is not None
            and not kernel_mem
            and s.memory_bytes is not None
            and s.memory_bytes > r.memory
        ):
            return Violation("memory", r.memory, s.memory_bytes)
        if r.pids is not None and not kernel_pids and s.pids is not None and s.pids > r.pids:
            return Violation("pids", r.pids, s.pids)
        for i, rule in enumerate(rules):
            value = getattr(s, rule.metric, None)
            key = (id(child), i)
            if value is not None and value > rule.threshold:
                n = self._streaks.get(key, 0) + 1
                self._streaks[key] = n
                if n >= rule.samples:
                    return Violation(rule.kind, rule.threshold, value)
            else:
                self._streaks.pop(key, None)
        return None

    def check_final(self, child: Child, s: ChildStats) -> Verdict:
        """After reaping: the counts the sampler may have missed. A kernel OOM kill under the policy's memory
        limit is the memory violation that ended the child (the kernel, not corral, killed it: the status
        is SIGKILL either way); forks refused at pids.max are reported."""
        pol = child.policy
        if pol is None:
            return NOTHING
        r = pol.resources
        hits: dict[str, int] = {}
        report = ended = None
        if s.pids_limit_hits:
            hits["pids"] = s.pids_limit_hits
            if child.violation is None and r.pids is not None:
                report = Violation("pids", r.pids, r.pids)
        if s.oom_kills:
            hits["memory_oom"] = s.oom_kills
            if r.memory is not None and not child.killed:
                ended = Violation("memory", r.memory, s.memory_peak_bytes or r.memory)
        leaf = child.leaf
        if leaf is not None and leaf.socket_limit_hit is not None and r.memory is not None:
            # Socket buffers reached the v1 limit after the last sample; the command exited on its own
            # (reported, as pids.max hits are: the exit status stays its own).
            hits["memory_socket"] = 1
            if report is None and child.violation is None:
                report = Violation("memory", r.memory, s.memory_peak_bytes or leaf.socket_limit_hit)
        return Verdict(hits, report, None, ended)

    def check_disk(self, child: Child, written: int | None, tmp: int | None) -> Verdict:
        """A `disk` violation to kill `child` for when what it wrote into its writable roots (`written`,
        disk_written) reached its budget (RLIMIT_FSIZE = the budget refuses a single file past it, so reaching
        it is how a writer that ignores SIGXFSZ shows), or it filled its private /tmp or /dev/shm (`tmp`,
        tmp_used)."""
        pol = child.policy
        if pol is None or not child.running:
            return NOTHING
        r = pol.resources
        if r.disk is not None and written is not None and written >= r.disk:
            return Verdict(kill=Violation("disk", r.disk, written))
        if r.tmp_size is not None and tmp is not None and tmp_full(tmp, r.tmp_size):
            return Verdict({"disk_tmpfs": 1}, kill=Violation("disk", r.tmp_size, tmp))
        return NOTHING

    def check_disk_final(self, child: Child, written: int | None, signal: int | None) -> Verdict:
        """After the exit: the disk budget against the final count (`written`: disk_written of the init,
        which by then holds every process), and a command killed by SIGXFSZ (a file past RLIMIT_FSIZE: the
        kernel killed it for the fsize/disk limit)."""
        pol = child.policy
        if pol is None:
            return NOTHING
        r = pol.resources
        cap = min((x for x in (r.fsize, r.disk) if x is not None), default=None)
        if signal == _SIGXFSZ and cap is not None and not child.killed:
            return Verdict(ended=Violation("disk", cap, cap))
        if r.disk is not None and written is not None and written >= r.disk and child.violation is None:
            # Reached the budget after the last sample and exited (a writer that ignores SIGXFSZ gets EFBIG
            # at it and usually gives up): the budget is broken all the same, as if killed at it.
            return Verdict(ended=Violation("disk", r.disk, written))
        return NOTHING

    def forget(self, child: Child, nrules: int) -> None:
        for i in range(nrules):
            self._streaks.pop((id(child), i), None)
