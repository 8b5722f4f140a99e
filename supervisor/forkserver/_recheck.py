"""A pre-forked sandbox's fingerprint re-checked on the event loop, with no worker-thread hop
(forkserver/prefork.py).

`mounts.fingerprint` must run in a worker thread: it reads files a sandbox can write (.git/config, the
.git/modules walk) and resolves multi-component paths through directories a sandbox can write (a deny path
`ws/secrets/key`, the protected `ws/.git/hooks`), where a planted symlink could lead the lookup to anything,
an automount point included. A pool took it three times per pre-forked sandbox (before the build, at its R
record, at the request), each a hop that cost the loop about as much CPU as the fingerprint itself.

`take` records, in the worker thread and right after the fingerprint it returns, what that fingerprint
depends on, in a form the loop can check again without any of that:
- a path outside every writable root of the policy, in a system tree (`/etc`, `/usr`, `/proc`...: no
  sandbox writes there): its lstat identity, as the fingerprint has it (an lstat on the loop);
- any other path outside the policy's writable roots (a home's credential names, a readable root): it may
  lie under ANOTHER policy's writable root, whose sandbox can replace a directory on its way with a symlink
  into a hung NFS or FUSE mount, where an lstat would wait with the loop; so it is recorded as the paths
  under a root are, from `/`: each directory on the way by a single-name, no-follow fstatat on the held fd
  of its parent (its identity without its ctime), the path's identity likewise (`_chain`); a symlink on
  the way is resolved there by hand, its own identity recorded with its ctime, never into a filesystem the
  path's link-free way did not enter;
- a path at or under a writable root: the root's O_PATH fd (held), then each component by a single-name,
  no-follow fstatat relative to the held fd of its parent directory (O_PATH, held), recording device, inode,
  type, owner and ctime. No lookup ever follows a symlink or resolves more than one name, so nothing a
  sandbox plants can make it block; a held fd keeps its inode, so an equal inode number is the same file;
- for each writable root with a repository: the ctime of .git, .git/config and every directory of the
  .git/modules walk (what the git expansion read: a change of the config rewrites it or replaces it, a change
  of the walk adds, removes or renames an entry; each sets a ctime, and a sandbox cannot set a ctime).
It gives up (None: the thread path, as before) when anything would make the check unsound: a component
under a writable root that is a symlink or not a directory on the way (the fingerprint's lstat would follow
it elsewhere), a link on the way to a host path into another filesystem, a policy that does not confine
the filesystem (every path may be the sandbox's), a ctime from MARGIN_NS before the
fingerprint began or later (a change during the fingerprint, or in the same timestamp tick as a later one,
could leave it as recorded), or more than MAX_FDS directories to hold.

`Recheck.unchanged()` (on the loop): every recorded stat is as it was. Then the fingerprint is still what
`mounts.fingerprint` would return: any change since it began moved a ctime, an inode or an identity recorded
here. Thread-safe for reading; `close` once.
"""

from __future__ import annotations

import functools
import os
import stat
import time

from supervisor.sandbox import _absent, mounts
from supervisor.sandbox._csample import stat_at

#: A ctime this recent when the record is taken is not trusted: the kernel stamps ctimes from a coarse clock
#: (one tick: 1-10 ms), so a change in the same tick could leave it unchanged. Twice the git scan's margin;
#: the same as that of the directories standing for missing paths (sandbox/_absent.py).
MARGIN_NS = _absent.MARGIN_NS
#: Directories held open per record (and .git/modules directories looked at): beyond, no record.
MAX_FDS = 32
MAX_MODULE_DIRS = 64
#: Symlinks resolved on the way to one host path (`_chain`): beyond, no record.
MAX_LINKS = 8

_OPEN_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC

#: Linux's AT_FDCWD: a check of an absolute host path (an lstat, no ctime).
AT_FDCWD = -100
_ERR = 1 << 40
_NO_CTIME = bytes(8)


