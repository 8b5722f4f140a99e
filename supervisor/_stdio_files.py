"""Files the caller hands a command as its stdio or in `pass_fds`, kept out of the command's reach for
metadata.

A shell redirection (`corral run -- cmd < secret.pem > ~/log.txt`) or `stdin=fd` in the API gives the command
open files of the host's mounts, not of its read-only view, wherever they lie. As their owner (the sandbox's
uid: the caller, or root in a root-owned workdir) the command could `fchmod` them (a 0600 secret made 0644),
`fchown`, `futimens` and `fsetxattr` them, through the fd, a dup of it, or /proc/self/fd/N. No sandbox layer
can refuse that on the fd the caller gave without refusing the reads and writes asked for (seccomp cannot
tell a dup of fd 0 from any fd; Landlock has no right for metadata).

So the command gets another open file of the same file, through a mount it does not own
(docs/security.md, "Files given as stdio"). For a root supervisor (it may make mounts):
  - a regular file opened read-only: reopened through a detached, read-only clone of its mount
    (`open_tree(OPEN_TREE_CLONE)` of the file itself, `mount_setattr(MOUNT_ATTR_RDONLY)`): reads work,
    chmod, chown, utimes and xattr changes get EROFS;
  - a regular file opened for writing: reopened through a detached clone whose ids are mapped away
    (MOUNT_ATTR_IDMAP with a user namespace mapping host ids 0..2^31-2 onto 2^31..2^32-2, ids no account
    has): the write access was granted when the file was opened and stays, while through that mount the
    file belongs to an id the sandbox is not, so chmod, chown and explicit times get EPERM, and xattr
    changes and `touch` get EACCES (the sandbox's uid and groups are none of those ids: "other" bits);
  - /dev/null: the supervisor's own, opened through a read-only copy (supervisor/_devnull.py); another
    character device that is not a terminal: a read-only copy of its mount too (I/O to a device node works
    through a read-only mount).
An ordinary caller may not clone the host's mounts; its read-only regular files are reopened by a helper
process (_Helper) through a read-only clone of the helper's own copy of the file's mount, found again by
path and checked to be the same file. It cannot id-map anything of the host's.
The new open file has the original's access mode and status flags (O_APPEND, O_NONBLOCK, O_DIRECT,
O_NOATIME, O_SYNC, O_DSYNC) and its offset; when the child ends, the original's offset is set to where the
command left the new one's, so `{ corral run -- head -n1; cat; } < input` and `{ corral run -- echo a;
echo b; } > log` behave as with the original file. Two slots of one open file description (`2>&1`) get one
new open file, so they keep sharing an offset.

What cannot be protected that way is put back instead, when the child ends: the mode (never a set-id bit,
which a write by the command cleared) and the `user.*` extended attributes, as they were at the spawn. That
is an ordinary caller's file opened for writing (or removed since it was opened), a root caller's file
of a filesystem without id-mapped mounts (overlayfs, NFS, FUSE) opened for writing, a directory (a
read-only or id-mapped mount would also refuse the files the command creates in it), and a terminal (a
second open of a terminal changes its sessions' state). Each such file but a terminal is named in the
child's `missing` (layer `stdio_metadata`); a root supervisor also logs a warning, once per reason.

Pipes, sockets and anonymous inodes (an eventfd, a pidfd) are left alone: they have no metadata anyone else
reads.

The fds in `pass_fds` (the command's 3, 4, ...) are treated the same way, slot by slot after the three
stdio ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import platform
import queue
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio

from supervisor import _interpreter
from supervisor._devnull import (
    MOUNT_ATTR_IDMAP,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    NULL_RDEV,
    clone_mount,
    open_read_only_copy,
)

log = logging.getLogger("corral")

#: The layer name of an unprotected stdio file in a child's `missing`.
LAYER = "stdio_metadata"

_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_KCMP_FILE = 0

#: The id map of the id-mapped clones: host ids 0..2^31-2 seen as 2^31..2^32-2. Accounts keep to the lower
#: half (systemd's ranges end below 2^31; 2^32-1 is no id), so the sandbox (root, or a root-owned
#: workdir's owner) is neither the owner nor in the group of a file through that mount, while root's own
#: CAP_DAC_OVERRIDE still applies to it (the ids are valid). A workdir owned by an id of the upper half
#: would be the exception (its owner would own, through the clone, the files of id - 2^31).
ID_SHIFT = 1 << 31
_ID_MAP = f"0 {ID_SHIFT} {ID_SHIFT - 1}\n".encode()


#: The status flags a new open file keeps from the caller's.
_KEEP_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | os.O_SYNC | os.O_DSYNC

_SETID = stat.S_ISUID | stat.S_ISGID


class _Libc:
    """libc's `syscall`, loaded once (None where it cannot be): kcmp's."""

    fn: Callable[..., Any] | None = None
    loaded = False

    @classmethod
    def get(cls) -> Callable[..., Any] | None:
        if not cls.loaded:
            cls.loaded = True
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).syscall
            except (OSError, AttributeError):
                return None
            fn.restype = ctypes.c_long
            cls.fn = fn
        return cls.fn


class StdioShield:
    """A supervisor's means of protecting the files given as stdio: its /dev/null (`devnull`, already a
    read-only copy for root: supervisor/_devnull.py) and, made once on first need, the user namespace of
    the id-mapped clones. `protect` makes one spawn's StdioFiles."""

    def __init__(self, devnull: int) -> None:
        self.devnull = devnull
        self.root = os.geteuid() == 0
        self._userns = -1
        self._userns_tried = False
        self._userns_why = ""
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._helper: _Helper | None = None  # an ordinary caller's (below)
        self._helper_failed = False
        self._helper_why = ""
        self._doomed: queue.SimpleQueue[list[int] | None] | None = None  # discard's closer thread

    def discard(self, trees: list[int]) -> None:
        """Close the clones' tree fds `trees` in this shield's closer thread (started on first use): each
        close waits for an RCU grace period, which neither the event loop nor the spawn path should, and a
        worker thread per child would cost its hop. Never raises."""
        if not trees:
            return
        if self._doomed is None:
            self._doomed = queue.SimpleQueue()
            try:
                threading.Thread(
                    target=_closer, args=(self._doomed,), name="corral-stdio-closer", daemon=True
                ).start()
            except RuntimeError:  # no thread can be started: close them here
                self._doomed = None
                close_fds(trees)
                return
        self._doomed.put(trees)

    def close(self) -> None:
        """Close the user namespace fd and end the helper (the clones already made keep their mounts)."""
        if self._userns >= 0:
            os.close(self._userns)
            self._userns = -1
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        if self._doomed is not None:
            self._doomed.put(None)  # the closer thread ends once it has closed what it was given
            self._doomed = None

    def needs_thread(self, slots: list[int]) -> bool:
        """Whether `protect(slots)` would block, so runs in a worker thread: a root supervisor's first file
        opened for writing (the id-mapped clones' user namespace is made then, make_userns), or an ordinary
        caller's file opened read-only (a round trip to its helper, _Helper). Never raises."""
        if self.root:
            if self._userns_tried:
                return False
            want_writing = True
        elif self._helper_failed:
            return False
        else:
            want_writing = False
        for fd in slots:
            if fd < 0:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    writing = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
                    if writing == want_writing:
                        return True
            except OSError:
                continue
        return False

    async def protect_async(self, slots: list[int]) -> StdioFiles:
        """`protect(slots)`, in a worker thread when it would block (needs_thread). On cancellation, what
        was made is settled (after the thread's work ends: it is not interrupted)."""
        if not self.needs_thread(slots):
            return self.protect(slots)
        box: list[StdioFiles] = []
        try:
            await anyio.to_thread.run_sync(self._protect_into, slots, box)
        except BaseException:
            for files in box:
                files.close()
            raise
        return box[0]

    def _protect_into(self, slots: list[int], box: list[StdioFiles]) -> None:
        box.append(self.protect(slots))

    def make_userns(self) -> None:
        """Make the user namespace of the id-mapped clones, once (blocking, ~15 ms: a helper process
        unshares one and the supervisor writes its id maps; the supervisor itself is multi-threaded and
        cannot unshare a user namespace). On failure, the reason is kept and files opened for writing get
        the put-back instead. Never raises."""
        with self._lock:
            if self._userns_tried:
                return
            try:
                self._userns = _new_userns()
            except (OSError, subprocess.SubprocessError, ValueError) as err:
                self._userns_why = f"no user namespace for id-mapped mounts ({err})"
            self._userns_tried = True

    def _helper_reopen(self, fd: int, flags: int) -> int:
        """An ordinary caller's file `fd` opened again with `flags` through a read-only clone its helper
        makes (started on first use). Raises OSError (errno 0 with the reason)."""
        with self._lock:
            if self._helper is None and not self._helper_failed:
                try:
                    self._helper = _Helper()
                except (OSError, subprocess.SubprocessError, ValueError) as err:
                    self._helper_failed = True
                    self._helper_why = f"no mount namespace of its own for read-only clones ({err})"
            helper = self._helper
            if helper is None:
                raise OSError(0, self._helper_why)
            try:
                return helper.reopen(fd, flags)
            except (TimeoutError, ConnectionError, ValueError) as err:
                self._helper_failed = True
                self._helper_why = f"its helper stopped answering ({err})"
                self._helper = None
                helper.close()
                raise OSError(0, self._helper_why) from err

    def protect(self, slots: list[int]) -> StdioFiles:
        """The StdioFiles of one spawn whose stdio slots are `slots` (the caller's fds; -1 for a slot
        corral fills itself: a pipe, its /dev/null). Never raises: a file that cannot be reopened is
        recorded for the put-back."""
        files = StdioFiles()
        for index, fd in enumerate(slots):
            if fd >= 0:
                files.fds.append(self._one(files, index, fd))
            else:
                files.fds.append(fd)
        return files

    def _one(self, files: StdioFiles, index: int, fd: int) -> int:
        try:
            st = os.fstat(fd)
        except OSError:
            return fd  # the spawn's own send reports a bad fd
        kind = stat.S_IFMT(st.st_mode)
        if kind in (stat.S_IFIFO, stat.S_IFSOCK, 0):
            return fd  # a pipe, a socket, an anonymous inode (eventfd, pidfd, epoll...): no path reaches it
        for same, new in files.reopened:  # one open file description in two slots (2>&1)
            if _same_file(fd, same):
                return new
        if kind == stat.S_IFCHR:
            return self._char(files, index, fd, st)
        if kind == stat.S_IFREG:
            why = self._reopen(files, fd, st)
            if why is None:
                return files.reopened[-1][1]
        else:
            why = (
                "a directory stays the caller's open file (a read-only or id-mapped mount would refuse "
                "what the command creates in it)"
            )
        if files.put_back(fd):
            self._record(files, index, st, why)
        return fd

    def _char(self, files: StdioFiles, index: int, fd: int, st: os.stat_result) -> int:
        """A character device: a terminal stays (its mode put back at the end); for root, /dev/null is the
        supervisor's read-only copy and another device a read-only copy of its own; an ordinary caller's
        sandbox owns neither /dev/null nor the devices it may open (put back all the same)."""
        try:
            tty = os.isatty(fd)
        except OSError:
            tty = False
        if not tty and self.root:
            if st.st_rdev == NULL_RDEV and self.devnull >= 0:
                return self.devnull
            with contextlib.suppress(OSError):
                new = open_read_only_copy(fcntl.fcntl(fd, fcntl.F_GETFL) & _KEEP_FLAGS, fd)
                if new is not None:
                    files.reopened.append((fd, new))
                    files.owned.append(new)
                    return new
            if files.put_back(fd):
                self._record(files, index, st, "no read-only copy of its mount could be made")
            return fd
        files.put_back(fd)
        return fd

    def _reopen(self, files: StdioFiles, fd: int, st: os.stat_result) -> str | None:
        """Reopen regular file `fd` through a clone of its mount: read-only for a file opened read-only,
        id-mapped for one opened for writing. None when done (the pair appended to files.reopened), else
        why not."""
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as err:
            return f"fcntl: {err.strerror}"
        if flags & os.O_PATH:
            return "an O_PATH fd"
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if not self.root:
            if writing:
                return "an ordinary caller cannot make id-mapped mounts of the host's filesystems"
            try:
                new = self._helper_reopen(fd, flags & _KEEP_FLAGS)
            except OSError as err:
                return str(err.strerror or err)
            return self._adopt(files, fd, st, new)
        if writing:
            if not self._userns_tried:
                self.make_userns()  # (the spawn path makes it in a worker thread first: wants_userns)
            if self._userns < 0:
                return self._userns_why
            attrs, userns = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, self._userns
        else:
            attrs, userns = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0
        try:
            new = _clone_open(fd, attrs, userns, flags & _KEEP_FLAGS, files.trees)
        except OSError as err:
            if writing and err.errno == errno.EINVAL and str(err.strerror).startswith("mount_setattr"):
                return f"its filesystem (magic {_fs_type(fd)}) has no id-mapped mounts"
            return str(err.strerror)
        return self._adopt(files, fd, st, new)

    def _adopt(self, files: StdioFiles, fd: int, st: os.stat_result, new: int) -> str | None:
        """Take `new`, the caller's `fd` (whose fstat is `st`) opened again, into `files`, at `fd`'s offset;
        None when done, else why not (`new` then closed)."""
        try:
            got = os.fstat(new)
            if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
                msg = "the reopened file is another"
                raise OSError(0, msg)
            keep = os.dup(fd)  # the caller's open file, for its offset: the number itself may be closed
        except OSError as err:
            os.close(new)
            return str(err.strerror or err)
        try:
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            os.lseek(new, pos, os.SEEK_SET)
        except OSError:
            pass  # not seekable: nothing to carry
        files.reopened.append((fd, new))
        files.owned.append(new)
        files.offsets.append((keep, new))
        return None

    def _record(self, files: StdioFiles, index: int, st: os.stat_result, why: str) -> None:
        """Name an unprotected slot in the child's `missing`; a root supervisor also warns, once per
        reason."""
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
        files.missing.append(
            (
                LAYER,
                f"fd {index} ({what}, uid {st.st_uid}): {why}; the command may change its mode, times and "
                "user.* attributes while it runs (the mode and attributes are put back when it ends)",
            )
        )
        if self.root and why not in self._said:
            self._said.add(why)
            log.warning(
                "a %s given as stdio or in pass_fds is not protected from the command's metadata changes: "
                "%s (its mode and user.* attributes are put back when the command ends)",
                what.split()[-1],
                why,
            )


