"""A /dev/null the sandbox cannot chmod.

Every DEVNULL stdio of a sandbox is the supervisor's one open /dev/null, and `corral run < /dev/null` (cron,
CI) hands the command the caller's own. An open file keeps the mount it was opened on: the host's devtmpfs,
writable. A root caller's sandbox in a root-owned workdir is host uid 0, the owner of /dev/null, so
`fchmod(0, 0)` through that fd (no capability needed: an owner may chmod) took /dev/null away from every
non-root program of the host until someone noticed (tests/kernel/test_attack_variants.py). The sandbox's own
/dev/null, a bind on its read-only view, refuses chmod (EROFS); its inherited fds did not.

So a root supervisor opens /dev/null through a detached, read-only copy of its mount (`open_tree` with
OPEN_TREE_CLONE, `mount_setattr` MOUNT_ATTR_RDONLY, then an open of that copy): reads and writes of the device
work as ever (a read-only mount does not stop I/O to a device node), while chmod, chown, utimes and xattr
changes through the fd get EROFS. An ordinary caller's sandbox does not own /dev/null (EPERM already), and
cannot make such a copy (CAP_SYS_ADMIN), so it gets a plain open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import stat

# The generic syscall numbers (the same on x86_64 and aarch64).
_SYS_OPEN_TREE = 428
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

#: (major, minor) of /dev/null.
NULL_RDEV = os.makedev(1, 3)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_devnull(flags: int = os.O_RDWR) -> int:
    """An fd of /dev/null (`flags` plus O_CLOEXEC). For root, opened through a detached read-only copy of
    its mount, so that whoever holds the fd can read and write it but not change its mode, owner, times or
    attributes (EROFS); where that cannot be made (no CAP_SYS_ADMIN, a kernel before 5.12), a plain open.
    Raises OSError when /dev/null itself cannot be opened."""
    if os.geteuid() == 0:
        fd = open_read_only_copy(flags)
        if fd is not None:
            return fd
    return os.open(os.devnull, flags | os.O_CLOEXEC)


def is_devnull(fd: int) -> bool:
    """Whether `fd` is open on the /dev/null character device (any path, any mount)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL_RDEV


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once (find_library runs ldconfig). Raises OSError (errno 0) when it cannot be."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError as err:
        raise OSError(0, f"libc cannot be loaded ({err})") from err
    libc.syscall.restype = ctypes.c_long
    return libc


def clone_mount(where: int, path: bytes, attrs: int, userns: int = -1, trees: list[int] | None = None) -> int:
    """The O_PATH fd of a detached clone of the mount of `path` at dir fd `where` (b"": the file `where` is
    open on itself), given mount attributes `attrs` (and `userns` for MOUNT_ATTR_IDMAP). With `trees`, the
    clone's fd is appended to it as soon as it exists, even when this then raises, for the caller to close
    (closing it dissolves the clone's anonymous mount namespace, which waits for an RCU grace period:
    supervisor/_stdio_files.py closes them off the loop); without, it is closed here on failure. Raises
    OSError (errno 0 with a reason when libc cannot be loaded)."""
    libc = _libc()
    how = _AT_EMPTY_PATH if not path else 0
    tree = libc.syscall(
        ctypes.c_long(_SYS_OPEN_TREE),
        ctypes.c_int(where),
        ctypes.c_char_p(path),
        ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | how),
    )
    if tree < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"open_tree: {os.strerror(errno)}")
    if trees is not None:
        trees.append(tree)
    attr = _MountAttr(attrs, 0, 0, userns if userns >= 0 else 0)
    done = libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(tree),
        ctypes.c_char_p(b""),
        ctypes.c_uint(_AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if done < 0:
        errno = ctypes.get_errno()
        if trees is None:
            os.close(tree)
        raise OSError(errno, f"mount_setattr: {os.strerror(errno)}")
    return int(tree)


def open_read_only_copy(flags: int, fd: int | None = None) -> int | None:
    """/dev/null (or, given `fd`, the character device it is open on) opened with `flags` through a detached
    read-only copy of its mount; None when that cannot be made or the open does not give the same device."""
    if fd is None:
        where, path, want = -100, os.devnull.encode(), NULL_RDEV  # AT_FDCWD
    else:
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if not stat.S_ISCHR(st.st_mode):
            return None
        where, path, want = fd, b"", st.st_rdev
    try:
        tree = clone_mount(where, path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
    except OSError:
        return None
    try:
        # Reopened through the O_PATH fd of the copy: the new file keeps the copy's (read-only) mount,
        # and keeps it alive after the tree fd is closed. O_NONBLOCK: a terminal's open never waits.
        try:
            new = os.open(f"/proc/self/fd/{tree}", flags | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(new)
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == want):
                os.close(new)
                return None
            os.set_blocking(new, not flags & os.O_NONBLOCK)
        except OSError:
            os.close(new)
            return None
        return new
    finally:
        os.close(tree)