#: Host trees no sandbox writes unless a policy names `allow_system_write` (policies._roots): a host path in
#: one is lstat'ed on the loop as it is. Any other (a home, /srv, /var/tmp...) may lie below ANOTHER policy's
#: writable root, whose sandbox can replace a directory on its way with a symlink into a hung NFS, autofs or
#: FUSE mount of the host: an lstat would follow it and wait there, with the event loop. Such a path is
#: checked as the paths under a writable root are: each component a single-name, no-follow fstatat on the
#: held fd of its directory, reached from `/` (`_chain`; the directories on the way without their ctimes).
_SYSTEM_TREES = (
    *("/etc", "/usr", "/proc", "/sys", "/dev", "/run", "/var/run", "/boot"),
    *("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"),
)


def _careful(path: str) -> bool:
    """Whether the host path `path` (absolute, normalised) is checked component by component (`/` has no
    way)."""
    return path != "/" and not any(path == t or path.startswith(t + "/") for t in _SYSTEM_TREES)


#: `stat_at`'s mask values: the ctime left out (a directory on the way to a host path, or its last
#: component, whose fingerprint record has none); the path resolved with no symlink followed on the way.
_NO_CTIME_MASK = 2
_NO_SYMLINKS_MASK = 1


def _stat1(dirfd: int, name: str) -> bytes:
    """One identity as `stat_at` gives it (40 bytes: dev, ino, mode, owner, ctime; mode 1 << 40 | errno on
    failure)."""
    return stat_at([dirfd], [os.fsencode(name)])


def _mode(ident: bytes) -> int:
    """The file type and mode of an identity; 0 for a failed stat."""
    mode = int.from_bytes(ident[16:24], "little")
    return 0 if mode & _ERR else mode


def _ctime(ident: bytes) -> int:
    return int.from_bytes(ident[32:40], "little")


class _GiveUp(Exception):
    pass


