"""Kernel notifications of a leaf's event counters (OOM kills, forks refused at pids.max), so that the
sampler need not read every child's counters every round (docs/cgroups.md, "Event counters by
notification").

- `memory.events` (cgroup v2) and `pids.events` (v1 and v2): the kernel calls kernfs_notify on the file
  whenever a counter in it moves (cgroup_file_notify, at most every 20 ms per file). That wakes pollers
  with EPOLLPRI (and hands inotify an IN_MODIFY): the leaf's own sampling fd, registered for EPOLLPRI alone,
  turns ready. Waiting for EPOLLIN (what anyio.wait_readable and the v1 eventfd use) never tells: kernfs
  reports every file readable at all times. A pread of the fd re-arms it.
- `memory.oom_control` (cgroup v1): an eventfd registered through `cgroup.event_control`; the kernel
  signals it when the cgroup, or an ancestor, hits its limit (mem_cgroup_oom_notify), before or as it kills.
  Not for a kill by the machine-wide OOM killer, which moves the counter silently: so on v1 only the
  rounds between full ones rely on it.

One epoll instance holds every child's notifiers; the sampler polls it with a zero timeout once per round
(one syscall for all children). A notifier that fired is dropped: the sampler then reads that counter every
round, as it does for children without one. Synchronous; call it off the event loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

#: What owns a leaf's notifiers (the Supervisor's: a Child).
Owner = TypeVar("Owner", bound=Hashable)

#: The notifier kinds: the OOM counter's file, pids.events.
OOM = "oom"
PIDS = "pids"


def open_v1_notifier(memory_dir: str, oom_control_fd: int) -> int:
    """An eventfd the kernel signals on an OOM in the v1 memory cgroup `memory_dir`, whose
    memory.oom_control is open as `oom_control_fd`. Raises OSError."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        ctl = os.open(f"{memory_dir}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(ctl, f"{efd} {oom_control_fd}".encode())
        finally:
            os.close(ctl)
    except OSError:
        os.close(efd)
        raise
    return efd


class Notifiers(Generic[Owner]):
    """Every child's event-counter notifiers in one epoll instance, at most one per kind (OOM, PIDS) and
    owner. `add` and `fired` run in the sampler's worker thread, `discard` on the event loop when a child is
    done; thread-safe."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[Owner, str]] = {}  # fd -> (owner, kind)
        self._fds: dict[Owner, dict[str, int]] = {}  # owner -> kind -> fd
        #: Notifiers registered and fired so far (tests and benchmarks read them).
        self.registered = 0
        self.fired_total = 0

    def add(self, owner: Owner, fd: int, events: int, kind: str = OOM) -> bool:
        """Watch `fd` (a leaf's notifier, which the leaf owns and closes) for `events`, as `owner`'s
        notifier of `kind`. False when it cannot be (that counter is then read every round)."""
        with self._lock:
            if fd < 0 or self._ep.closed:
                return False
            try:
                self._ep.register(fd, events)
            except OSError:
                return False
            stale = self._owners.get(fd)  # an owner discarded before it was added: its fd was closed
            if stale is not None:
                self._fds.get(stale[0], {}).pop(stale[1], None)
            self._owners[fd] = (owner, kind)
            self._fds.setdefault(owner, {})[kind] = fd
            self.registered += 1
            return True

    def discard(self, owner: Owner) -> None:
        """Stop watching `owner`'s notifiers (before its leaf closes them)."""
        with self._lock:
            for fd in self._fds.pop(owner, {}).values():
                self._owners.pop(fd, None)
                if not self._ep.closed:
                    with contextlib.suppress(OSError):
                        self._ep.unregister(fd)

    def fired(self) -> dict[Owner, set[str]]:
        """The owners whose notifiers fired since the last call, with the kinds that did (each is no longer
        watched). Never waits."""
        with self._lock:
            if not self._owners or self._ep.closed:
                return {}
            try:
                events = self._ep.poll(0)
            except OSError:
                return {}
            out: dict[Owner, set[str]] = {}
            for fd, _mask in events:
                entry = self._owners.pop(fd, None)
                with contextlib.suppress(OSError):
                    self._ep.unregister(fd)
                if entry is not None:
                    owner, kind = entry
                    kinds = self._fds.get(owner)
                    if kinds is not None:
                        kinds.pop(kind, None)
                        if not kinds:
                            del self._fds[owner]
                    out.setdefault(owner, set()).add(kind)
                    self.fired_total += 1
            return out

    def close(self) -> None:
        with self._lock:
            self._owners.clear()
            self._fds.clear()
            self._ep.close()
