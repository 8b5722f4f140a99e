"""The fork server's pool of network namespaces (runs in the fork server: standard library and corral's C
extension only)."""

from __future__ import annotations

import errno
import os
import resource
import select

from supervisor.sandbox import _cinit


class NetPool:
    """Network namespaces lent to sandboxes, each to one sandbox at a time and only among sandboxes of the
    same policy and workdir (the pre-forked sandboxes' key).

    Why: making and destroying a network namespace (its sysctl tables, loopback, and the kernel's
    cleanup_net worker afterwards) is the largest single cost of a sandbox, ~0.7 ms of CPU on the 2-vCPU
    machine of docs/benchmarks-engine.md. Only a fork server running as root can pool them (the namespaces
    are its own, in the initial user namespace: `_cinit.netns_new`); otherwise `enabled` turns False at
    the first attempt and every sandbox makes its own, as before.

    What a borrower gets is what a new namespace is: loopback up and nothing else. The sandbox cannot
    change the namespace itself (interfaces, addresses, routes, sysctls, netfilter need capabilities over
    the namespace's owner, the initial user namespace, which no sandbox has). What it leaves are sockets,
    and they die with its processes: a namespace goes back to the pool when the init that borrowed it has
    exited (its pidfd polls readable; the init is pid 1, so every process of the sandbox is gone by then),
    and is lent again only if `_cinit.netns_unused` finds it as new: no socket, no TIME-WAIT connection, no
    IPv6 flow label, and not one packet counted on loopback (so nothing that traffic leaves: counters, TCP
    metrics, route exceptions); else it is dropped and a new one made. A sandbox that used the network
    therefore costs a new namespace; one that did not (most short commands) reuses it. Left over, and
    documented (docs/architecture.md): counters a send that found no route bumps without a packet.
    """

    MAX_IDLE = 64

    def __init__(self) -> None:
        self.enabled = True
        # An entry: (netns, sysfs, sockstat, ip6_flowlabel, dev): the namespace, its sysfs mount and the
        # /proc/net files `_cinit.netns_unused` reads (flowlabel -1 without IPv6); lent with the borrower's
        # pidfd after them.
        self._idle: dict[tuple[int, str], list[tuple[int, ...]]] = {}
        self._lent: dict[tuple[int, str], list[tuple[int, ...]]] = {}
        self._n_idle = 0
        self._n_lent = 0
        # Each lent namespace holds six of this process's fds: stay well inside its fd limit (the soft
        # one, which sandboxes inherit and so is not raised here); past it, sandboxes make their own.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_lent = max(0, (min(soft, 1 << 16) - 256) // 6 - self.MAX_IDLE)
        self._sweep_at = 4 * self.MAX_IDLE

    def take(self, key: tuple[int, str]) -> tuple[int, ...] | None:
        """A namespace for a sandbox of `key`: (netns fd, sysfs mount fd, its three state files' fds), or
        None (make its own)."""
        if not self.enabled:
            return None
        if self._n_lent >= self._max_lent:
            for other in list(self._lent):
                self._reclaim(other)
            if self._n_lent >= self._max_lent:
                return None
        if not self._idle.get(key):
            self._reclaim(key)
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()
            self._n_idle -= 1
            if not idle:
                del self._idle[key]  # no empty list left behind per key: keys come and go
            try:
                if _cinit.netns_unused(entry[2], entry[3], entry[4]):
                    return entry
            except OSError:
                pass
            close_all(*entry)
        try:
            return _cinit.netns_new()
        except OSError as err:
            if err.errno in (errno.EPERM, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                self.enabled = False  # not root, or no new mount API: sandboxes make their own
            return None

    def lend(self, key: tuple[int, str], entry: tuple[int, ...], pidfd: int) -> None:
        """`entry` is in use by the sandbox whose init `pidfd` refers to."""
        try:
            pidfd = os.dup(pidfd)
        except OSError:  # no fd left: the sandbox keeps the namespace alive; the pool forgets it
            close_all(*entry)
            return
        self._lent.setdefault(key, []).append((*entry, pidfd))
        self._n_lent += 1
        if self._n_lent > self._sweep_at:  # keys no longer used still hold theirs: look at all, now and then
            for other in list(self._lent):
                self._reclaim(other)
            self._sweep_at = max(4 * self.MAX_IDLE, 2 * self._n_lent)

    def unused(self, key: tuple[int, str], entry: tuple[int, ...]) -> None:
        """`entry` was taken but no sandbox entered it."""
        self._keep(key, entry)

    def _reclaim(self, key: tuple[int, str]) -> None:
        """Back to idle: the namespaces of `key` whose borrower has exited."""
        lent = self._lent.get(key)
        if not lent:
            return
        poller = select.poll()
        for entry in lent:
            poller.register(entry[-1], select.POLLIN)
        done = {fd for fd, _ev in poller.poll(0)}
        if not done:
            return
        still = []
        for entry in lent:
            pidfd = entry[-1]
            if pidfd in done:
                os.close(pidfd)
                self._n_lent -= 1
                self._keep(key, entry[:-1])
            else:
                still.append(entry)
        if still:
            self._lent[key] = still
        else:
            del self._lent[key]

    def _keep(self, key: tuple[int, str], entry: tuple[int, ...]) -> None:
        """Keep `entry` idle for `key`; when MAX_IDLE are idle, the least recently kept key's oldest
        goes (keys come and go: a workdir used once must not hold a namespace the next ones could use)."""
        if self._n_idle >= self.MAX_IDLE:
            old_key, old = next(iter(self._idle.items()))
            close_all(*old.pop(0))
            self._n_idle -= 1
            if not old:
                del self._idle[old_key]
        idle = self._idle.pop(key, [])  # re-inserted last: dicts keep insertion order
        idle.append(entry)
        self._idle[key] = idle
        self._n_idle += 1

    def forget(self, policy_id: int) -> None:
        """Close the idle namespaces of this policy's keys (no sandbox of it will borrow them). Lent ones
        come back idle when their borrower exits, and go first when the pool is full."""
        for key in [k for k in self._idle if k[0] == policy_id]:
            for entry in self._idle.pop(key):
                close_all(*entry)
                self._n_idle -= 1


def close_all(*fds: int) -> None:
    """Close each fd of a pool entry (-1: a state file this kernel lacks)."""
    for fd in fds:
        if fd >= 0:
            os.close(fd)
