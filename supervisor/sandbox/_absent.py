"""Paths known to be missing, told by the one directory that would hold them (mounts.fingerprint, and the
pre-forked sandboxes' Recheck: supervisor/forkserver/_recheck.py).

A fingerprint looks at every credential path a policy hides (`profiles.credential_paths`: 42 here, most of
them missing on any one host: `~/.aws`, `~/.config/gcloud`, `/etc/krb5.keytab`...), twice per pre-forked
sandbox and once per fork-server request, and the Recheck once more at the R record and at the request. A
missing name can only appear by an entry made (created, renamed or linked) in the directory that would hold
it, and that sets the directory's ctime. So for a missing path, the nearest existing directory on its way
(`/root/.config` for `/root/.config/gcloud`; `/root` for `/root/.local/share/keyrings` when `.local` is
missing), looked up by the same path, stands for it: while that directory's device, inode, type, owner and
ctime are what they were when the path was found missing, the path is still missing. One stat per such
directory replaces one lstat per missing path (42 paths, 7 directories here).

When a directory stands for its missing names (`_learn`):
- it is a directory (no symlink: the path's own lookup would follow it elsewhere), reached by the path's own
  leading components, and the component below it is missing (checked after its stat);
- its file system keeps the directory itself (`LOCAL_FS`: ext2/3/4, xfs, btrfs, tmpfs, ramfs, overlayfs,
  f2fs, zfs, bcachefs), where the kernel sets a directory's ctime at every entry change. Not procfs or sysfs
  (their entries are made up at lookup), not a network or FUSE file system (their attributes come from a
  server, and a client's cache can be stale), not an automount point;
- its ctime is more than MARGIN_NS older than the look-up began: the kernel stamps ctimes from a coarse
  clock, so a name made in the same tick as the last change could leave the ctime as it was;
- it is not at or under a writable root of the policy (`exclude`): the sandbox writes those all the time
  (so the directory would never hold still), and the Recheck checks them from held fds anyway.
Otherwise the path is lstat'ed, as before. Nothing here follows a symlink in a last component or resolves
anything a path's own lstat would not (the directory is a prefix of the path), and the stats are made with
AT_NO_AUTOMOUNT from an fd of `/`.

What is known is kept per list of paths (`_PLANS`, 64 lists at most) in the process (the supervisor's worker
threads and the fork server each have their own); a directory found changed makes its names lstat'ed again
and learnt again. Thread-safe: a plan is replaced whole, never changed.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from typing import NamedTuple

from supervisor.sandbox import _cinit
from supervisor.sandbox._csample import fs_type, stat_at

#: A directory's ctime this recent (ns) is not trusted: a change in the same coarse-clock tick (1-10 ms)
#: could leave it as it was. The Recheck's margin.
MARGIN_NS = 20_000_000
#: File systems whose directories' ctimes the kernel keeps itself (statfs f_type).
LOCAL_FS = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0x858458F6,  # ramfs
        0x794C7630,  # overlayfs (a directory's attributes are its upper copy's once it changed)
        0xF2F52010,  # f2fs
        0x2FC12FC1,  # zfs
        0xCA451A4E,  # bcachefs
    }
)
#: Lists of paths kept at once (cleared when full): one per (policy, workdir) in use, and its git states.
MAX_PLANS = 64

_ENOENT = (1 << 40 | errno.ENOENT).to_bytes(8, "little")
_ERR = 1 << 40
_OPEN_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_ROOT_FD = -1


def root_fd() -> int:
    """An O_PATH fd of `/`, opened once per process: `stat_at` with it gives a host path's ctime (with
    AT_FDCWD it gives none)."""
    global _ROOT_FD
    if _ROOT_FD < 0:
        _ROOT_FD = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return _ROOT_FD


def relative(path: str) -> bytes:
    """`path` (absolute) as `stat_at` takes it with `root_fd()`."""
    return os.fsencode(path.lstrip("/") or ".")


class Group(NamedTuple):
    """A directory that stands for the missing paths below it."""

    name: bytes  #: the directory, relative to `/` (`relative`)
    ident: bytes  #: its stat_at identity from `root_fd()` (40 bytes, ctime included) when they were missing
    members: tuple[int, ...]  #: the indices of the paths it stands for


class _Plan(NamedTuple):
    groups: tuple[Group, ...]
    names: list[bytes]  # the groups' directories, as stat_at takes them
    dirfds: list[int]
    expected: bytes  # their identities, joined
    known: bytes | None  # one byte per path: 1 where a group stands for it
    skip: frozenset[int]  # missing paths no directory can stand for (not looked at again)
    retry_ns: int  # missing paths whose directory was too recent: learn again from then on (0: none)


_PLANS: dict[tuple[str, ...], _Plan] = {}


def identities(paths: list[str], exclude: tuple[str, ...] = ()) -> tuple[bytes, tuple[Group, ...]]:
    """`_cinit.identities(paths)` (lstat's identity or errno of each, 32 bytes each), without the lstat of
    the paths a directory stands for (module docstring), and those directories (each checked now). Paths
    at or under one of `exclude` (the policy's writable roots) are always lstat'ed. Blocking (a stat per
    path at worst; the paths' own lookups): not on the event loop. Raises what `_cinit.identities` raises
    (TypeError)."""
    key = tuple(paths)
    plan = _PLANS.get(key)
    if plan is None:
        held: tuple[Group, ...] = ()
        idents = _cinit.identities(paths)
    else:
        held = plan.groups
        known = plan.known
        if held:
            got = stat_at(plan.dirfds, plan.names)
            if got != plan.expected:
                held = tuple(g for i, g in enumerate(held) if got[i * 40 : i * 40 + 40] == g.ident)
                known = _known(len(paths), held)
        idents = _cinit.identities(paths, known)
        if len(held) == len(plan.groups) and not (plan.retry_ns and time.time_ns() >= plan.retry_ns):
            return idents, held
    plan = _learn(paths, idents, held, plan.skip if plan is not None else frozenset(), exclude)
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan
    return idents, plan.groups


def _known(n: int, groups: tuple[Group, ...]) -> bytes | None:
    if not groups:
        return None
    known = bytearray(n)
    for g in groups:
        for i in g.members:
            known[i] = 1
    return bytes(known)


def _learn(
    paths: list[str], idents: bytes, held: tuple[Group, ...], skip: frozenset[int], exclude: tuple[str, ...]
) -> _Plan:
    """A plan for `paths`: the groups still `held`, and a directory for each missing path that none stands
    for yet (module docstring), where one can."""
    started = time.time_ns()
    covered = {i for g in held for i in g.members}
    found: dict[bytes, tuple[bytes, list[int]]] = {g.name: (g.ident, [*g.members]) for g in held}
    seen: dict[str, bytes | None] = {}  # directory -> its identity when it can stand for names, else None
    new_skip = set(skip)
    retry_ns = 0
    for i, path in enumerate(paths):
        if i in covered or i in skip or idents[i * 32 + 16 : i * 32 + 24] != _ENOENT:
            continue
        if not os.path.isabs(path) or any(_within(path, r) for r in exclude):
            new_skip.add(i)
            continue
        where = _nearest(path)
        if where is None:
            new_skip.add(i)
            continue
        directory, child = where
        if directory not in seen:
            seen[directory] = _standing(directory)
        ident = seen[directory]
        if ident is None:
            new_skip.add(i)
            continue
        ctime = int.from_bytes(ident[32:40], "little")
        if ctime >= started - MARGIN_NS:
            retry_ns = max(retry_ns, ctime + 2 * MARGIN_NS)
            continue
        # The component below it is missing, after its stat: from then on, only a change of the directory
        # (its ctime) can make it.
        if stat_at([root_fd()], [relative(os.path.join(directory, child))])[16:24] != _ENOENT:
            continue
        name = relative(directory)
        if name in found and found[name][0] != ident:
            continue  # changed since a group was made of it: lstat'ed for now, learnt next time
        found.setdefault(name, (ident, []))[1].append(i)
    groups = tuple(Group(name, ident, tuple(sorted(m))) for name, (ident, m) in sorted(found.items()))
    return _Plan(
        groups,
        [g.name for g in groups],
        [root_fd()] * len(groups),
        b"".join(g.ident for g in groups),
        _known(len(paths), groups),
        frozenset(new_skip),
        retry_ns,
    )


def _nearest(path: str) -> tuple[str, str] | None:
    """The nearest existing directory above the missing `path` and the missing component below it; None
    when something else (a symlink, a file, an error other than ENOENT) is on the way."""
    directory, child = os.path.split(os.path.normpath(path))
    if not child:
        return None
    while True:
        ident = stat_at([root_fd()], [relative(directory)])
        mode = int.from_bytes(ident[16:24], "little")
        if mode & _ERR:
            if mode != _ERR | errno.ENOENT or directory == "/":
                return None
            directory, child = os.path.split(directory)
            continue
        return (directory, child) if stat.S_ISDIR(mode) else None


def _standing(directory: str) -> bytes | None:
    """`directory`'s identity (stat_at from `root_fd()`) when it can stand for its missing names: a
    directory, not a symlink, on a file system of LOCAL_FS, the one its path leads to; else None."""
    ident = stat_at([root_fd()], [relative(directory)])
    mode = int.from_bytes(ident[16:24], "little")
    if mode & _ERR or not stat.S_ISDIR(mode):
        return None
    try:
        fd = os.open(directory, _OPEN_DIR)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if ident[0:16] != struct.pack("=QQ", st.st_dev, st.st_ino) or fs_type(fd) not in LOCAL_FS:
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return ident


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
