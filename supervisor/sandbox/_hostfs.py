"""Host-side file access to paths a sandbox could have written: never follows a symlink below the root it
was given, never blocks, reads regular files only and only up to a bound, and walks directories only up to a
node count. Standard library only (runs in the fork server as well as in the supervisor's worker threads).

Why: the supervisor and the fork server run as the caller (root, for a root caller) and look into writable
roots when they plan the next sandbox's view (.git/config, .git/modules, a missing .git/hooks to create).
Whatever is there was possibly left by an earlier sandbox: a `.git -> /elsewhere` symlink would make root
create directories outside the root, a FIFO at .git/config would block the reader for ever, a symlink loop or
100,000 entries under .git/modules would make a walk endless.

Paths are resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) under an fd
of the root (Linux 5.6+); on older kernels, one component at a time with O_NOFOLLOW and no "..". The root
itself is the caller's (a policy path): it is opened as given.

Every refusal is an `Unsafe` (a SetupFailure): it names the path, says what is wrong with it and which path
to remove or repair, so that something odd planted in a workdir is reported, not silently followed, and
never bricks the workdir without saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat

from supervisor.sandbox import _sys

_NR_OPENAT2 = 437  # the same on x86_64 and aarch64 (the generic table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

#: Largest file read (a git config is a few KiB; one of a MiB is already absurd).
MAX_READ = 1 << 20
#: Most directory entries one walk looks at (a repository with 200 submodules needs ~1,000).
MAX_NODES = 10_000
#: Deepest directory one walk descends to, below its start.
MAX_DEPTH = 16

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symlink",
    stat.S_IFDIR: "a directory",
    stat.S_IFREG: "a regular file",
}


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_have_openat2: bool | None = None  # unknown until the first call


class Unsafe(_sys.SetupFailure):
    """A path under a root that corral refuses to act on (a symlink, not a regular file, too large, a walk
    over its bounds). `path` is what to remove or repair."""

    def __init__(self, operation: str, path: str, what: str, err: int = 0) -> None:
        super().__init__(
            "mounts",
            operation,
            err,
            path,
            f"{what}; corral does not follow or read such a path in a writable root (a sandbox may have "
            f"planted it): remove or repair {path}",
        )


def kind(mode: int) -> str:
    """'a FIFO', 'a symlink', ...: what a file of this st_mode is, for messages."""
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def entry_type(entry: os.DirEntry[str], other: int = 0) -> int:
    """The file type of a directory entry, from its d_type (no stat unless the file system gives none), no
    link followed: S_IFLNK, S_IFDIR, S_IFREG, or `other` for anything else (a FIFO, socket or device)."""
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return other


def _openat2(dirfd: int, rel: str, flags: int) -> int:
    global _have_openat2
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE)
    while True:
        fd = int(
            _syscall(
                ctypes.c_long(_NR_OPENAT2),
                ctypes.c_int(dirfd),
                ctypes.c_char_p(os.fsencode(rel)),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            _have_openat2 = True
            return fd
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # RESOLVE_* lookups retry when a rename raced them
            continue
        if err == errno.ENOSYS and not _have_openat2:
            _have_openat2 = False
        raise OSError(err, os.strerror(err), rel)


def _walk_open(dirfd: int, rel: str, flags: int) -> int:
    """openat2's semantics, one component at a time (kernels before 5.6): O_NOFOLLOW on every component
    (ELOOP on a symlink, as RESOLVE_NO_SYMLINKS), no '..' (EXDEV, as RESOLVE_BENEATH)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), rel)
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(dirfd: int, rel: str, flags: int) -> int:
    """Open `rel` under the directory `dirfd`, following no symlink and never leaving it. Raises OSError:
    ELOOP for a symlink on the way (the last component included), EXDEV for an escape, ENOENT/ENOTDIR."""
    if _have_openat2 is not False:
        try:
            return _openat2(dirfd, rel, flags)
        except OSError as err:
            if err.errno != errno.ENOSYS or _have_openat2:
                raise
    return _walk_open(dirfd, rel, flags)


def open_root(root: str) -> int:
    """An O_PATH fd of the directory `root` (the caller's own path, opened as given). Raises OSError."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def lstat_beneath(rootfd: int, rel: str) -> os.stat_result | None:
    """lstat of `rel` under `rootfd` whose parents are real directories: None when it (or a parent) is
    missing. Raises Unsafe when a parent is a symlink, OSError otherwise."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = open_beneath(rootfd, parent, os.O_PATH | os.O_DIRECTORY) if parent else os.dup(rootfd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if err.errno in (errno.ELOOP, errno.EXDEV):
            raise Unsafe("openat2(RESOLVE_NO_SYMLINKS)", parent, "a symlink on the way", err.errno) from err
        raise
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(fd)


