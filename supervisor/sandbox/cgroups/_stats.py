"""Reading a leaf's usage: six interface files sampled by pread(2) on fds kept open for the leaf's life, and
the parsers of their formats (unit-tested on bytes). `LeafSampler.stats` and `events` cost a few pread(2)s
on fds already open: cheap enough for the event loop, though the sampler batches them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import NamedTuple

from supervisor.sandbox.cgroups._notify import open_v1_notifier


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


_tuple_new = tuple.__new__


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

    def __init__(self, dirs: dict[str, str], versions: dict[str, int]) -> None:
        self._dirs = dirs
        self._fds: tuple[int, int, int, int, int, int] | None = None
        self._fast = False
        # v1 only: memory.kmem.tcp.max_usage_in_bytes, and the level at which it counts as the limit
        # reached (see Leaf.apply_limits). -1 / None: not sampled.
        self._tcp_fd = -1
        self._tcp_hit_at: int | None = None
        self._oom_efd = -1  # v1: the eventfd of oom_notifier
        #: v1: the socket-buffer high-water mark once it reached the memory limit (the kernel refused
        #: socket memory past it), else None. Set by stats().
        self.socket_limit_hit: int | None = None
        self.versions = versions
        self._cpu_version = versions.get("cpuacct", 0)
        self._lock = threading.Lock()
        self._removed = False

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
                    return NO_STATS
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
                out = pread_or_none(fds[2]) or b"-"
            if pids:
                out += b"|" + (pread_or_none(fds[5]) or b"-")
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