class Recheck:
    """What a fingerprint depended on, re-checkable on the event loop (see the module's docstring)."""

    def __init__(self, old_ns: int) -> None:
        self.fds: list[int] = []
        self._dirs: dict[str, int] = {}  # path -> index in fds
        #: (dirfd, name) -> identity: a no-follow fstatat of one name; AT_FDCWD: an lstat of an absolute path
        self.checks: dict[tuple[int, str], bytes] = {}
        #: A directory standing for missing host paths (sandbox/_absent.py), by its name from `/`: its
        #: identity, and the paths' own lstat records (AT_FDCWD), checked only when the directory changed.
        self.groups: dict[bytes, tuple[bytes, list[bytes], list[bytes]]] = {}
        #: The checks recorded without a ctime (`_chain`), and where a careful group's directory is checked.
        self._no_ctime: set[tuple[int, str]] = set()
        self._group_at: dict[bytes, tuple[int, bytes]] = {}
        self._mask: bytes | None = None  # `stat_at`'s mask of the sealed checks, None for none
        self._old_ns = old_ns  # a ctime from then on is refused
        self._dirfds: list[
            int
        ] = []  # the checks then the groups' directories, as stat_at takes them (`seal`)
        self._names: list[bytes] = []
        self._expected = b""
        self._plain = 0  # bytes of `_expected` that are the checks'
        #: Per group: (its offset in `_expected`, AT_FDCWDs, its paths, their records, their careful mask).
        self._fallback: list[tuple[int, list[int], list[bytes], bytes, bytes]] = []
        self._owners = 1  # `share` adds one, `close` takes one: the fds are closed with the last

    def seal(self) -> None:
        """The checks recorded, in the form `unchanged` passes to one C call."""
        self._dirfds = [d for d, _n in self.checks]
        self._names = [os.fsencode(n) for _d, n in self.checks]
        self._plain = 40 * len(self.checks)
        self._fallback = []
        mask = bytearray(_NO_CTIME_MASK if key in self._no_ctime else 0 for key in self.checks)
        for i, (name, (_ident, paths, records)) in enumerate(self.groups.items()):
            dirfd, rel = self._group_at.get(name, (_absent.root_fd(), name))
            self._dirfds.append(dirfd)
            self._names.append(rel)
            mask.append(0)
            members = bytes(_NO_SYMLINKS_MASK if _careful(os.fsdecode(p)) else 0 for p in paths)
            self._fallback.append(
                (self._plain + 40 * i, [AT_FDCWD] * len(paths), paths, b"".join(records), members)
            )
        self._mask = bytes(mask) if any(mask) else None
        self._expected = b"".join(self.checks.values()) + b"".join(g[0] for g in self.groups.values())

    def unchanged(self) -> bool:
        """Whether every recorded stat is as it was: one call into C (`_csample.stat_at`) for all of them,
        each a single-name no-follow fstatat on a held fd, an lstat of a host path, or a stat of a host
        directory standing for missing paths; where such a directory changed (any entry made, removed or
        renamed in it), its paths are lstat'ed one by one instead and must still be missing. Never raises."""
        if not self._dirfds:
            return False
        got = stat_at(self._dirfds, self._names, self._mask)
        if got == self._expected:
            return True
        if got[: self._plain] != self._expected[: self._plain]:
            return False
        for at, dirfds, paths, records, mask in self._fallback:
            if got[at : at + 40] != self._expected[at : at + 40] and stat_at(dirfds, paths, mask) != records:
                return False
        return True

    def share(self) -> Recheck:
        """This Recheck for one more owner (each `close`s it once): a pool builds the next sandbox of a key
        from the last one's fingerprint while it holds. On the loop, like `close`."""
        self._owners += 1
        return self

    def close(self) -> None:
        """Give up this owner's share; the last one closes the held fds."""
        self._owners -= 1
        if self._owners > 0:
            return
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.checks.clear()
        self.groups.clear()
        self._no_ctime.clear()
        self._group_at.clear()
        self._dirfds, self._names, self._expected, self._fallback = [], [], b"", []

    # -- recording (in a worker thread) --------------------------------------------------------------------

    def _hold(self, path: str, dirfd: int, name: str) -> int:
        """The held O_PATH fd of the directory `path` (= `name` in `dirfd`, or an absolute path when dirfd is
        -1), opened without following a symlink in its last component."""
        held = self._dirs.get(path)
        if held is not None:
            return self.fds[held]
        if len(self.fds) >= MAX_FDS:
            raise _GiveUp
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=dirfd) if dirfd >= 0 else os.open(path, _OPEN_DIR)
        except OSError as err:
            raise _GiveUp from err
        self._dirs[path] = len(self.fds)
        self.fds.append(fd)
        return fd

    def _record(self, dirfd: int, name: str, keep: bool = True) -> bytes:
        """The identity of `name` in the held `dirfd`, recorded unless `keep` is false (a missing name
        whose directory's own ctime is recorded: that covers its creation)."""
        known = self.checks.get((dirfd, name))
        if known is not None:
            return known
        ident = _stat1(dirfd, name)
        if _ctime(ident) >= self._old_ns:
            raise _GiveUp  # changed within the margin: a later change could keep this ctime
        if keep or _mode(ident):
            self.checks[(dirfd, name)] = ident
        return ident

    def _host(self, path: str, ident: bytes | None = None) -> None:
        """Record the lstat identity of `path`, outside every writable root: `ident` when given (the
        fingerprint's own lstat of it, 32 bytes), else an lstat now."""
        if not _careful(path):
            self.checks[(AT_FDCWD, path)] = _stat1(AT_FDCWD, path) if ident is None else ident + _NO_CTIME
            return
        dirfd, name, whole = self._chain(path)
        got = self._no_ctime_stat(dirfd, name)
        if ident is None:
            return
        if whole and got != ident + _NO_CTIME:
            raise _GiveUp  # changed since the fingerprint
        if not whole and _mode(ident) != 0:
            raise _GiveUp  # a component on the way missing or a file: the path must have been missing

    def _no_ctime_stat(self, dirfd: int, name: str) -> bytes:
        """The identity of `name` in the held `dirfd`, without its ctime, recorded."""
        key = (dirfd, name)
        known = self.checks.get(key)
        if known is not None and key in self._no_ctime:
            return known
        if known is not None and stat.S_ISLNK(_mode(known)):
            return known[:32] + _NO_CTIME  # a link on another path's way, checked with its ctime
        ident = stat_at([dirfd], [os.fsencode(name)], bytes([_NO_CTIME_MASK]))
        self.checks[key] = ident
        self._no_ctime.add(key)
        return ident

    def _chain(self, path: str) -> tuple[int, str, bool]:
        """The held fd of the host path `path`'s directory, reached from `/` one name at a time without
        following a symlink, each directory on the way recorded (without its ctime: the host changes its
        entries all the time; its identity is what says that a lookup of `path` still goes through it),
        its last name, and True; or, where a component on the way is missing or a file, the held fd of
        its directory, its name (recorded: the path stays missing while it stays so), and False.

        A symlink on the way (a dotfiles `~/.config`, a home reached through a link) is resolved here, by
        hand: its own identity recorded WITH its ctime (a link's target cannot change in place: a retarget
        is a new link, a new ctime), its text read, and the walk continued from its target, component by
        component on held fds, as the kernel's lookup would. A link is text a sandbox may have written (it
        may lie below another policy's writable root): past one, the walk gives up at any directory (or
        last component) on a filesystem the path's own link-free way did not enter, so that no planted link
        leads a check on the loop into another mount (a hung NFS or FUSE one). Gives up past MAX_LINKS."""
        parts = path.strip("/").split("/")
        top = self._hold("/", -1, "/")
        stack = [("", top)]  # the directories walked: (path, held fd); ".." goes back one
        devs = {_stat1(top, ".")[:8]}  # the filesystems entered before the first link
        links = 0
        todo = parts[-2::-1]  # the names on the way, the next one last
        while todo:
            name = todo.pop()
            walked, fd = stack[-1]
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            ident = self._no_ctime_stat(fd, name)
            mode = _mode(ident)
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_LINKS:
                    raise _GiveUp
                target = self._link(fd, name)
                if target.startswith("/"):
                    del stack[1:]
                todo.extend(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(mode):
                return fd, name, False
            if not links:
                devs.add(ident[:8])
            elif ident[:8] not in devs:
                raise _GiveUp  # into another filesystem, by a link
            walked = f"{walked}/{name}"
            stack.append((walked, self._hold(walked, fd, name)))
        fd = stack[-1][1]
        if links:
            last = self._no_ctime_stat(fd, parts[-1])
            if _mode(last) and last[:8] not in devs:
                raise _GiveUp  # a mount point of another filesystem, by a link
        return fd, parts[-1], True

    def _link(self, dirfd: int, name: str) -> str:
        """The text of the symlink `name` in the held `dirfd`, its identity recorded with its ctime (a link
        made within the margin: given up)."""
        ident = _stat1(dirfd, name)
        if not stat.S_ISLNK(_mode(ident)) or _ctime(ident) >= self._old_ns:
            raise _GiveUp
        target = os.readlink(name, dir_fd=dirfd)
        if not target or _stat1(dirfd, name) != ident:
            raise _GiveUp  # replaced while read
        self.checks[(dirfd, name)] = ident
        self._no_ctime.discard((dirfd, name))
        return target

    def _group(self, group: _absent.Group, path: bytes, ident: bytes) -> None:
        """Record the missing host path `path` (its fingerprint record `ident`, 32 bytes) as stood for by
        `group`'s directory (checked by the fingerprint that gave it: it is as it was when `path` was found
        missing, long enough ago for its ctime to be trusted)."""
        entry = self.groups.get(group.name)
        if entry is None:
            where = os.path.normpath("/" + os.fsdecode(group.name))
            if _careful(where):
                # Its directory checked on the held fd of its parent, reached without following a link.
                dirfd, name, whole = self._chain(where)
                if not whole or _stat1(dirfd, name) != group.ident:
                    raise _GiveUp  # changed since the fingerprint
                self._group_at[group.name] = (dirfd, os.fsencode(name))
            entry = self.groups[group.name] = (group.ident, [], [])
        entry[1].append(path)
        entry[2].append(ident + _NO_CTIME)

    def _under(self, root: str, path: str) -> None:
        """Record `path` (at or under the writable root `root`) component by component."""
        fd = self._hold(root, -1, root)
        rel = os.path.relpath(path, root)
        if rel == ".":
            return
        parts = rel.split("/")
        walked = root
        for i, name in enumerate(parts):
            # A missing name below the root: its directory's ctime, recorded, covers its creation. (The
            # root's own identity is recorded without its ctime, which the sandbox moves all the time.)
            mode = _mode(self._record(fd, name, keep=i == 0))
            if i == len(parts) - 1 or not mode:
                return  # the last component, or a missing one
            if stat.S_ISLNK(mode):
                raise _GiveUp  # a symlink on the way: the fingerprint's lstat follows it elsewhere
            if not stat.S_ISDIR(mode):
                return  # a file on the way: ENOTDIR below it for as long as it is recorded as it is
            walked = f"{walked}/{name}"
            fd = self._hold(walked, fd, name)

    def _git(self, root: str, base: str) -> None:
        """Record what the git expansion of `root` read (mounts._expand_git): .git, .git/config, and the
        directories of its .git/modules walk (a git dir's own entries, where HEAD is, and the modules inside
        it), each directory listed through held fds, never by path. `base`: the outermost writable root
        that holds `root` (the walk to it starts there)."""
        git = f"{root}/.git"
        self._under(base, git)
        if self._kind(git) != stat.S_IFDIR:
            return  # no repository, or a gitdir pointer: nothing read (a change moves the root's ctime)
        self._under(base, f"{git}/config")
        self._under(base, f"{git}/modules")
        todo = [f"{git}/modules"]
        while todo:
            d = todo.pop()
            if self._kind(d) != stat.S_IFDIR:
                continue
            parent, name = d.rsplit("/", 1)
            fd = self._hold(d, self.fds[self._dirs[parent]], name)
            for entry, is_dir in self._list(fd):
                if not is_dir:
                    continue
                sub = f"{d}/{entry}"
                self._record(fd, entry)
                sub_fd = self._hold(sub, fd, entry)
                head = self._record(sub_fd, "HEAD")  # a git dir: its modules are walked, else its entries
                is_git_dir = stat.S_ISREG(_mode(head))
                if len(self._dirs) > MAX_MODULE_DIRS:
                    raise _GiveUp
                if is_git_dir:
                    self._record(sub_fd, "modules")
                    todo.append(f"{sub}/modules")
                else:
                    todo.append(sub)

    def _kind(self, path: str) -> int:
        """The file type recorded for `path` (at or under a root), 0 when missing or not recorded."""
        parent, name = path.rsplit("/", 1)
        held = self._dirs.get(parent)
        if held is None:
            return 0
        ident = self.checks.get((self.fds[held], name))
        return 0 if ident is None else stat.S_IFMT(_mode(ident))

    @staticmethod
    def _list(dirfd: int) -> list[tuple[str, bool]]:
        """The entries of the held directory `dirfd` (name, is a directory: not following symlinks), giving
        up past MAX_MODULE_DIRS of them without reading the rest (a sandbox can fill the directory with
        millions). A read of a directory a sandbox can write: in the worker thread only."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
        out: list[tuple[str, bool]] = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    if len(out) == MAX_MODULE_DIRS:
                        raise _GiveUp
                    out.append((e.name, e.is_dir(follow_symlinks=False)))
        finally:
            os.close(fd)
        return out


def take(prepared: mounts.Prepared | None, workdir: str) -> tuple[tuple[object, ...], Recheck | None]:
    """`mounts.fingerprint(prepared, workdir)`, and a Recheck of it (None when one cannot be sound, see the
    module's docstring). The record follows the fingerprint, and refuses every ctime from a margin before
    the fingerprint began: a change after that moved a ctime it would see (under a writable root; outside,
    the host's own paths, it records what the fingerprint's lstat saw, and the directories that stood for
    its missing paths). Blocking: call it in a worker thread. Never raises."""
    started = time.time_ns()
    fingerprint, groups = mounts.fingerprint_groups(prepared, workdir)
    if prepared is None or not prepared["confine"]:
        return fingerprint, None
    recheck = Recheck(started - MARGIN_NS)
    try:
        _record_all(recheck, prepared, fingerprint, groups)
    except (_GiveUp, OSError, ValueError):
        recheck.close()
        return fingerprint, None
    return fingerprint, recheck


def _record_all(
    recheck: Recheck,
    prepared: mounts.Prepared,
    fingerprint: tuple[object, ...],
    groups: tuple[_absent.Group, ...],
) -> None:
    """Record every path the fingerprint looked at (its first element), and each writable root's git
    expansion inputs. Raises _GiveUp, OSError."""
    roots = sorted({os.path.normpath(r) for r in prepared["write"]}, key=len)  # outermost first
    for root in roots:
        if os.path.islink(root) or not os.path.isabs(root):
            raise _GiveUp  # the held fd would follow it: a replaced target would go unseen
    # A root inside another is the outer one's: the sandbox can write its entry.
    outer = [r for i, r in enumerate(roots) if not any(_within(r, o) for o in roots[:i])]
    for root in outer:
        # The path still names the held directory: the same inode (a held fd keeps its number from reuse).
        recheck._host(root)
        recheck._hold(root, -1, root)
    paths, idents = fingerprint[0], fingerprint[1]
    assert isinstance(paths, tuple)
    assert isinstance(idents, bytes)
    under, host = _layout(paths, tuple(outer))
    for root, path in under:
        recheck._under(root, path)
    stood_for = {i: g for g in groups for i in g.members}
    for i, path, encoded in host:
        group = stood_for.get(i)
        if encoded is None:
            recheck._host(path)  # not in its normal form: not the path the fingerprint lstat'ed
        elif group is not None:
            recheck._group(group, encoded, idents[i * 32 : i * 32 + 32])
        else:
            recheck._host(path, idents[i * 32 : i * 32 + 32])
    for root in roots:
        recheck._git(root, next(o for o in outer if _within(root, o)))
    recheck.seal()


@functools.lru_cache(maxsize=64)
def _layout(
    paths: tuple[object, ...], outer: tuple[str, ...]
) -> tuple[list[tuple[str, str]], list[tuple[int, str, bytes | None]]]:
    """Where each of a fingerprint's `paths` lies: (the outer writable root, the path) for those at or
    under one; (its index, the path, its bytes when it is in normal form, else None) for the others, the
    host's. Cached: a (policy, workdir) fingerprints the same paths every time."""
    under: list[tuple[str, str]] = []
    host: list[tuple[int, str, bytes | None]] = []
    for i, path in enumerate(paths):
        p = str(path)
        norm = os.path.normpath(p)
        root = next((r for r in outer if _within(norm, r)), None)
        if root is not None:
            under.append((root, norm))
        else:
            host.append((i, norm, os.fsencode(p) if norm == p else None))
    return under, host


def _within(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (both normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