class StdioFiles:
    """One spawn's stdio files: `fds`, what the command gets in each slot; the new open files (`owned`,
    closed by `settle`); the caller's open files whose offset follows the new ones' (`offsets`: our dup,
    the new fd); the files whose metadata is put back (`saved`); and the unprotected slots for the child's
    `missing`."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.reopened: list[tuple[int, int]] = []  # (the caller's fd, the new one)
        self.owned: list[int] = []
        self.offsets: list[tuple[int, int]] = []
        self.saved: list[tuple[int, int, dict[str, bytes]]] = []  # (our dup, mode, user.* attributes)
        self.missing: list[tuple[str, str]] = []
        self.trees: list[int] = []  # the clones' O_PATH fds, closed off the loop (take_trees)

    def put_back(self, fd: int) -> bool:
        """Record `fd`'s mode and user.* attributes, to be put back by `settle`: False when that file is
        recorded already (or cannot be). Never raises."""
        try:
            if any(os.path.sameopenfile(fd, dup) for dup, _m, _a in self.saved):
                return False
            dup = os.dup(fd)
        except OSError:
            return False
        try:
            mode = os.fstat(dup).st_mode
        except OSError:
            os.close(dup)
            return False
        self.saved.append((dup, mode, _user_xattrs(dup)))
        return True

    def take_trees(self) -> list[int]:
        """The clones' tree fds, which the caller closes from now on (StdioShield.discard)."""
        trees, self.trees = self.trees, []
        return trees

    def close(self) -> None:
        """`settle()`, and close the clones' tree fds here too (blocking: an error path's)."""
        self.settle()
        close_fds(self.take_trees())

    def settle(self) -> None:
        """When the child has ended (or never started): carry each new open file's offset back to the
        caller's, put back the metadata recorded, and close every fd this object holds but the clones'
        tree fds (take_trees, close). Idempotent; never raises; no path is resolved (fd calls only)."""
        offsets, self.offsets = self.offsets, []
        for keep, new in offsets:
            with contextlib.suppress(OSError):
                os.lseek(keep, os.lseek(new, 0, os.SEEK_CUR), os.SEEK_SET)
            os.close(keep)
        owned, self.owned = self.owned, []
        for fd in owned:
            os.close(fd)
        saved, self.saved = self.saved, []
        for dup, mode, attrs in saved:
            try:
                _restore(dup, mode, attrs)
            finally:
                os.close(dup)