def read_file(rootfd: int, rel: str, path: str, limit: int = MAX_READ) -> bytes | None:
    """The content of the regular file `rel` under `rootfd` (`path` is its name in messages), or None when
    it does not exist. Opened O_NONBLOCK | O_NOFOLLOW (a FIFO or device neither blocks the open nor is
    read). Raises Unsafe (a symlink on the way, not a regular file, larger than `limit`), OSError."""
    try:
        fd = open_beneath(rootfd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if err.errno in (errno.ELOOP, errno.EXDEV):
            raise Unsafe("open(O_NOFOLLOW)", path, "it is or passes through a symlink", err.errno) from err
        if err.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket
            raise Unsafe(
                "read (regular files only)", path, "not a regular file (a socket?)", err.errno
            ) from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe("read (regular files only)", path, f"{kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise Unsafe(
                "read (bounded)", path, f"{st.st_size} bytes, over corral's bound of {limit}", errno.EFBIG
            )
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # grew since fstat
            raise Unsafe("read (bounded)", path, f"over corral's bound of {limit} bytes", errno.EFBIG)
        return b"".join(chunks)
    finally:
        os.close(fd)


_SUB_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Walk:
    """A node budget shared by the listings of one walk (`MAX_NODES` entries, `MAX_DEPTH` levels)."""

    def __init__(self, top: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
        self.top = top
        self.left = max_nodes
        self.max_nodes = max_nodes
        self.max_depth = max_depth

    def listdir(self, rootfd: int, rel: str, path: str, depth: int) -> list[tuple[str, int]] | None:
        """(name, d_type-derived st_mode file type) of each entry of directory `rel` under `rootfd`, sorted;
        None when it does not exist or is not a directory. Raises Unsafe (a symlink on the way, the walk over
        its node or depth bound)."""
        if depth > self.max_depth:  # before the open (list_fd checks it too)
            raise Unsafe(
                "walk (bounded)", path, f"deeper than {self.max_depth} levels below {self.top}", errno.ELOOP
            )
        try:
            fd = open_beneath(rootfd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if err.errno in (errno.ELOOP, errno.EXDEV):
                raise Unsafe("open(O_NOFOLLOW)", path, "a symlink", err.errno) from err
            raise
        try:
            return self.list_fd(fd, path, depth)
        finally:
            os.close(fd)

    def open_sub(self, fd: int, name: str, path: str) -> int | None:
        """An fd of the subdirectory `name` of the directory `fd` (`path` in messages), opened with
        O_NOFOLLOW from `fd` (one syscall, no path resolved again from the root); None when it is gone or
        not a directory. Raises Unsafe when it is a symlink, OSError."""
        try:
            return os.open(name, _SUB_FLAGS, dir_fd=fd)
        except OSError as err:
            if err.errno == errno.ENOTDIR:  # what O_DIRECTORY | O_NOFOLLOW answers for a symlink too
                try:
                    link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    link = False
                if link:
                    raise Unsafe("open(O_NOFOLLOW)", path, "a symlink", errno.ELOOP) from err
                return None
            if err.errno == errno.ENOENT:
                return None
            if err.errno == errno.ELOOP:
                raise Unsafe("open(O_NOFOLLOW)", path, "a symlink", err.errno) from err
            raise

    def list_fd(self, fd: int, path: str, depth: int) -> list[tuple[str, int]]:
        """`listdir` of the directory open as `fd` (not closed here)."""
        if depth > self.max_depth:
            raise Unsafe(
                "walk (bounded)", path, f"deeper than {self.max_depth} levels below {self.top}", errno.ELOOP
            )
        out: list[tuple[str, int]] = []
        with os.scandir(fd) as it:
            for entry in it:
                self.left -= 1
                if self.left < 0:
                    raise Unsafe(
                        "walk (bounded)",
                        self.top,
                        f"more than {self.max_nodes} entries under it (last seen in {path})",
                        errno.E2BIG,
                    )
                out.append((entry.name, entry_type(entry)))
        out.sort()
        return out


def mkdir_beneath(rootfd: int, rel: str, path: str, mode: int = 0o755) -> bool:
    """mkdir `rel` under `rootfd` when its parent is a real directory (no symlink on the way): True when
    made, False when the parent is missing or `rel` exists. Raises Unsafe (a symlink on the way), OSError."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = open_beneath(rootfd, parent, os.O_PATH | os.O_DIRECTORY) if parent else os.dup(rootfd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        if err.errno in (errno.ELOOP, errno.EXDEV):
            raise Unsafe(
                "openat2(RESOLVE_NO_SYMLINKS)", path, "it passes through a symlink", err.errno
            ) from err
        raise
    try:
        os.mkdir(name, mode, dir_fd=fd)  # mkdirat: never follows a symlink at `name` (EEXIST)
        # Made by root for another account's repository (.git/hooks in a developer's checkout): it belongs
        # to the owner of its parent, as if git had made it, not to root (which would leave the user a
        # hooks directory they cannot write). No link is followed (a link swapped in meanwhile: lchown).
        owner = os.fstat(fd)
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            with contextlib.suppress(OSError):
                os.chown(name, owner.st_uid, owner.st_gid, dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        return False
    finally:
        os.close(fd)
    return True
