"""Reading a leaf's usage: six interface files on fds kept open for the leaf's life, read by one call into
a C reader (`_csample.Reader`: the preads, the formats parsed in C, the turns and what they carry), and the
parsers of their formats (unit-tested on bytes), used when a file is missing or its format unexpected.
`LeafSampler.stats` and `events` cost a few pread(2)s on fds already open: cheap enough for the event loop,
though the sampler batches them in a worker thread. With kernel notifiers armed (`arm`), the event counters
are not read at all until they move (cgroups/_notify.py). In the sampler's full rounds a child whose limits
need no live value but its event counters reads ONE of its usage files in turn (`stats(turn=True)`: the
usage, the CPU, the peak, pids.current, v1's socket-buffer peak), carrying the others' last
values: each file costs 2.5-3 us per leaf with the kernel's data cold, which the file count multiplies.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import threading
from typing import NamedTuple

from supervisor.sandbox import _csample
from supervisor.sandbox.cgroups._notify import OOM, PIDS, Notifiers, Owner, open_v1_notifier


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


NO_STATS = CgroupStats(None, None, None, None, None, None)

#: v1 socket buffers count as having reached the memory limit within this much of it: the kernel charges a
#: buffer whole (up to a GSO segment's truesize, under 256 KiB) or refuses it, so a refused charge leaves the
#: high-water mark that close below the limit.
SOCKET_SLACK = 512 << 10


def field_value(data: bytes, key: bytes) -> int | None:
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
            usec = field_value(cpu, b"usage_usec ")
            cpu_s = usec / 1e6 if usec is not None else None
        else:
            cpu_s = int(cpu) / 1e9
    return CgroupStats(
        int(memory) if memory is not None else None,
        int(peak) if peak is not None else None,
        cpu_s,
        int(pids) if pids is not None else None,
        field_value(events, b"oom_kill ") if events is not None else None,
        field_value(pids_events, b"max ") if pids_events is not None else None,
    )


_Reader = _csample.Reader

#: LeafSampler._quiet bits: that event counter is not read by the periodic sampler (`stats(notified=True)`,
#: `events`): the value read last still holds, because a kernel notifier registered before that read has not
#: fired since (`arm`), or because no limit or rule of the child needs it live (the final sample reads it).
QUIET_OOM = 1
QUIET_PIDS = 2

_stagger = itertools.count()  # where each new leaf starts its turns, so that a round reads a mix of files

#: What `arm` is told about the child: its memory limit is the kernel's (the v1 OOM eventfd then covers what
#: the limit needs), it has a pids limit, and EXACT: something (user rules) needs every counter live.
NEEDS_MEMORY = 1
NEEDS_PIDS = 2
NEEDS_EXACT = 4


def pread_or_none(fd: int) -> bytes | None:
    if fd < 0:
        return None
    try:
        return os.pread(fd, 1024, 0)
    except OSError:
        return None


class LeafSampler:
    """The sampling half of a Leaf: the fds of its usage files (opened once, closed by `close_fds`) and the
    v1 socket-buffer counter. Thread-safe: the sampler reads in a worker thread while the leaf may be
    removed on another."""

    # Slots: the sampler reads several of these per leaf and round, for every leaf; in a __dict__ they are
    # spread over its hash table's cache lines, which a full round finds cold.
    __slots__ = (
        "__dict__", "_armed", "_cpu_version", "_dirs", "_fast", "_fds", "_lock", "_oom_efd", "_quiet",
        "_reader", "_removed", "_seen_oom", "_seen_pids", "_socket_hit", "_tcp_fd", "_tcp_hit_at", "versions",
    )  # fmt: skip

    def __init__(self, dirs: dict[str, str], versions: dict[str, int]) -> None:
        self._dirs = dirs
        self._fds: tuple[int, int, int, int, int, int] | None = None
        self._fast = False
        # v1 only: memory.kmem.tcp.max_usage_in_bytes, and the level at which it counts as the limit
        # reached (see Leaf.apply_limits). -1 / None: not sampled.
        self._tcp_fd = -1
        self._tcp_hit_at: int | None = None
        self._oom_efd = -1  # v1: the eventfd of the OOM notifier (arm)
        self._quiet = 0  # QUIET_* bits
        self._armed = False
        self._seen_oom: int | None = None  # the counters' values at their last read while quiet
        self._seen_pids: int | None = None
        self._socket_hit: int | None = None  # socket_limit_hit, as the careful path saw it
        self.versions = versions
        self._cpu_version = versions.get("cpuacct", 0)
        # The fast path's reads, its turns and what they carry (_csample.c, Reader: the rules are `stats`'s).
        self._reader = _Reader(CgroupStats, self._cpu_version == 2, next(_stagger) % 12)
        self._lock = threading.Lock()
        self._removed = False

    @property
    def socket_limit_hit(self) -> int | None:
        """v1: the socket-buffer high-water mark once it reached the memory limit (the kernel refused socket
        memory past it), else None. Noticed by `stats` when it reads the socket-buffer counter."""
        hit = self._socket_hit
        return hit if hit is not None else self._reader.socket_limit_hit

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

    def prime(self) -> None:
        """Open the sampling fds now, with the leaf (often in a worker thread, for a sandbox built ahead),
        rather than at the first sample, which for a short command is the final one on its result's
        path (six opens: ~100 us there)."""
        with self._lock:
            self._fds_locked()

    def _fds_locked(self) -> tuple[int, int, int, int, int, int] | None:
        """The sampling fds, opened now if they are not yet; None once removed. With the lock held."""
        fds = self._fds
        if fds is None and not self._removed:
            fds = self._fds = self._open_fds()
            self._fast = min(fds) >= 0
            self._reader_fds()
        return fds

    def _reader_fds(self) -> None:
        """Tell the reader its fds: every file (the final sample), every file but the quiet counters (the
        periodic sampler; its turns are made from these), the quiet counters' held values and the v1
        socket-buffer level that counts as the limit reached. Again whenever `_quiet` or the fds change.
        With the lock held."""
        f = self._fds
        if f is None:
            return
        q, tcp = self._quiet, self._tcp_fd
        oom, pids_events = -1 if q & QUIET_OOM else f[2], -1 if q & QUIET_PIDS else f[5]
        due = (f[0], f[1], oom, f[3], f[4], pids_events, tcp)
        self._reader.configure((*f, tcp), due, q, self._seen_oom, self._seen_pids, self._tcp_hit_at)

    def stats(self, notified: bool = False, turn: bool = False) -> CgroupStats:
        """Sample the leaf: one call reading the fds opened with the leaf (or at the first call) and kept
        until remove(). With `notified` (the periodic sampler), an event counter whose kernel notifier has
        not fired since its last read (`arm`) is not read: its value then still holds. Without it (the final
        sample) every file is read: a notification comes through a work queue, some milliseconds late.

        `turn` (implies `notified`; the sampler's full rounds, for a child whose limits need no live value
        but its event counters): read the counters not quiet and the next file in turn of the memory usage,
        the CPU, the peak, pids.current and v1's socket-buffer peak; carry the others' values from their
        last read. The peak is then the kernel's at its last read raised to the usage at every usage turn
        since: never above the kernel's peak, and below it only when the usage passed it between two reads
        (the usage is not sampled continuously, so a lower usage now proves nothing about the peak). Every
        file is read instead at the leaf's first sample and whenever an event counter moved (an OOM kill,
        forks refused at pids.max: the enforcer reports the peak or the task count with them). The reads, the
        turns and the carried values are the C reader's (`_csample.Reader`): the Python around a leaf's
        read is this call, which a full round makes for every leaf.

        Never raises for a missing file (the field is None). Thread-safe against remove()."""
        with self._lock:
            fds = self._fds
            if fds is None:  # not opened yet (or removed)
                fds = self._fds_locked()
                if fds is None:
                    return NO_STATS
            if self._fast:
                try:
                    out: CgroupStats = self._reader.read(2 if turn else 1 if notified else 0)
                    return out
                except (OSError, ValueError):
                    # An older kernel's format (no oom_kill line before 4.13...) or a vanished file:
                    # take the careful path from now on.
                    self._fast = False
            out = parse_stats(
                self._cpu_version,
                pread_or_none(fds[0]),
                pread_or_none(fds[1]),
                pread_or_none(fds[2]),
                pread_or_none(fds[3]),
                pread_or_none(fds[4]),
                pread_or_none(fds[5]),
            )
            if self._tcp_fd >= 0 and out.memory_peak_bytes is not None:
                with contextlib.suppress(OSError, ValueError):
                    out = out._replace(memory_peak_bytes=out.memory_peak_bytes + self._socket_peak())
            return out

    def _socket_peak(self) -> int:
        """v1: the socket buffers' high-water mark (their own counter, not in memory.max_usage_in_bytes, so
        the peak reported is the sum of the two: an upper bound of the combined high-water mark). Records
        `socket_limit_hit` once it reached the limit. Raises OSError/ValueError."""
        return self._note_socket(int(os.pread(self._tcp_fd, 32, 0)))

    def _note_socket(self, t: int) -> int:
        if self._tcp_hit_at is not None and t >= self._tcp_hit_at and self.socket_limit_hit is None:
            self._socket_hit = t
        return t

    def events(self, memory: bool, pids: bool) -> bytes | None:
        """The raw contents of the leaf's event counters: the OOM kills' file (v2 memory.events, v1
        memory.oom_control) when `memory`, pids.events when `pids`; one pread(2) each, on the sampling fds,
        except for a counter whose notifier (`arm`) has not fired since its last read ("=" stands for it).
        What a sampler compares between rounds to know whether a full sample is due. None once removed.
        Never raises. Thread-safe against remove()."""
        with self._lock:
            fds = self._fds_locked()
            if fds is None:
                return None
            out = b""
            if memory:
                out = b"=" if self._quiet & QUIET_OOM else pread_or_none(fds[2]) or b"-"
            if pids:
                out += b"|" + (b"=" if self._quiet & QUIET_PIDS else pread_or_none(fds[5]) or b"-")
            return out

    def arm(self, notifiers: Notifiers[Owner], owner: Owner, needs: int) -> None:
        """Decide, once per leaf, how the periodic sampler learns its event counters (`needs`: NEEDS_* bits
        of the child), and read each counter that becomes quiet (QUIET_*; the value then holds until it is
        read again):
        - cgroup v2: memory.events and pids.events are registered in `notifiers` as `owner`'s by EPOLLPRI on
          the sampling fds: every change of either moves it (cgroups/_notify.py). Quiet until it fires.
        - v1 memory.oom_control, memory limit the kernel's: the OOM eventfd (one more open and write), which
          every OOM at the limit signals; quiet until it fires. A kill by the machine-wide OOM killer moves
          the counter unsignalled: the final sample reads it.
        - v1, no such limit (and no NEEDS_EXACT): no limit needs the counter live (an ancestor's limit or
          the machine-wide OOM killer are what could move it): quiet for good; the final sample reads it.
          Likewise pids.events without a pids limit (v1 sends no notification for it).
        - otherwise the counter is read at every sample, as without `arm`.
        The leaf owns the fds and closes them at remove(); the caller discards the owner from `notifiers`
        before. Never raises. Thread-safe against remove()."""
        with self._lock:
            fds = self._fds_locked()
            if fds is None or self._armed or not self._fast:
                return
            self._armed = True
            exact = bool(needs & NEEDS_EXACT)
            if self.versions.get("pids") == 2:
                quiet_pids = notifiers.add(owner, fds[5], select.EPOLLPRI, PIDS)
            else:
                quiet_pids = not exact and not needs & NEEDS_PIDS
            if self.versions.get("memory") == 2:
                quiet_oom = notifiers.add(owner, fds[2], select.EPOLLPRI, OOM)
            elif needs & NEEDS_MEMORY and not exact:
                quiet_oom = self._v1_oom_notifier(notifiers, owner, fds[2])
            else:
                quiet_oom = not exact and not needs & NEEDS_MEMORY
            with contextlib.suppress(OSError, ValueError):
                if quiet_pids:
                    self._seen_pids = field_value(os.pread(fds[5], 64, 0), b"max ")
                    if self._seen_pids is not None:
                        self._quiet |= QUIET_PIDS
                if quiet_oom:
                    self._seen_oom = field_value(os.pread(fds[2], 256, 0), b"oom_kill ")
                    if self._seen_oom is not None:
                        self._quiet |= QUIET_OOM
            self._reader_fds()

    def disarm(self) -> None:
        """No notifier is registered by `arm` from now on. The supervisor calls it when the child is done,
        before it discards the child's notifiers: an `arm` racing with the end (the sampler's round began
        before it) then registers nothing that would outlive the discard. Thread-safe."""
        with self._lock:
            self._armed = True

    def _v1_oom_notifier(self, notifiers: Notifiers[Owner], owner: Owner, oom_control_fd: int) -> bool:
        if self._oom_efd < 0:
            try:
                self._oom_efd = open_v1_notifier(self._dirs["memory"], oom_control_fd)
            except OSError:
                return False
        return notifiers.add(owner, self._oom_efd, select.EPOLLIN, OOM)

    def unquiet(self, kinds: set[str]) -> None:
        """The notifiers of `kinds` fired (and are dropped): read those counters every time from now on."""
        with self._lock:
            if OOM in kinds:
                self._quiet &= ~QUIET_OOM
            if PIDS in kinds:
                self._quiet &= ~QUIET_PIDS
            self._reader_fds()

    def close_fds(self) -> None:
        """Close the sampling fds; `stats` then reports nothing (NO_STATS). Idempotent."""
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