def _restore(fd: int, mode: int, attrs: dict[str, bytes]) -> None:
    """Put back `fd`'s mode (never a set-id bit: the kernel cleared it when the command wrote to the file,
    and putting it back would make the command's content set-id) and its user.* attributes. Never raises."""
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
    except OSError:
        return
    want = (stat.S_IMODE(mode) & ~_SETID) | (current & _SETID)
    if want != current:
        with contextlib.suppress(OSError):
            os.fchmod(fd, want)
    now = _user_xattrs(fd)
    for name in now.keys() - attrs.keys():
        with contextlib.suppress(OSError):
            os.removexattr(fd, name)
    for name, value in attrs.items():
        if now.get(name) != value:
            with contextlib.suppress(OSError):
                os.setxattr(fd, name, value)


def _user_xattrs(fd: int) -> dict[str, bytes]:
    """The `user.*` extended attributes of open file `fd` (empty where the filesystem has none)."""
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        if name.startswith("user."):
            with contextlib.suppress(OSError):
                out[name] = os.getxattr(fd, name)
    return out


def _same_file(a: int, b: int) -> bool:
    """Whether fds `a` and `b` are one open file description (kcmp; where kcmp is missing, the same file
    with the same status flags)."""
    fn = _Libc.get()
    if fn is not None and _SYS_KCMP is not None:
        pid = os.getpid()
        got = int(fn(ctypes.c_long(_SYS_KCMP), pid, pid, _KCMP_FILE, ctypes.c_ulong(a), ctypes.c_ulong(b)))
        if got >= 0:
            return got == 0
    try:
        return os.path.sameopenfile(a, b) and fcntl.fcntl(a, fcntl.F_GETFL) == fcntl.fcntl(b, fcntl.F_GETFL)
    except OSError:
        return False


