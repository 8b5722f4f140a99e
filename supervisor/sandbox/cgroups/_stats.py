"""Reading a leaf's usage: six interface files on fds kept open for the leaf's life (five on v1 without a
pids limit, where pids.events is read by path at the full samples alone; docs/cgroups.md, "Fds per child"),
read by one call into
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
from supervisor.sandbox.cgroups._notify import OOM, PIDS, Notifiers, Owner


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

#: A leaf's sampling fds: the memory usage, peak and OOM counter, the CPU, pids.current, pids.events.
_Fds = tuple[int, int, int, int, int, int]

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
        "__dict__", "_armed", "_cpu_version", "_dirs", "_fast", "_fds", "_lock", "_oom_token",
        "_pids_by_path", "_quiet", "_reader", "_removed", "_seen_oom", "_seen_pids", "_socket_hit", "_tcp_fd",
        "_tcp_hit_at", "versions",
    )  # fmt: skip

    def __init__(self, dirs: dict[str, str], versions: dict[str, int]) -> None:
        self._dirs = dirs
        self._fds: tuple[int, int, int, int, int, int] | None = None
        self._fast = False
        # v1 only: memory.kmem.tcp.max_usage_in_bytes, and the level at which it counts as the limit
        # reached (see Leaf.apply_limits). -1 / None: not sampled.
        self._tcp_fd = -1
        self._tcp_hit_at: int | None = None
        # v1: the Notifiers (its token) whose shared OOM eventfd is registered on this leaf's directory (arm);
        # 0: none. It outlives the child: a reused leaf's is handed over (Leaf.hand_over).
        self._oom_token = 0
        # v1 pids.events of a leaf without a pids limit: no fd held (one fewer per live child), its count held
        # quiet from the leaf's creation and read by path at every full sample (`stats()`, the final one).
        # Set by Leaf.apply_limits, before the fds are opened.
        self._pids_by_path = False
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
        pids_events = -1 if self._pids_by_path else o("pids", "pids.events")
        return (*mem, cpu, o("pids", "pids.current"), pids_events)

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
            self._fast = min(fds[:5]) >= 0 and (fds[5] >= 0 or self._pids_by_path)
            if self._pids_by_path and self._fast:
                # A new leaf's count is 0, and a kept leaf is kept only with 0 (cgroups/_pool.py): held
                # quiet, as `arm` would hold it (no limit of the child needs it live).
                self._quiet |= QUIET_PIDS
                self._seen_pids = 0
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

        v1 pids.events of a leaf without a pids limit has no fd (`_pids_by_path`): a sample reading every file
        (neither `notified` nor `turn`: the final one, and full samples of a child with an fd limit) opens
        and reads it by path, in the leaf's own directory (corral's: nothing in a sandbox can write there).

        Never raises for a missing file (the field is None). Thread-safe against remove()."""
        with self._lock:
            fds = self._fds
            if fds is None:  # not opened yet (or removed)
                fds = self._fds_locked()
                if fds is None:
                    return NO_STATS
            every = not (turn or notified)
            if self._fast:
                try:
                    out: CgroupStats = self._reader.read(2 if turn else 1 if notified else 0)
                except (OSError, ValueError):
                    # An older kernel's format (no oom_kill line before 4.13...) or a vanished file:
                    # take the careful path from now on.
                    self._fast = False
                else:
                    if every and self._pids_by_path:
                        out = out._replace(pids_max_events=self._pids_events_by_path())
                    return out
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
            if self._pids_by_path:
                seen = self._seen_pids if self._quiet & QUIET_PIDS and not every else None
                out = out._replace(pids_max_events=seen if seen is not None else self._pids_events_by_path())
            return out

    def _pids_events_by_path(self) -> int | None:
        """v1 pids.events' count, opened by path (`_pids_by_path`: no fd is held for it). None when it
        cannot be read."""
        d = self._dirs.get("pids")
        if d is None:
            return None
        try:
            fd = os.open(f"{d}/pids.events", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            return field_value(os.pread(fd, 64, 0), b"max ")
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

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
        - v1 memory.oom_control, memory limit the kernel's: `notifiers`' one OOM eventfd for all leaves,
          registered on the leaf's directory once (an open and a write; not again for a reused leaf's next
          child), which every OOM at the limit signals; quiet until it is signalled and this counter moved
          (`oom_moved`), and only when it reads 0 here. A kill by the machine-wide OOM killer moves the
          counter unsignalled: the final sample reads it.
        - v1, no such limit (and no NEEDS_EXACT): no limit needs the counter live (an ancestor's limit or
          the machine-wide OOM killer are what could move it): quiet for good; the final sample reads it.
          Likewise pids.events without a pids limit (v1 sends no notification for it): quiet from the
          leaf's creation, with no fd (`_pids_by_path`), opened here only if NEEDS_EXACT.
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
                if not quiet_pids and self._pids_by_path:
                    fds = self._pids_events_fd(fds)
            shared_v1 = False
            if self.versions.get("memory") == 2:
                quiet_oom = notifiers.add(owner, fds[2], select.EPOLLPRI, OOM)
            elif needs & NEEDS_MEMORY and not exact:
                quiet_oom = shared_v1 = self._v1_oom_notifier(notifiers, owner, fds[2])
            else:
                quiet_oom = not exact and not needs & NEEDS_MEMORY
            with contextlib.suppress(OSError, ValueError):
                if quiet_pids and not self._pids_by_path:  # by path: held quiet since the fds were opened
                    self._seen_pids = field_value(os.pread(fds[5], 64, 0), b"max ")
                    if self._seen_pids is not None:
                        self._quiet |= QUIET_PIDS
                if quiet_oom:
                    self._seen_oom = field_value(os.pread(fds[2], 256, 0), b"oom_kill ")
                    # v1's shared eventfd says only that some leaf's counter may have moved: `oom_moved`
                    # compares with this value, so a kill between the registration and this read would pass
                    # unseen. A leaf starts at 0 (a kept one is kept only at 0): at any other value the
                    # counter is read every round instead.
                    if self._seen_oom is not None and not (shared_v1 and self._seen_oom != 0):
                        self._quiet |= QUIET_OOM
            self._reader_fds()

    def disarm(self) -> None:
        """No notifier is registered by `arm` from now on. The supervisor calls it when the child is done,
        before it discards the child's notifiers: an `arm` racing with the end (the sampler's round began
        before it) then registers nothing that would outlive the discard. Thread-safe."""
        with self._lock:
            self._armed = True

    def _pids_events_fd(self, fds: _Fds) -> _Fds:
        """Open pids.events after all (a leaf held it by path, and something needs it live): the new fds, the
        count no longer held quiet. With the lock held."""
        d = self._dirs["pids"]
        try:
            fd = os.open(f"{d}/pids.events", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            fd = -1
        fds = self._fds = (*fds[:5], fd)
        self._pids_by_path = False
        self._fast = self._fast and fd >= 0
        self._quiet &= ~QUIET_PIDS
        self._seen_pids = None
        self._reader_fds()
        return fds

    def _v1_oom_notifier(self, notifiers: Notifiers[Owner], owner: Owner, oom_control_fd: int) -> bool:
        registered = self._oom_token == notifiers.token
        if not notifiers.add_v1_oom(owner, self._dirs["memory"], oom_control_fd, registered, self.oom_moved):
            return False
        self._oom_token = notifiers.token
        return True

    def oom_moved(self) -> bool:
        """v1, the shared OOM eventfd signalled: whether this leaf's OOM counter moved since it went quiet
        (one pread; True when it cannot be read, so that it is read every round from then on). False when it
        is not quiet (it is read every round already) or once the fds are closed. Thread-safe."""
        with self._lock:
            fds = self._fds
            if fds is None or not self._quiet & QUIET_OOM:
                return False
            try:
                return field_value(os.pread(fds[2], 256, 0), b"oom_kill ") != self._seen_oom
            except (OSError, ValueError):
                return True

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
            self._removed = True
