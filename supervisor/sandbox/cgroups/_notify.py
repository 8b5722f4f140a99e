"""Kernel notifications of a leaf's OOM events, so that the sampler need not read every memory-limited
child's OOM counter every round (docs/architecture.md, "The sampler").

- cgroup v1: an eventfd registered for `memory.oom_control` through `cgroup.event_control`; the kernel
  signals it when the cgroup hits an OOM (mem_cgroup_oom_notify), before or as it kills.
- cgroup v2: not used. `memory.events` should poll EPOLLPRI whenever a counter moves (kernfs_notify), but a
  notifier on it did not fire in the v2 test VM; until a test shows it does, v2 leaves have their counters
  read every round, as before.

One epoll instance holds every child's notifier; the sampler polls it with a zero timeout once per round (one
syscall for all children). A notifier that fired is dropped: the sampler then reads that child's counters
every round, as it does for children without one. Synchronous; call it off the event loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Hashable


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


class OomEvents:
    """Every child's OOM notifier in one epoll instance. `add` and `fired` run in the sampler's worker
    thread, `discard` on the event loop when a child is done; thread-safe."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._lock = threading.Lock()
        self._owners: dict[int, Hashable] = {}  # fd -> owner (a Child)
        self._fds: dict[Hashable, int] = {}
        #: Notifiers registered and fired so far (tests and benchmarks read them).
        self.registered = 0
        self.fired_total = 0

    def add(self, owner: Hashable, fd: int, events: int) -> bool:
        """Watch `fd` (a leaf's notifier, which the leaf owns and closes) for `owner`. False when it
        cannot be (the owner then has its counters read every round)."""
        with self._lock:
            if fd < 0 or self._ep.closed:
                return False
            try:
                self._ep.register(fd, events)
            except OSError:
                return False
            stale = self._owners.get(fd)  # an owner discarded before it was added: its fd was closed
            if stale is not None:
                self._fds.pop(stale, None)
            self._owners[fd] = owner
            self._fds[owner] = fd
            self.registered += 1
            return True

    def discard(self, owner: Hashable) -> None:
        """Stop watching `owner`'s notifier (before its leaf closes it)."""
        with self._lock:
            fd = self._fds.pop(owner, None)
            if fd is None:
                return
            self._owners.pop(fd, None)
            if not self._ep.closed:
                with contextlib.suppress(OSError):
                    self._ep.unregister(fd)

    def fired(self) -> set[Hashable]:
        """The owners whose notifier fired since the last call (each is no longer watched). Never waits."""
        with self._lock:
            if not self._owners or self._ep.closed:
                return set()
            try:
                events = self._ep.poll(0)
            except OSError:
                return set()
            out: set[Hashable] = set()
            for fd, _mask in events:
                owner = self._owners.pop(fd, None)
                with contextlib.suppress(OSError):
                    self._ep.unregister(fd)
                if owner is not None:
                    self._fds.pop(owner, None)
                    out.add(owner)
            self.fired_total += len(out)
            return out

    def close(self) -> None:
        with self._lock:
            self._owners.clear()
            self._fds.clear()
            self._ep.close()