def _clone_open(fd: int, attrs: int, userns: int, flags: int, trees: list[int]) -> int:
    """The file `fd` is open on, opened again with `flags` (plus O_CLOEXEC, O_NOCTTY) through a detached
    clone of its mount given `attrs` (and `userns` for MOUNT_ATTR_IDMAP). The clone's O_PATH fd is appended
    to `trees`, even on failure, for the caller to close: closing it dissolves the clone's anonymous mount
    namespace, which waits for an RCU grace period (0.3-3 ms on a loaded machine, measured), so it is done
    off the spawn path and off the event loop (take_trees, StdioShield.discard). Raises OSError."""
    tree = clone_mount(fd, b"", attrs, userns, trees)
    # Opened through the O_PATH fd of the clone: the new file keeps the clone's mount alive after the tree
    # fd is closed. Never O_CREAT, O_TRUNC or O_EXCL: the caller's open did those already.
    return os.open(f"/proc/self/fd/{tree}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def _closer(doomed: queue.SimpleQueue[list[int] | None]) -> None:
    """StdioShield.discard's thread: close each list of fds it is given, until None."""
    while (fds := doomed.get()) is not None:
        close_fds(fds)


def close_fds(fds: list[int]) -> None:
    """Close each of `fds` (blocking: a clone's tree fd waits for an RCU grace period). Never raises."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fs_type(fd: int) -> str:
    """The filesystem type of open file `fd` as a hex magic number (statfs), or "?"."""
    buf = ctypes.create_string_buffer(128)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.fstatfs(fd, buf) != 0:
            return "?"
    except (OSError, AttributeError):
        return "?"
    return hex(int.from_bytes(buf.raw[:8], sys.byteorder))


_HELPER = (
    "import ctypes, os\n"
    "r = ctypes.CDLL(None, use_errno=True).unshare(0x10000000)\n"
    "os.write(1, b'1' if r == 0 else b'0')\n"
    "os.read(0, 1)\n"
)


def _new_userns() -> int:
    """A user namespace whose id maps are _ID_MAP (both), as an O_RDONLY fd: a helper process unshares it
    and waits while the supervisor writes the maps and opens it, then exits. Raises OSError,
    subprocess.SubprocessError, ValueError."""
    argv0, python, keep = _interpreter.python()
    helper = subprocess.Popen(
        [argv0, "-I", "-S", "-c", _HELPER],
        executable=python,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        pass_fds=keep,
    )
    try:
        assert helper.stdout is not None
        if helper.stdout.read(1) != b"1":
            msg = "the helper could not unshare a user namespace"
            raise ValueError(msg)
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{helper.pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, _ID_MAP)
            finally:
                os.close(fd)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if helper.stdin is not None:
            helper.stdin.close()
        if helper.stdout is not None:
            helper.stdout.close()
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


#: The helper of an ordinary caller (_Helper): a process in a user and mount namespace of its own, whose
#: mounts are copies of the caller's. It may clone those (open_tree) and make the clones read-only, which
#: the caller cannot do to the host's own mounts; a clone of a mount of another namespace is refused
#: (EINVAL), so the file is found again by its path in the helper's copy: resolved without following any
#: link, and checked to be the same file (device, inode) as the fd it was sent.
_RO_HELPER = r"""
import ctypes, os, socket, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
class How(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
class Attr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clr", "prop", "ns")]
def call(*args):
    r = libc.syscall(*args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
sock = socket.socket(fileno=int(sys.argv[1]))
uid, gid = os.getuid(), os.getgid()
try:
    if libc.unshare(0x10000000 | 0x20000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    for name, data in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(data)
except OSError as e:
    sock.send(f"E {e.strerror}".encode())
    sys.exit(0)
sock.send(b"R")
# The clones' tree fds are closed by a thread of their own: each close waits for an RCU grace period, and
# the next request must not wait behind it.
import queue, threading
doomed = queue.SimpleQueue()
def closer():
    while True:
        os.close(doomed.get())
threading.Thread(target=closer, daemon=True).start()
while True:
    try:
        msg, fds, _f, _a = socket.recv_fds(sock, 64, 1)
    except OSError:
        break
    if not msg:
        break
    opened = []
    try:
        if len(fds) != 1:
            raise OSError(0, "no fd sent")
        fd = fds[0]
        opened.append(fd)
        want = os.fstat(fd)
        where = os.readlink(f"/proc/self/fd/{fd}")
        if not where.startswith("/") or where.endswith(" (deleted)"):
            raise OSError(0, "it has no path (removed, or of another mount namespace)")
        how = How(os.O_PATH | os.O_CLOEXEC, 0, 0x04 | 0x02)  # RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
        p = call(ctypes.c_long(437), -100, where.encode(), ctypes.byref(how), ctypes.sizeof(how))
        opened.append(p)
        got = os.fstat(p)
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino) or not stat.S_ISREG(got.st_mode):
            raise OSError(0, "its path now names another file")
        t = call(ctypes.c_long(428), p, b"", ctypes.c_uint(1 | 0x1000 | os.O_CLOEXEC))  # open_tree CLONE
        try:
            attr = Attr(0x1 | 0x2 | 0x4, 0, 0, 0)  # MOUNT_ATTR_RDONLY | NOSUID | NODEV
            call(ctypes.c_long(442), t, b"", ctypes.c_uint(0x1000), ctypes.byref(attr), ctypes.sizeof(attr))
            new = os.open(f"/proc/self/fd/{t}", int(msg) | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            doomed.put(t)
        opened.append(new)
        socket.send_fds(sock, [b"K"], [new])
    except OSError as e:
        sock.send(f"E {e.strerror or e}".encode())
    finally:
        for x in opened:
            os.close(x)
"""


class _Helper:
    """An ordinary caller's helper process (_RO_HELPER), on a SOCK_SEQPACKET socket pair: sent an fd and
    the status flags, it answers with the same file opened read-only through a read-only clone of its
    mount. Started by the first read-only file given as stdio (blocking, ~15 ms; a worker thread); ends
    when the socket closes. Raises OSError, subprocess.SubprocessError, ValueError."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv0, python, keep = _interpreter.python()
            self.proc = subprocess.Popen(
                [argv0, "-I", "-S", "-c", _RO_HELPER, str(theirs.fileno())],
                executable=python,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *keep),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        ours.settimeout(10)
        try:
            hello = ours.recv(256)
        except BaseException:
            self.close()
            raise
        if hello != b"R":
            self.close()
            msg = hello[2:].decode(errors="replace") or "the helper ended"
            raise ValueError(msg)

    def reopen(self, fd: int, flags: int) -> int:
        """`fd` opened again with `flags` through a read-only clone. Raises OSError (errno 0 with the
        helper's reason), TimeoutError, ConnectionError, ValueError (a reply out of protocol)."""
        socket.send_fds(self.sock, [str(flags).encode()], [fd])
        msg, fds, _flags, _addr = socket.recv_fds(self.sock, 512, 1)
        if msg == b"K" and len(fds) == 1:
            return fds[0]
        for extra in fds:
            os.close(extra)
        if not msg:
            why = "the helper ended"
            raise ConnectionError(why)
        if not msg.startswith(b"E "):
            raise ValueError(repr(msg[:64]))
        raise OSError(0, msg[2:].decode(errors="replace"))

    def close(self) -> None:
        """Close the socket (the helper then exits) and reap it."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
