"""Kernel notifications of a leaf's event counters (OOM kills, forks refused at pids.max), so that the
sampler need not read every child's counters every round (docs/cgroups.md, "Event counters by
notification").

- `memory.events` (cgroup v2) and `pids.events` (v1 and v2): the kernel calls kernfs_notify on the file
  whenever a counter in it moves (cgroup_file_notify, at most every 20 ms per file). That wakes pollers
  with EPOLLPRI (and hands inotify an IN_MODIFY): the leaf's own sampling fd, registered for EPOLLPRI alone,
  turns ready. Waiting for EPOLLIN (what anyio.wait_readable and the v1 eventfd use) never tells: kernfs
  reports every file readable at all times. A pread of the fd re-arms it.
- `memory.oom_control` (cgroup v1): ONE eventfd for all leaves (`Notifiers.add_v1_oom`), registered in
  each leaf's `cgroup.event_control` (once per leaf directory: the registration outlives the child, so a
  reused leaf keeps it); the kernel signals it when a cgroup, or an ancestor, hits its limit
  (mem_cgroup_oom_notify), before or as it kills, and when a registered cgroup is removed. A signal does
  not say which leaf: the sampler then preads the OOM counter of every leaf registered (one pread each, only
  in a round where it was signalled) and counts as fired those that moved. One eventfd per leaf was one more
  fd per live child (10 in all on v1: 2,000 children were the host's RLIMIT_NOFILE of 20,000). Not for a
  kill by the machine-wide OOM killer, which moves the counter silently: so on v1 only the rounds between
  full ones rely on it.

One epoll instance holds every child's notifiers; the sampler polls it with a zero timeout once per round
(one syscall for all children). A notifier that fired is dropped: the sampler then reads that counter every
round, as it does for children without one. Synchronous; call it off the event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

#: What owns a leaf's notifiers (the Supervisor's: a Child).
Owner = TypeVar("Owner", bound=Hashable)

#: The notifier kinds: the OOM counter's file, pids.events.
OOM = "oom"
PIDS = "pids"

_tokens = itertools.count(1)


def register_v1_oom(efd: int, memory_dir: str, oom_control_fd: int) -> None:
    """Have the kernel signal the eventfd `efd` on an OOM in the v1 memory cgroup `memory_dir`, whose
    memory.oom_control is open as `oom_control_fd` (the registration holds the cgroup, not that fd: it lasts
    until the cgroup is removed or `efd` closed). Raises OSError."""
    ctl = os.open(f"{memory_dir}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(ctl, f"{efd} {oom_control_fd}".encode())
    finally:
        os.close(ctl)


class Notifiers(Generic[Owner]):
    """Every child's event-counter notifiers in one epoll instance, at most one per kind (OOM, PIDS) and
    owner. `add` and `fired` run in the sampler's worker thread, `discard` on the event loop when a child is
    done; thread-safe."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[Owner, str]] = {}  # fd -> (owner, kind)
        self._fds: dict[Owner, dict[str, int]] = {}  # owner -> kind -> fd
        #: The v1 OOM eventfd shared by every leaf (made now, not at the first v1 leaf: the supervisor's fd
        #: count then holds still from its start), and the owners registered with it: owner -> whether its
        #: counter moved since it went quiet (`LeafSampler.oom_moved`).
        self._v1_efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self._ep.register(self._v1_efd, select.EPOLLIN)
        except BaseException:
            os.close(self._v1_efd)
            self._ep.close()
            raise
        self._v1: dict[Owner, Callable[[], bool]] = {}
        #: Which Notifiers a leaf's registration is with (`LeafSampler`'s `_oom_token`): never reused.
        self.token = next(_tokens)
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

    def add_v1_oom(
        self, owner: Owner, memory_dir: str, oom_control_fd: int, registered: bool, moved: Callable[[], bool]
    ) -> bool:
        """Watch the v1 OOM counter of the leaf `memory_dir` (its memory.oom_control open as
        `oom_control_fd`) as `owner`'s OOM notifier, through the shared eventfd, registering it in the leaf's
        cgroup.event_control unless `registered` (the leaf's directory was registered with this Notifiers
        for an earlier child). `moved` says whether the counter moved since the owner's last read: called
        (from `fired`, without this object's lock) for every owner when the eventfd is signalled. False when
        it cannot be watched (that counter is then read every round). Raises nothing."""
        with self._lock:
            if self._ep.closed:
                return False
            if not registered:
                try:
                    register_v1_oom(self._v1_efd, memory_dir, oom_control_fd)
                except OSError:
                    return False
            self._v1[owner] = moved
            self.registered += 1
            return True

    def discard(self, owner: Owner) -> None:
        """Stop watching `owner`'s notifiers (before its leaf closes them)."""
        with self._lock:
            self._v1.pop(owner, None)
            for fd in self._fds.pop(owner, {}).values():
                self._owners.pop(fd, None)
                if not self._ep.closed:
                    with contextlib.suppress(OSError):
                        self._ep.unregister(fd)

    def fired(self) -> dict[Owner, set[str]]:
        """The owners whose notifiers fired since the last call, with the kinds that did (each is no longer
        watched). Never waits. With the shared v1 eventfd signalled, one call of each of its owners' `moved`
        (a pread each)."""
        with self._lock:
            if not (self._owners or self._v1) or self._ep.closed:
                return {}
            try:
                events = self._ep.poll(0)
            except OSError:
                return {}
            out: dict[Owner, set[str]] = {}
            shared: list[tuple[Owner, Callable[[], bool]]] = []
            for fd, _mask in events:
                if fd == self._v1_efd:
                    with contextlib.suppress(OSError):
                        os.eventfd_read(fd)  # drained: level-triggered, it would fire every round
                    shared = list(self._v1.items())
                    continue
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
        # The shared v1 eventfd says that some leaf's OOM counter may have moved (or that a registered leaf
        # was removed): those whose counter did are fired. Without the lock: `moved` takes the leaf's, which
        # `LeafSampler.arm` holds while it calls `add_v1_oom`.
        for owner, moved in shared:
            if moved():
                with self._lock:
                    if self._v1.pop(owner, None) is None:
                        continue  # discarded meanwhile
                    out.setdefault(owner, set()).add(OOM)
                    self.fired_total += 1
        return out

    def close(self) -> None:
        """Stop watching; close the epoll instance and the shared v1 eventfd (which ends its registrations:
        the kernel drops them when the eventfd is released). Idempotent."""
        with self._lock:
            self._owners.clear()
            self._fds.clear()
            self._v1.clear()
            if not self._ep.closed:
                self._ep.close()
                os.close(self._v1_efd)
