"""inotify watches on the leaf directories of the post-run git scan's snapshots (supervisor/_gitscan.py).

A leaf is a directory whose listing holds nothing the scan looks at: no subdirectory and none of git's
names (a loose-object directory such as `.git/objects/ab`, a source directory holding only files). The
scan cares only whether a leaf gains an entry (a subdirectory, a `HEAD`...), loses one, or is replaced,
and every such change is a namespace operation on the leaf (create, mkdir, mknod, symlink, link, rename
into or out of it, unlink, rmdir) or an attribute change of the leaf itself; the VFS reports each one to
inotify on the leaf's inode (IN_CREATE, IN_DELETE, IN_MOVED_FROM/TO, IN_ATTRIB, IN_DELETE_SELF,
IN_MOVE_SELF), from whatever mount namespace it was made. A leaf replaced or renamed in its parent is
also a change of the parent, which the snapshot watches by ctime on a held fd.

So a snapshot watches its leaves with one inotify instance shared by the supervisor's snapshots (one fd,
whatever their number; the per-user limit of instances is 128), instead of holding an fd per leaf (which
the snapshot's fd bound made impossible for any repository with history: ~250 object directories) or
fstat-ing each by name on the event loop (1.5-2 us per call on the shared machine, ~0.4 ms for 250: more
than the worker-thread hop the snapshot exists to save). The event loop asks only whether any event is
queued (`pending`: one FIONREAD ioctl). Which snapshots an event concerns is sorted out in the worker
thread (`drain`), never on the loop, and an event, whatever it is (an overflow, a watch the kernel removed),
only ever marks snapshots changed: a wrong guess costs a full scan, never a missed change. The one event
passed over is a file's own attribute change in a leaf (IN_ATTRIB with the file's name: chmod, touch),
which changes no name or type there.

Thread-safety: every method but `pending` runs under the owning Listings' lock; `pending` only reads the
queue's length.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import termios
import time
from typing import Protocol

IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
#: Every change of a leaf's entries or of the leaf itself (IN_MODIFY, a file's data written, is not one).
LEAF_EVENTS = IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)

_libc = ctypes.CDLL(None, use_errno=True)
_init1 = getattr(_libc, "inotify_init1", None)
_add = getattr(_libc, "inotify_add_watch", None)
_rm = getattr(_libc, "inotify_rm_watch", None)


class Owner(Protocol):
    """What a watch belongs to (a Snapshot): marked changed by any event on one of its watches."""

    dirty: bool


def watch_budget() -> int:
    """Watches all snapshots together may hold: 1/16 of the user's `fs.inotify.max_user_watches` (shared
    with the user's editors and file watchers), at most 4,096; 0 when inotify is unavailable."""
    if _init1 is None or _add is None:
        return 0
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as f:
            limit = int(f.read().strip() or b"0")
    except (OSError, ValueError):
        limit = 8192  # the kernel's old default
    return min(4096, limit // 16)


class Watcher:
    """One inotify instance, made on first use, and which owners each watch descriptor serves (the kernel
    gives one inode one descriptor per instance, however often it is added). A descriptor no owner holds
    any more is kept (a spare, least recently released removed first past the budget), with the inode it
    watches: the next snapshot of the same tree adopts it (`adopt`) instead of adding it again, so that a
    tree that changes at every run does not pay an inotify_add_watch and an inotify_rm_watch per leaf each
    time."""

    def __init__(self) -> None:
        self.fd = -1
        self._owners: dict[int, list[Owner]] = {}
        self._inode: dict[int, tuple[int, int]] = {}  # wd -> (st_dev, st_ino), once told (`known`)
        self._by_inode: dict[tuple[int, int], int] = {}
        self._spares: dict[int, None] = {}  # wds no owner holds, oldest first
        self.budget = watch_budget()
        self._broken = False
        self._retry_ns = 0  # no instance to be had (EMFILE): not asked again before then

    def count(self) -> int:
        """Watches held now, spares included."""
        return len(self._owners)

    def watch(self, owner: Owner, path: bytes, follow: bool) -> int | None:
        """Watch the directory at `path` for `owner`; its descriptor, or None when it cannot be (no inotify,
        out of watches, gone, not a directory; `follow` False: a symlink at the final component is not
        followed, and is not a directory). Never raises."""
        if self._broken or _add is None:
            return None
        if self.fd < 0:
            if _init1 is None:
                self._broken = True
                return None
            if time.monotonic_ns() < self._retry_ns:
                return None
            fd = _init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:  # EMFILE (the user's 128 instances, or this process's fds), ENOSYS: no watches
                self._broken = ctypes.get_errno() != errno.EMFILE
                self._retry_ns = time.monotonic_ns() + 1_000_000_000  # not once per leaf
                return None
            self.fd = fd
        while len(self._owners) >= self.budget and self._spares:
            self._remove(next(iter(self._spares)))
        if len(self._owners) >= self.budget:
            return None
        mask = LEAF_EVENTS | IN_ONLYDIR | (0 if follow else IN_DONT_FOLLOW)
        wd = int(_add(self.fd, path, mask))
        if wd < 0:
            return None
        self._spares.pop(wd, None)
        self._owners.setdefault(wd, []).append(owner)
        return wd

    def known(self, wd: int, dev: int, ino: int) -> None:
        """The watch `wd` is on the inode (`dev`, `ino`) (its caller checked, after adding it)."""
        self._inode[wd] = (dev, ino)
        self._by_inode[(dev, ino)] = wd

    def adopt(self, owner: Owner, dev: int, ino: int) -> int | None:
        """The descriptor already watching the inode (`dev`, `ino`), now for `owner` too; None when there is
        none. Call `drain` first: a watch the kernel dropped (the inode gone) is known by its event."""
        wd = self._by_inode.get((dev, ino))
        if wd is None:
            return None
        self._spares.pop(wd, None)
        self._owners[wd].append(owner)
        return wd

    def release(self, owner: Owner, wds: list[int], spare: bool = True) -> None:
        """`owner` no longer needs `wds`: a descriptor no other owner holds becomes a spare (or is removed,
        when its inode was never told, or not `spare`)."""
        for wd in wds:
            owners = self._owners.get(wd)
            if owners is None:
                continue
            with contextlib.suppress(ValueError):
                owners.remove(owner)  # by identity: an Owner does not define ==
            if not owners:
                if spare and wd in self._inode:
                    self._spares[wd] = None
                else:
                    self._remove(wd)
        wds.clear()

    def _remove(self, wd: int) -> None:
        self._forget(wd)
        if _rm is not None and self.fd >= 0:
            _rm(self.fd, wd)  # EINVAL when the kernel removed it already: nothing to do

    def _forget(self, wd: int) -> None:
        self._owners.pop(wd, None)
        self._spares.pop(wd, None)
        inode = self._inode.pop(wd, None)
        if inode is not None and self._by_inode.get(inode) == wd:
            del self._by_inode[inode]

    def pending(self) -> bool:
        """Whether any event is queued (one ioctl: for the event loop). False without an instance."""
        if self.fd < 0:
            return False
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, buf, True)
        except OSError:
            return True
        return buf[0] > 0

    def drain(self) -> None:
        """Read every queued event and mark the owners of its watch changed; an overflow (or anything that
        cannot be read) marks every owner changed. Reads until the queue is empty, so that the events of
        watches removed meanwhile (IN_IGNORED) are read too, not left for the loop's `pending`."""
        if self.fd < 0:
            return
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._all_dirty()
                return
            if not data:
                return
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                off += _EVENT.size + length
                if wd < 0:  # IN_Q_OVERFLOW: events were lost
                    self._all_dirty()
                    continue
                if mask & ~IN_ISDIR == IN_ATTRIB and length:
                    continue  # a file's in the leaf (chmod, touch): names and types are as they were
                for owner in self._owners.get(wd, ()):
                    owner.dirty = True
                if mask & IN_IGNORED:  # the kernel dropped the watch (its inode gone): not adoptable
                    self._forget(wd)
                elif wd in self._spares:  # a spare whose leaf changed (listed again when next scanned):
                    self._remove(wd)  # removed, so that a busy tree no longer used keeps no queue filling

    def _all_dirty(self) -> None:
        for owners in self._owners.values():
            for owner in owners:
                owner.dirty = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._owners.clear()
        self._inode.clear()
        self._by_inode.clear()
        self._spares.clear()
