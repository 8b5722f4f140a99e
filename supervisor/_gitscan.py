"""After a run: find what the sandbox left in git repositories under its writable roots that would make the
HOST user's git run code, put it out of git's way (quarantine), and report it.

Why after the run and not by mounts alone: mounts can only protect what exists when the sandbox starts (the
top repository's .git/hooks and .git/config, its submodules: mounts._protect). A repository the sandbox
creates (`git init`), one nested anywhere below a root, a linked worktree's `commondir`, a submodule's
config, all are files a sandbox may write, and git reads them: `core.fsmonitor` runs on a plain
`git status` (the top repository's status recurses into submodules registered in its writable index),
`core.pager`, `core.editor`, `core.sshCommand`, diff/merge/filter drivers, `include.path`, hooks.

What is looked at (supervisor/sandbox/_hostfs rules: no symlink followed below the root, O_NONBLOCK,
regular files only, bounded reads, a bounded walk): every directory under each writable root, at any depth
and inside git dirs too, for git dirs (a directory with HEAD and objects/ + refs/, or HEAD + commondir:
`.git`, bare repositories, .git/modules/*, .git/worktrees/*, and one hidden in another's objects/ that a
`.git` file names). In each git dir, what changed during the run (ctime at or after the run's start: a
sandbox can set mtime, never ctime):
- `config`, `config.worktree`: kept when every key is in a small allow-list of settings that run nothing
  (core.repositoryformatversion, remote.*.url, branch.*.merge, user.name, ...); otherwise (or when not a
  regular file, or over 1 MiB) renamed to `<name>.corral-quarantined` (git works without a config);
- `commondir`: kept when it is git's own `../..` of a linked worktree, else quarantined;
- what points git at another directory: `core.worktree` (kept only as git's submodule machinery writes
  it: its own checkout, in the root, whose `.git` points back), a `.git` file or symlink in any directory
  and a linked worktree's `gitdir` naming a place outside the roots or through a symlink: quarantined;
- `rebase-merge/`: moved aside when its todo, written during the run, has `exec` lines (or its strategy is
  not git's own): the user's `git rebase --continue` runs them;
- `hooks` (a symlink) or any entry of `hooks/` but the `*.sample` templates: renamed to
  `<name>.corral-quarantined` (git runs a hook only under its exact name); a hook that is a symlink into a
  root whose target was written during the run, too.
A directory on its way to being a git dir (a config or hooks beside any of HEAD, objects, refs,
commondir; the top `.git` whatever it holds) is checked as one, and one that became a git dir during the
run has its older config and hooks checked. Programs a config runs from the tree (`core.fsmonitor =
tools/fsmon`) written during the run are moved aside, and what an included config or a program that is a
symlink leads to is checked. What a directory renamed in during the run holds counts as written during it
(a `hooks/` or `rebase-merge/` of the run, a directory of the run on the path to a program, an included
config, a hook link's target or a hooks directory: `_moved_in`), since renaming a directory leaves its
entries' ctimes as they were. A symlink on the way to what a config names is followed by reading it
(`_through_links`): one made during the run, or in a directory made or renamed there during it, is moved
aside, another older one leads to what is checked.
Also the host users' own global and system git configuration, and the repository around each root
(supervisor/_gitglobal.py): a file it includes, a `core.hooksPath` directory or a program it names under a
root is checked as above (and warned about once: the scan acts only after the run, while the user's git may
read it during the run).
Each quarantined path is reported (`Result.quarantined`, `--json`'s `quarantined`, a warning line for the
first 20 of a run and a count of the rest). Nothing that existed unchanged before the run is touched: the
user's own hooks and settings stay.

Later scans in the same supervisor reuse the directory listings of earlier ones (`Listings`): only
directories whose ctime moved are listed again.

Residual risk (docs/security.md): another sandbox of the same roots still running can plant after this scan;
a tree over the walk's bound is reported, not fully scanned; a change within the kernel's timestamp
granularity before the run's start is not "during" it (the start is taken a 10 ms margin early).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import re
import resource
import secrets
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from supervisor import _gitglobal, _leafwatch
from supervisor.sandbox import _gitconfig, _hostfs

if TYPE_CHECKING:
    from policies import Policy

log = logging.getLogger("corral")

#: Entries one scan looks at, per root (a 100,000-file tree is ~102,000; ~0.3 s here).
MAX_NODES = 500_000
MAX_DEPTH = 64
#: How long a scan waits for another scan of the same supervisor before it scans without the listings.
LOCK_WAIT = 0.05
#: Below MAX_DEPTH: an fd kept every this many levels, and at most this many (_visit_deep).
ANCHOR_EVERY = 32
MAX_ANCHORS = 128
#: Bytes of git configs one scan parses at most (about 2.5 s of CPU); a config written during the run past
#: it is quarantined unchecked, other configs past it are reported.
PARSE_BUDGET = 4 << 20
QUARANTINE_SUFFIX = ".corral-quarantined"
#: The start of the run as compared with ctimes: a margin for the kernel's coarse timestamps.
MARGIN_NS = 10_000_000

#: Settings that run nothing: section (lower case, subsection stripped) -> keys (lower case).
_SAFE: dict[str, frozenset[str]] = {
    "core": frozenset(
        {
            "repositoryformatversion",
            "filemode",
            "bare",
            "logallrefupdates",
            "ignorecase",
            "precomposeunicode",
            "symlinks",
            "autocrlf",
            "eol",
            "safecrlf",
            "quotepath",
            "compression",
            "loosecompression",
            "sparsecheckout",
            "sparsecheckoutcone",
            "checkstat",
            "trustctime",
            "untrackedcache",
            "splitindex",
            "abbrev",
            "commentchar",
            "whitespace",
            "longpaths",
            "protecthfs",
            "protectntfs",
            "filesreflocktimeout",
            "packedrefstimeout",
        }
    ),
    "remote": frozenset(
        {
            "url",
            "pushurl",
            "fetch",
            "push",
            "tagopt",
            "prune",
            "prunetags",
            "mirror",
            "skipdefaultupdate",
            "promisor",
            "partialclonefilter",
        }
    ),
    "branch": frozenset({"remote", "merge", "rebase", "pushremote", "description"}),
    "user": frozenset({"name", "email", "useconfigonly"}),
    "author": frozenset({"name", "email"}),
    "committer": frozenset({"name", "email"}),
    "submodule": frozenset({"url", "active", "branch", "path", "ignore", "shallow", "recurse"}),
    "extensions": frozenset(
        {"objectformat", "worktreeconfig", "refstorage", "partialclone", "preciousobjects", "noop"}
    ),
    "init": frozenset({"defaultbranch"}),
    "pull": frozenset({"rebase", "ff"}),
    "push": frozenset({"default", "autosetupremote", "followtags"}),
    "fetch": frozenset({"prune", "prunetags", "recursesubmodules", "writecommitgraph"}),
    "gc": frozenset(
        {"auto", "autodetach", "autopacklimit", "reflogexpire", "reflogexpireunreachable", "pruneexpire"}
    ),
    "index": frozenset({"version", "threads", "skiphash", "sparse"}),
    "status": frozenset(
        {"showuntrackedfiles", "branch", "short", "submodulesummary", "relativepaths", "aheadbehind"}
    ),
    "advice": frozenset(),  # every advice.* key is a boolean
    "color": frozenset(),  # every color.* key is a colour or a boolean
    "lfs": frozenset(
        {"repositoryformatversion", "url", "pushurl", "locksverify", "fetchinclude", "fetchexclude"}
    ),
    "maintenance": frozenset({"auto", "strategy"}),
    "feature": frozenset({"manyfiles", "experimental"}),
    "merge": frozenset({"ff", "conflictstyle", "log", "renames", "renamelimit", "autostash"}),
    "rebase": frozenset({"autosquash", "autostash", "updaterefs", "stat", "missingcommitscheck"}),
    "commit": frozenset({"verbose", "cleanup", "status"}),
    "diff": frozenset(
        {
            "renames",
            "renamelimit",
            "algorithm",
            "mnemonicprefix",
            "noprefix",
            "submodule",
            "context",
            "colormoved",
            "indentheuristic",
            "statgraphwidth",
        }
    ),
    "log": frozenset({"date", "decorate", "abbrevcommit", "follow", "showsignature", "mailmap", "showroot"}),
    "pack": frozenset({"threads", "windowmemory", "packsizelimit", "depth", "window"}),
    "receive": frozenset({"denycurrentbranch", "denynonfastforwards", "denydeletes", "fsckobjects"}),
    "transfer": frozenset({"fsckobjects"}),
    "rerere": frozenset({"enabled", "autoupdate"}),
}
#: Sections whose every key is harmless (advice.*, color.*).
_ALL_KEYS_SAFE = frozenset({"advice", "color"})


def unsafe_keys(data: bytes | str) -> list[str]:
    """The `section.key` names in git config `data` that are not on the allow-list (include and includeIf
    are never on it), read as git reads them (_gitconfig: comments, quotes, continuations, `\\r`); a file
    git would refuse counts as "unparsed" so that nothing git understands differently gets through."""
    raw = data.encode("utf-8", errors="surrogateescape") if isinstance(data, str) else data
    try:
        entries = _gitconfig.parse(raw)
    except _gitconfig.ConfigSyntaxError as err:
        return [f"unparsed: {err}"]
    return _unsafe(entries)


def _unsafe(entries: list[tuple[str, bytes | None]]) -> list[str]:
    """The `section.key` names among parsed config `entries` that are not on the allow-list."""
    bad: list[str] = []
    for name, value in entries:
        section, _, key = name.rpartition(".")
        top = section.split(".", 1)[0]
        if top in _ALL_KEYS_SAFE:
            continue
        allowed = _SAFE.get(top)
        if allowed is None or key not in allowed:  # submodule.*.update ("!command") among them
            bad.append(f"{top}.{key}" if section else key)
        elif key in ("url", "pushurl") and value is not None and value.lstrip().lower().startswith(b"ext::"):
            # git's `ext::<command>` transport runs the command: refused by git's default protocol.allow,
            # but not where the user's own configuration allows it (`protocol.ext.allow = always`)
            bad.append(f"{top}.{key} (ext::)")
    return bad


#: What a directory's cached listing keeps besides its subdirectories: what tells a git dir, and what in
#: one is checked.
_GIT_NAMES = frozenset(
    {
        "HEAD",
        "objects",
        "refs",
        "commondir",
        "config",
        "config.worktree",
        "hooks",
        ".git",
        "gitdir",
        ".gitmodules",
    }
)
#: What a listing records for a FIFO, socket or device (the scan never opens one).
_SPECIAL = stat.S_IFIFO
#: The files git reads in a worktree's directories (beside a git dir's own).
_WORKTREE_GIT_FILES = frozenset({".git", ".gitignore", ".gitattributes", ".gitmodules", ".mailmap"})
#: Directories one Listings keeps per root (beyond them, directories are listed every time).
MAX_CACHED = 200_000
#: Bytes of listings one Listings keeps over all its roots (`_listing_size`: the path below the root, the
#: names, the containers). Paths and names are the sandbox's choice, up to 4,096 and 255 bytes: with a count
#: bound only, 20,000 directories 12 levels of 250-character names deep made ~75 MB of supervisor memory
#: that stayed (~900 MB per root at MAX_CACHED). An ordinary directory costs ~400 bytes: ~160,000 fit.
MAX_CACHE_BYTES = 64 << 20

_Listing = tuple[int, int, int, dict[str, int]]


def _listing_size(rel: str, listing: _Listing) -> int:
    """What one cached listing holds in memory, in bytes (close to it: sys.getsizeof of each part)."""
    entries = listing[3]
    size = sys.getsizeof(rel) + sys.getsizeof(listing) + sys.getsizeof(entries) + 3 * 32
    for name in entries:
        size += sys.getsizeof(name)
    return size


class _CacheBytes:
    """The bytes of listings kept over every root of one Listings (`MAX_CACHE_BYTES` at most)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0


class RootCache(dict[str, _Listing]):
    """One root's cached listings, {path below the root: (dev, ino, ctime, entries)}, charged to a budget
    shared by all the roots (`MAX_CACHE_BYTES`) and bounded in count (`MAX_CACHED`). Written only through
    `store`, `forget` and `clear` (under the Listings' lock)."""

    def __init__(self, budget: _CacheBytes | None = None) -> None:
        super().__init__()
        self.budget = budget if budget is not None else _CacheBytes()
        self.size = 0

    def store(self, rel: str, listing: _Listing) -> None:
        """Keep `listing` for `rel` if it fits both bounds; else forget what was kept for `rel`."""
        self.forget(rel)
        size = _listing_size(rel, listing)
        if len(self) < MAX_CACHED and self.budget.used + size <= MAX_CACHE_BYTES:
            self[rel] = listing
            self.size += size
            self.budget.used += size

    def forget(self, rel: str) -> None:
        old = self.pop(rel, None)
        if old is not None:
            size = _listing_size(rel, old)
            self.size -= size
            self.budget.used -= size

    def clear(self) -> None:
        self.budget.used -= self.size
        self.size = 0
        super().clear()


class Listings:
    """The directory listings of earlier scans, per root, so that a later scan lists again only the
    directories whose entries changed since (their ctime moved: creating, removing or renaming an entry
    changes the directory's ctime, and a sandbox cannot set a ctime). Everything else costs an openat and an
    fstat per directory instead of reading all its entries: on the 100,000-file tree of docs/security.md,
    ~10x less. A listing taken within `MARGIN_NS` of its directory's last change is not trusted (a change in
    the same timestamp tick would leave the ctime as it was) and is taken again next time. Thread-safe (one
    lock: scans of one supervisor run one at a time).

    It also keeps, per set of roots, the `Snapshot` of the last scan that found nothing in a tree that fits
    one (taken from the roots' second scan on), which `unchanged_since` checks on the event loop (no
    worker-thread hop) after later runs."""

    def __init__(self) -> None:
        self._roots: dict[str, RootCache] = {}
        self._budget = _CacheBytes()
        self.lock = threading.Lock()
        self._snapshots: dict[SnapshotKey, Snapshot] = {}
        #: id(policy) -> (the policy, its snapshot key): computing a key (and even hashing a Policy) costs
        #: more than checking a snapshot. Bounded; the policy is kept so that its id stays its own.
        self._keys: dict[int, tuple[Policy, SnapshotKey]] = {}
        #: The sets of roots scanned so far (bounded): a snapshot is taken from a key's second scan on.
        self._scanned: dict[SnapshotKey, None] = {}
        #: Scans answered by a snapshot, without a worker thread (tests and benchmarks read it).
        self.quick = 0
        #: The inotify watches on the snapshots' leaf directories (supervisor/_leafwatch.py).
        self.watcher = _leafwatch.Watcher()
        #: Per snapshot: the host users' global git config files its scan read, and what they were
        #: (_gitglobal.identity); the quick check stats them again, since the scan read them.
        self.globals: dict[SnapshotKey, tuple[list[str], bytes]] = {}
        #: (roots, the environment variables that choose the files) -> what a scan read of the users'
        #: global git config, and its identity (Scan._read_globals reuses it while that holds).
        self.global_refs: dict[tuple[object, ...], tuple[_gitglobal.Refs, bytes]] = {}

    def root(self, root: str) -> RootCache:
        cache = self._roots.get(root)
        if cache is None:
            if len(self._roots) >= 64:  # bounded: the roots of the policies in use
                self._roots.pop(next(iter(self._roots))).clear()
            cache = self._roots[root] = RootCache(self._budget)
        return cache

    def keep(self, roots: SnapshotKey, snapshot: Snapshot) -> None:
        """Keep `snapshot` for `roots` (under `lock`), closing the one it replaces and, beyond the fd
        budget (`snapshot_fds`), the least recently kept ones."""
        old = self._snapshots.pop(roots, None)
        if old is not None:
            old.close()
        self._snapshots[roots] = snapshot
        budget = snapshot_fds()
        budget -= self.watcher.fd >= 0  # the inotify instance's fd
        while sum(len(s.dirs) for s in self._snapshots.values()) > budget:
            self._snapshots.pop(next(iter(self._snapshots))).close()

    def room(self, roots: SnapshotKey, leaves: int) -> None:
        """Drop the least recently kept snapshots (not that of `roots`) until `leaves` more watches fit
        the watch budget (under `lock`)."""
        while self.watcher.count() + leaves > self.watcher.budget:
            old = next((k for k in self._snapshots if k != roots), None)
            if old is None:
                return
            self.drop(old)

    def sweep(self) -> None:
        """Sort the queued inotify events out to their snapshots, and drop every snapshot found changed
        (under `lock`, in a worker thread: closing fds and removing watches is no work for the loop)."""
        self.watcher.drain()
        for roots in [k for k, s in self._snapshots.items() if s.dirty]:
            self.drop(roots)

    def drop(self, roots: SnapshotKey) -> None:
        """Forget the snapshot of `roots` (under `lock`)."""
        old = self._snapshots.pop(roots, None)
        if old is not None:
            old.close()

    def scanned_before(self, roots: SnapshotKey) -> bool:
        """Whether `roots` were scanned before (the last 256 sets of roots scanned are remembered); notes
        that they are now (under `lock`)."""
        if roots in self._scanned:
            return True
        if len(self._scanned) >= 256:
            self._scanned.pop(next(iter(self._scanned)))
        self._scanned[roots] = None
        return False

    def has(self, roots: SnapshotKey) -> bool:
        """Whether a snapshot of `roots` is kept and not known to be changed."""
        snapshot = self._snapshots.get(roots)
        return snapshot is not None and not snapshot.dirty

    def unchanged_since(self, policy: Policy, started_ns: int) -> bool:
        """Whether the scan of `policy`'s writable roots for a run that started at `started_ns` is known to
        find nothing without running it: a snapshot of these roots, complete before the run started, of a
        scan that found nothing, and nothing in it changed since (`Snapshot.unchanged`). A few fstat calls
        on fds held open and fstatat calls (no symlink followed) by name in them: cheap and non-blocking
        enough for the event loop, unlike a worker-thread hop. False, never an error, when that cannot be
        told (no snapshot, too recent, a scan running now, something changed, an inotify event queued for
        any snapshot's leaves: the caller scans in full; a snapshot found changed is marked so, and the
        full scan, in its worker thread, drops it and takes a new one)."""
        known = self._keys.get(id(policy))
        if known is not None and known[0] is policy:
            roots = known[1]
        else:
            roots = snapshot_key(policy)
            if len(self._keys) >= 256:
                self._keys.pop(next(iter(self._keys)))
            self._keys[id(policy)] = (policy, roots)
        if not self.lock.acquire(blocking=False):
            return False
        try:
            snapshot = self._snapshots.get(roots)
            if snapshot is None or snapshot.dirty or snapshot.taken_ns >= started_ns:
                return False
            if snapshot.leaves and self.watcher.pending():
                return False  # which snapshot it concerns is sorted out off the loop (sweep)
            watched = self.globals.get(roots)
            if watched is None or _gitglobal.identity(watched[0]) != watched[1]:
                return False  # the users' global git config changed: read again, by a full scan
            if not snapshot.unchanged():
                snapshot.dirty = True
                return False
            self.quick += 1
            return True
        finally:
            self.lock.release()

    def close(self) -> None:
        """Close every snapshot's fds."""
        with self.lock:
            for snapshot in self._snapshots.values():
                snapshot.close()
            self._snapshots.clear()
            self.watcher.close()


#: Directories one Snapshot holds open at most (leaf directories are watched, not held: LEAF_WATCHES): the
#: fstat calls of the quick check cost the loop ~1.5 us each here, so a tree with more directories that
#: hold something that matters is scanned in a worker thread after every run (a hop of ~0.1-0.2 ms).
SNAPSHOT_DIRS = 64
#: Leaf directories one Snapshot watches at most (inotify, _leafwatch: the quick check's cost does not
#: grow with them; they count against the user's inotify watches, of which all snapshots together use at
#: most 1/16, 4,096 at most).
LEAF_WATCHES = 2048


def snapshot_fds() -> int:
    """fds all snapshots together may hold: 1/16 of the soft RLIMIT_NOFILE, at most 256."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 256 if soft == resource.RLIM_INFINITY else min(256, soft // 16)


class Snapshot:
    """What a scan that found nothing saw, to tell later that nothing a scan looks at has changed since:
    an fd of every directory it listed that holds something it looks at (each root's, every directory with
    a subdirectory or one of git's names, the git dirs and their hooks/) with its inode and ctime; an
    inotify watch on every other directory it listed (a leaf: no subdirectory, none of git's names, such
    as a loose-object directory `.git/objects/ab`: supervisor/_leafwatch.py); and the inode and ctime of
    each git file it checks by name (config, config.worktree, commondir, a hooks that is no directory,
    every entry of hooks/ that git could run). A change anywhere a scan looks sets a ctime there: a new,
    removed or renamed entry its directory's, a file rewritten in place its own (a sandbox cannot set a
    ctime); in a leaf, it also queues an inotify event. Taken only when every ctime read is more than
    `MARGIN_NS` older than the scan's start, so that a later change, stamped at least a timestamp tick
    later, cannot leave a ctime as it was (a leaf's is read again after its watch is added, so that a
    change between its listing and its watch is not missed); `taken_ns`, after the last read, is compared
    with a run's start (a change made before the snapshot was complete could be in it). The roots' paths
    are looked up again each time (`os.stat`, as the scan opens them: the caller's own paths) and must
    still name the directories held. `dirty`: found changed (by the quick check, or an inotify event
    sorted to it), to be dropped by the next scan."""

    __slots__ = ("dirs", "dirty", "leaves", "names", "roots", "taken_ns", "watcher")

    def __init__(self, watcher: _leafwatch.Watcher | None = None) -> None:
        self.roots: list[tuple[str, int, int]] = []  # (path, st_dev, st_ino)
        self.dirs: list[tuple[int, int, int, int]] = []  # (fd, st_dev, st_ino, st_ctime_ns)
        self.names: list[tuple[int, str, int, int, int]] = []  # (fd, name, st_dev, st_ino, st_ctime_ns)
        self.leaves: list[int] = []  # inotify watch descriptors in `watcher`
        self.watcher = watcher
        self.dirty = False
        self.taken_ns = 0

    def unchanged(self) -> bool:
        """Whether every root, directory and name is as it was (the leaves' events are the caller's:
        Listings.unchanged_since)."""
        try:
            for path, dev, ino in self.roots:
                st = os.stat(path)
                if st.st_dev != dev or st.st_ino != ino:
                    return False
            for fd, dev, ino, ctime in self.dirs:
                st = os.fstat(fd)
                if st.st_ctime_ns != ctime or st.st_ino != ino or st.st_dev != dev:
                    return False
            for fd, name, dev, ino, ctime in self.names:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if st.st_ctime_ns != ctime or st.st_ino != ino or st.st_dev != dev:
                    return False
        except OSError:
            return False
        return True

    def close(self, spare: bool = True) -> None:
        """Close its fds and give its watches back (kept as spares for the next snapshot, unless not
        `spare`)."""
        for fd, *_ in self.dirs:
            os.close(fd)
        self.dirs.clear()
        self.names.clear()
        if self.watcher is not None:
            self.watcher.release(self, self.leaves, spare)


class _NoSnapshot(Exception):
    """The tree cannot be snapshotted (too large, too recently changed, out of fds)."""


class Scan:
    """One post-run scan of the writable roots of a sandbox that started at `started_ns` (CLOCK_REALTIME,
    the clock of ctimes). `run()` returns what was quarantined: (path, reason) pairs. `listings`: what
    earlier scans listed (optional)."""

    def __init__(
        self,
        roots: list[str],
        started_ns: int,
        max_nodes: int = MAX_NODES,
        listings: Listings | None = None,
        protected: frozenset[str] = frozenset(),
        key: SnapshotKey | None = None,
        unbound: Sequence[str] = (),
    ) -> None:
        self.roots = roots
        #: The roots without a `.git` when the sandbox's view was built: a top `.git` found there after the
        #: run had nothing bound read-only, whatever its files' birth times (one renamed into place).
        self.unbound = frozenset(os.path.normpath(r) for r in unbound)
        #: What the policy binds read-only in the top git dir and its submodules' ("config", "hooks").
        self.protected = protected
        self.since = started_ns - MARGIN_NS
        self.max_nodes = max_nodes
        self.left = max_nodes
        self.found: list[tuple[str, str]] = []
        self.listings = listings
        self._cache = RootCache()
        #: With `key` and `listings` (and none kept for `key` yet): the Snapshot this scan takes, kept in
        #: `listings` if it finds nothing; None once the tree turns out not to fit one.
        self.key = key
        self.snap: Snapshot | None = None
        self._held: dict[int, int] = {}  # the fds being scanned -> their copies in snap
        #: Directories below MAX_DEPTH levels still to scan: (rel, path, in the mounts' walk).
        self._deep: list[tuple[str, str, bool]] = []
        #: The root being scanned and its fd (include targets are looked up beneath it).
        self._root = ""
        self._rootfd = -1
        #: Included files already checked in this scan (real paths).
        self._included: set[str] = set()
        #: Bytes of git config parsed by this scan (_parse_budget).
        self._parsed = 0
        #: The configs parsed by this scan, by what they were when read (dev, inode, ctime, size): each is
        #: parsed once (its settings, or the syntax error git would refuse it with), however many checks
        #: read it (_config_problem, _check_includes, _check_hooks_path, _check_programs).
        self._configs: dict[tuple[int, int, int, int], list[tuple[str, bytes | None]] | str] = {}
        #: The host users' global and system git configuration (supervisor/_gitglobal.py), read once per
        #: scan in `_run`: what it includes or names as hooks under a root is checked like a repository's.
        self.globals: _gitglobal.Refs | None = None
        #: When it was read, and what tells that it has not changed since (`Listings` keeps it with a
        #: snapshot: the quick check compares it); None when it changed while being read.
        self.globals_identity: bytes | None = None
        self._global_hooks_rel: list[tuple[str, str]] = []
        self._old_ns = time.time_ns() - MARGIN_NS  # a snapshot's ctimes must be older

    def run(self) -> list[tuple[str, str]]:
        """Scan every root. Never raises: what cannot be scanned is itself reported."""
        if self.listings is None:
            return self._run()
        if not self.listings.lock.acquire(timeout=LOCK_WAIT):
            # Another scan holds the listings, perhaps one a sandbox made slow (a large tree, configs to
            # parse, run after run): this one does not queue behind it (a tenant's 3 s timeout returned
            # after 6-10 s). It scans without them: every directory listed, no snapshot, nothing shared.
            self.listings = None
            self.key = None
            return self._run()
        try:
            return self._run_with(self.listings)
        finally:
            self.listings.lock.release()

    def _run_with(self, listings: Listings) -> list[tuple[str, str]]:
        """`_run` with the listings (their lock held): a snapshot taken of a small tree, kept if it finds
        nothing."""
        listings.sweep()  # snapshots found changed since: dropped (a new one is taken below)
        leaves = None
        if (
            self.key is not None
            and not listings.has(self.key)
            # Not on a key's first scan: the CLI (one run per supervisor) and one-off policies would pay
            # the fds and watches of a snapshot never used (~6 ms on a two-commit repository).
            and listings.scanned_before(self.key)
        ):
            # A tree whose listings alone exceed a snapshot is not tried (that would cost dups).
            leaves = _fits([listings.root(r) for r in self.roots])
        if self.key is not None and leaves is not None:
            listings.room(self.key, leaves)
            self.snap = Snapshot(listings.watcher)
        try:
            found = self._run()
        except BaseException:
            self._abandon()
            raise
        ident, refs = self.globals_identity, self.globals
        if self.snap is not None and self.key is not None and not found and ident is not None and refs:
            self.snap.taken_ns = time.time_ns()
            listings.keep(self.key, self.snap)
            kept = listings.globals
            kept.pop(self.key, None)
            if len(kept) >= 256:  # bounded: entries of snapshots since dropped go first
                kept.pop(next(iter(kept)))
            kept[self.key] = (refs.watched, ident)
        else:
            self._abandon()
        listings.sweep()  # the watches just removed queue events: read them now, off the loop
        return found

    def _abandon(self) -> None:
        if self.snap is not None:
            self.snap.close(spare=False)  # a tree that did not fit: its watches are not kept for adoption
            self.snap = None

    def _hold(self, fd: int, st: os.stat_result, leaf: bool = False) -> None:
        """Keep a copy of the directory `fd` (`st`: its fstat before it was listed) in the snapshot being
        taken; a `leaf` (its listing holds nothing that matters) is watched instead, when it can be."""
        snap = self.snap
        if snap is None:
            return
        if leaf and self._watch(fd, None, (st.st_dev, st.st_ino, st.st_ctime_ns)):
            return
        if len(snap.dirs) >= SNAPSHOT_DIRS or st.st_ctime_ns >= self._old_ns:
            self._abandon()
            return
        try:
            copy = os.dup(fd)
        except OSError:  # EMFILE: no snapshot, the next scan runs in a thread too
            self._abandon()
            return
        snap.dirs.append((copy, st.st_dev, st.st_ino, st.st_ctime_ns))
        self._held[fd] = copy

    def _watch(self, fd: int, name: str | None, was: _Seen) -> bool:
        """Watch a leaf directory (inotify) in the snapshot being taken: the directory `fd` (`name` None)
        or its entry `name` (the final component not followed: a symlink is no directory), whose listing
        was taken with `was` (dev, ino, ctime), older than the margin. A new watch's inode and ctime are
        read again once it is in place (fstat, or fstatat with no link followed) and must be `was`: then
        no change between the listing and the watch went unseen. False when it cannot be watched (the
        caller holds it instead); the snapshot is abandoned when it changed."""
        snap = self.snap
        if snap is None or self.listings is None or len(snap.leaves) >= LEAF_WATCHES:
            return False
        if was[2] >= self._old_ns:
            return False
        watcher = self.listings.watcher
        # An inode a watch was on before this scan began (its events until then sorted out by the sweep):
        # whatever changed it since is queued for its owners, this snapshot among them from now on.
        wd = watcher.adopt(snap, was[0], was[1])
        if wd is not None:
            snap.leaves.append(wd)
            return True
        if name is None:
            wd = watcher.watch(snap, f"/proc/self/fd/{fd}".encode(), True)  # our fd: the exact inode
        else:
            wd = watcher.watch(snap, f"/proc/self/fd/{fd}/".encode() + os.fsencode(name), False)
        if wd is None:
            return False
        snap.leaves.append(wd)
        try:
            st = os.fstat(fd) if name is None else os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino, st.st_ctime_ns) != was or not stat.S_ISDIR(st.st_mode):
            self._abandon()
        else:
            watcher.known(wd, st.st_dev, st.st_ino)
        return True

    def _hold_name(self, fd: int, name: str) -> None:
        """Keep the inode and ctime of `name` in the directory `fd` (held) in the snapshot being taken."""
        snap = self.snap
        if snap is None:
            return
        held = self._held.get(fd)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        if held is None or st is None or st.st_ctime_ns >= self._old_ns:
            self._abandon()
            return
        snap.names.append((held, name, st.st_dev, st.st_ino, st.st_ctime_ns))

    def _closing(self, fd: int) -> None:
        """`fd`, a directory being scanned, is about to be closed (its copy stays held)."""
        self._held.pop(fd, None)

    def _read_globals(self) -> None:
        """Read the host users' global git configuration (`_gitglobal.references`) and what tells later
        that it has not changed (`_gitglobal.identity`): taken after the read, and trusted only when every
        file's ctime is older than the read's start (a change during the read could otherwise be missed).
        With `listings`, what an earlier scan of these roots read is reused while its identity holds (and
        the environment that chose the files is the same): one C call instead of reading the files."""
        git_env = sorted((k, v) for k, v in os.environ.items() if k.startswith("GIT_CONFIG"))
        key = (tuple(self.roots), *(os.environ.get(v) for v in _GLOBAL_ENV), *git_env)
        cache = self.listings.global_refs if self.listings is not None else None
        hit = cache.get(key) if cache is not None else None
        if hit is not None and _gitglobal.identity(hit[0].watched) == hit[1]:
            refs, ident = hit
        else:
            started = time.time_ns() - MARGIN_NS
            refs = _gitglobal.references(self.roots)
            ident = _gitglobal.identity(refs.watched)
            if cache is not None:
                cache.pop(key, None)
                if _gitglobal.newest_ctime(ident) < started:
                    if len(cache) >= 64:
                        cache.pop(next(iter(cache)))
                    cache[key] = (refs, ident)
            if _gitglobal.newest_ctime(ident) >= started:
                ident = None
        self.globals, self.globals_identity = refs, ident
        self._global_hooks_rel = [(rel, via) for _abs, rel, via in refs.hooks if rel is not None]

    def _warn_global(self, target: str, via: str, what: str) -> None:
        """Say once per process that the users' global git config `via` names `target` in a writable
        root: the scan moves aside what a run wrote there, but only after the run; while it runs, the
        user's own git (an editor polling `git status`) reads what the sandbox wrote."""
        if (target, via) in _warned or len(_warned) >= 1024:
            return
        _warned.add((target, via))
        log.warning(
            "git: %s: %s in a writable root, which %s names: a sandbox can write it "
            "while it runs, and your git reads it then (corral moves it aside only after the run); keep "
            "it outside the writable roots",
            target,
            what,
            self.globals.label(via) if self.globals is not None else f"the global git config {via}",
        )

    def _check_global_refs(self, root: str) -> None:
        """What the host users' global git configuration names under the root being scanned: an included
        file written during the run with a setting that runs programs is quarantined (and its own includes
        followed), a `core.hooksPath` directory's entries written during the run are quarantined. Either
        makes this scan take no snapshot (`_in_root`)."""
        refs = self.globals
        if refs is None:
            return
        files = [*((path, via, h) for path, via, h in refs.includes), *((p, "", h) for p, h in refs.in_roots)]
        for target, via, home in files:
            target_in = self._in_root("/", os.fsencode(target), os.geteuid())
            if target_in is None or target_in in self._included:
                continue
            if via:
                self._warn_global(target_in, via, "an included git config")
            config = refs.label(via)
            what = f"{config} includes it" if via else "a global git config location"
            by = f"git config included by {config}" if via else "global git config"
            self._check_included(target_in, what, by, 0, home)
        for program, key, via in refs.programs:
            target_in = self._in_root("/", os.fsencode(program), os.geteuid())
            if target_in is None:
                continue
            self._warn_global(target_in, via, f"a program git runs ({key})")
            label = refs.label(via)
            self._check_program(target_in, f"{key} of {label}", f"a program {label} runs ({key})")
        for absolute, _rel, via in refs.hooks:
            if absolute is None:
                continue
            target_in = self._in_root("/", os.fsencode(absolute), os.geteuid())
            if target_in is not None:
                self._check_hooks_dir(target_in, f"core.hooksPath of {refs.label(via)}", via=via)
        for template, via, home in refs.templates:
            # git copies the template's hooks/ and config into each repository it makes: a hook planted
            # there ran at the user's next `git clone` (post-checkout), a config's core.fsmonitor later.
            label = f"init.templateDir of {refs.label(via)}"
            hooks_in = self._in_root("/", os.fsencode(os.path.join(template, "hooks")), os.geteuid())
            if hooks_in is not None:
                self._check_hooks_dir(hooks_in, f"{label}: git copies them into each new repository", via=via)
            config_in = self._in_root("/", os.fsencode(os.path.join(template, "config")), os.geteuid())
            if config_in is not None and config_in not in self._included:
                self._warn_global(config_in, via, "a git template config")
                self._check_included(
                    config_in, f"{label} names it", f"template git config of {label}", 0, home
                )

    def _run(self) -> list[tuple[str, str]]:
        self._read_globals()
        for root in self.roots:
            try:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # a missing root: nothing to scan
            self.left = self.max_nodes
            self._root, self._rootfd = root, fd
            self._cache = self.listings.root(root) if self.listings is not None else RootCache()
            try:
                self._visit(fd, root, "", 0)
                self._check_global(fd, root)
                self._check_global_refs(root)
                if self.snap is not None:
                    st = os.fstat(fd)
                    self.snap.roots.append((root, st.st_dev, st.st_ino))
            except _Budget:
                self._deep.clear()
                self._cache.clear()
                self.found.append(
                    (root, f"not fully scanned: over {self.max_nodes} entries; review git repositories")
                )
            except OSError as err:
                self.found.append((root, f"not fully scanned: {os.strerror(err.errno or 0)}"))
            finally:
                self._deep.clear()
                self._closing(fd)
                os.close(fd)
        return self.found

    def _list(self, fd: int, rel: str) -> dict[str, int]:
        """The entries of the directory `fd` that matter (subdirectories, git's names), from the cache when
        the directory is unchanged since it was listed."""
        st = os.fstat(fd)
        hit = self._cache.get(rel)
        if hit is not None and hit[:3] == (st.st_dev, st.st_ino, st.st_ctime_ns):
            self.left -= 1 + len(hit[3])
            if self.left < 0:
                raise _Budget
            self._hold(fd, st, leaf=bool(rel) and _leaf(hit[3]))
            return hit[3]
        listed_at = time.time_ns()
        entries: dict[str, int] = {}
        with os.scandir(fd) as it:
            for entry in it:
                self.left -= 1
                if self.left < 0:
                    raise _Budget
                # A FIFO, socket or device: rare, and kept for _check_specials.
                mode = _hostfs.entry_type(entry, _SPECIAL)
                # A symlink: kept for _check_specials (git follows one to a FIFO and waits).
                if mode in (stat.S_IFDIR, _SPECIAL, stat.S_IFLNK) or entry.name in _GIT_NAMES:
                    entries[entry.name] = mode
        if st.st_ctime_ns < listed_at - MARGIN_NS:
            self._cache.store(rel, (st.st_dev, st.st_ino, st.st_ctime_ns, entries))
        else:
            self._cache.forget(rel)
        self._hold(fd, st, leaf=bool(rel) and _leaf(entries))  # a root is held: its path is looked up again
        return entries

    def _visit(self, fd: int, path: str, rel: str, depth: int, walk: bool = False) -> None:
        """Check the directory `fd` (at `path`, `rel` below its root) and, recursively, every directory
        below it, git dirs' own subdirectories included: a git dir hidden in another's `objects/` or `refs/`
        is as usable (through a `.git` file naming it) as one anywhere else. `walk`: the mounts' walk of
        `.git/modules` looks into this directory (see _bound). Past MAX_DEPTH levels the directories below
        are walked by _visit_deep, so that the fds held stay bounded and nothing is skipped."""
        for name, sub_walk in self._check_dir(fd, path, rel, walk):
            if depth >= MAX_DEPTH:
                self._abandon()  # a snapshot holds the fds of the levels it watches: not of these
                self._deep.append((f"{rel}/{name}", os.path.join(path, name), sub_walk))
                continue
            if self._quiet_leaf(fd, name, f"{rel}/{name}"):
                continue
            try:
                sub = self._open_dir(fd, name, os.path.join(path, name))
            except OSError as err:
                self._abandon()  # a directory a snapshot could not watch
                self._unopened(os.path.join(path, name), err)
                continue
            try:
                self._visit(sub, os.path.join(path, name), f"{rel}/{name}", depth + 1, sub_walk)
            finally:
                self._closing(sub)
                os.close(sub)
        if self._deep:
            self._visit_deep(fd, rel)

    def _quiet_leaf(self, fd: int, name: str, rel: str) -> bool:
        """Whether the subdirectory `name` of `fd` can be passed over unopened: its cached listing holds
        nothing that matters (no subdirectory, none of git's names: a loose-object directory such as
        `.git/objects/ab`), and an fstatat of it (no link followed) finds the same inode with the same
        ctime, so its entries are still those (a new, removed or renamed entry would have moved its ctime;
        a sandbox cannot set one). One syscall instead of an open, an fstat and a close: a repository's 256
        object directories cost a scan ~1 ms otherwise, every run. Charged to the node budget as a listing
        from the cache is. While a snapshot is being taken, the leaf is watched by name from `fd` (the
        final component not followed: a symlink is no directory) and its fstatat, taken after the watch,
        must match the cache: a leaf that cannot be watched is opened and held instead."""
        hit = self._cache.get(rel)
        if hit is None or hit[3]:
            return False
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False  # gone or unreadable: the open reports it as before
        if (st.st_dev, st.st_ino, st.st_ctime_ns) != hit[:3] or not stat.S_ISDIR(st.st_mode):
            return False
        if self.snap is not None and (not self._watch(fd, name, hit[:3]) or self.snap is None):
            return False  # not watched (open and hold it), or changed (abandoned: list it again)
        self.left -= 1
        if self.left < 0:
            raise _Budget
        return True

    def _visit_deep(self, top: int, top_rel: str) -> None:
        """The directories queued below the directory `top` (at `top_rel`, MAX_DEPTH levels down), depth
        first, without a chain of fds: each is opened (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: no
        link followed, never out of `top`) from the nearest of the anchors kept on the way down, an fd of
        every ANCHOR_EVERY-th level (at most MAX_ANCHORS), so that an open resolves at most ANCHOR_EVERY
        components and the walk is linear in the tree's size. (It used to open each from the root by its
        whole path, charged to the node budget per component: a chain of ~1,000 one-letter directories, not
        500,000 entries, used the budget up, and a git dir at its bottom went unscanned.) Past the anchors,
        an open is charged to the budget per component beyond ANCHOR_EVERY. A path too long to open from
        the farthest anchor is reported (ENAMETOOLONG)."""
        anchors: list[tuple[str, int]] = [(top_rel, top)]  # deepest last; `top` is the caller's
        try:
            while self._deep:
                rel, path, walk = self._deep.pop()
                while len(anchors) > 1 and not rel.startswith(anchors[-1][0] + "/"):
                    os.close(anchors.pop()[1])
                base_rel, base = anchors[-1]
                below = rel[len(base_rel) + 1 :]
                steps = below.count("/") + 1
                if steps > ANCHOR_EVERY:
                    self.left -= steps - ANCHOR_EVERY
                    if self.left < 0:
                        raise _Budget
                try:
                    fd = _hostfs.open_beneath(base, below, _DIR_FLAGS)
                except OSError as err:
                    self._unopened(path, err)
                    continue
                keep = steps >= ANCHOR_EVERY and len(anchors) <= MAX_ANCHORS
                try:
                    for name, sub_walk in self._check_dir(fd, path, rel, walk):
                        self._deep.append((f"{rel}/{name}", os.path.join(path, name), sub_walk))
                finally:
                    if keep:
                        anchors.append((rel, fd))
                    else:
                        os.close(fd)
        finally:
            for _rel, fd in anchors[1:]:
                os.close(fd)

    def _open_dir(self, fd: int, name: str, path: str) -> int:
        """The subdirectory `name` of `fd` (at `path`) opened with no link followed. One its owner may not
        read or search, when the scan runs as that owner (an ordinary caller: the sandbox's own uid), is
        made readable to it first (u+rwx, reported): git reaches what is inside by name through a
        directory of mode 0100, which the scan could not list, so a hook planted in `.git/hooks` made
        0100 ran at the user's next commit, reported only as "not fully scanned"."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except PermissionError:
            if not self._let_owner_read(fd, name, path):
                raise
        return os.open(name, _DIR_FLAGS, dir_fd=fd)

    def _let_owner_read(self, fd: int, name: str, path: str) -> bool:
        """Give the owner of the directory `name` in `fd` read, write and search rights on it when the scan
        runs as that owner (not as root, which needs none) and it changed during the run, through an
        O_PATH fd (no link followed)."""
        euid = os.geteuid()
        st = self._lstat(fd, name)
        if euid == 0 or st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != euid:
            return False
        if st.st_ctime_ns < self.since:
            # Not changed during the run: not the sandbox's doing (a chmod moves the ctime), and nothing
            # can have been added inside it since the scan that last saw it readable (an entry made
            # there needs write permission on it: a chmod again). Reported, left as it is.
            return False
        if st.st_mode & 0o700 == 0o700:
            return False
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            now = os.fstat(pfd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISDIR(now.st_mode):
                return False
            os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(now.st_mode) | 0o700)
        except OSError:
            return False
        finally:
            os.close(pfd)
        self.found.append(
            (
                path,
                f"a directory its owner could not read (mode {stat.S_IMODE(st.st_mode):o}), through which "
                "git still reaches what is inside: made readable to its owner (u+rwx) to be scanned",
            )
        )
        return True

    def _unopened(self, path: str, err: OSError) -> None:
        """A subdirectory listed but not opened: gone or replaced by a link since (a link is not followed;
        what it leads to in a root is scanned there), or not opened for want of resources (EMFILE: reported,
        its subtree was not scanned)."""
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            return
        self.found.append(
            (path, f"not fully scanned: {os.strerror(err.errno or 0)}; review git repositories")
        )

    def _check_dir(self, fd: int, path: str, rel: str, walk: bool) -> list[tuple[str, bool]]:
        """Check the directory `fd` if it is a git dir; return its subdirectories, each with whether the
        mounts' walk of `.git/modules` looks into it."""
        entries = self._list(fd, rel)
        # git's own test (is_git_directory), which follows symlinks for objects/ and refs/.
        is_gitdir = "HEAD" in entries and (
            "commondir" in entries or ("objects" in entries and "refs" in entries)
        )
        top = rel == "/.git"
        # A top `.git` of a root that had none when the view was built: nothing of it was bound, every file
        # in it came during the run (made, or renamed into place: a first run's prepared directory).
        new_top = top and self._root in self.unbound
        bound = self._bound(fd, rel, walk) and not new_top
        defining = [n for n in _DEFINING if n in entries]
        # A directory on its way to being one (a config or hooks beside any of git's defining entries: a
        # linked worktree's common dir has objects/ and refs/ but no HEAD; the workdir's own `.git`
        # whatever it holds) is checked as one: what is written there now is what git reads once the rest
        # appears. One that became a git dir during the run has what it held from before checked (_fresh),
        # but for the top `.git`, whose config and hooks the mounts bind read-only for the run: there a
        # sandbox's checkout, commit and stash would move the user's own hooks aside.
        if is_gitdir or ((defining or top) and any(n in entries for n in _CHECKED)):
            fresh = new_top or (bool(defining) and not top and self._fresh(fd, defining))
            # In a directory not (yet) a git dir, only what git would run as a hook is one (a source
            # tree's `hooks/` beside an `objects/` holds code of its own).
            self._check_gitdir(fd, path, entries, bound, fresh, hook_names=not (is_gitdir or top))
        if entries.get(".git") in (stat.S_IFREG, stat.S_IFLNK):
            self._check_pointer(fd, path, ".git", path)
        if entries.get(".gitmodules") == stat.S_IFREG:
            self._check_gitmodules(fd, path)
        if _SPECIAL in entries.values():
            self._check_specials(fd, path, rel, entries, is_gitdir)
        if stat.S_IFLNK in entries.values() and (is_gitdir or not walk):
            # (Not among the submodule git dirs the mounts walk, `.git/modules/<name>`: the next sandbox is
            # refused there naming the link to remove, which a link moved aside beside it would be too.)
            self._check_links(fd, path, rel, entries, is_gitdir)
        subdirs = []
        for name, mode in entries.items():
            if mode == stat.S_IFDIR:
                # The mounts' walk: below .git/modules every directory is looked into until a git dir,
                # and in a git dir it bound only its modules/.
                subdirs.append((name, (bound and name == "modules") or (walk and not bound)))
        return subdirs

    def _check_gitmodules(self, fd: int, path: str) -> None:
        """A `.gitmodules` written during the run that gives a submodule a URL of git's `ext::<command>`
        transport: `git submodule update --init` clones it and runs the command where the user's own
        configuration allows the ext transport (`protocol.ext.allow = always`; git's default refuses it).
        Moved aside (git then sees no submodules there; the user reviews it)."""
        self._hold_name(fd, ".gitmodules")  # rewritten in place: its own ctime only
        if self._changed(fd, ".gitmodules") is None:
            return
        try:
            data = _hostfs.read_file(fd, ".gitmodules", os.path.join(path, ".gitmodules"))
            st = os.stat(".gitmodules", dir_fd=fd, follow_symlinks=False)
        except (OSError, _hostfs.Unsafe):
            return  # a FIFO there: _check_specials
        if data is None or b"ext::" not in data.lower():
            return
        entries = self._parsed_config((st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size), data)
        if isinstance(entries, str):
            return  # git refuses it
        bad = entries is None or any(
            k.startswith("submodule.")
            and k.endswith(".url")
            and v is not None
            and v.lstrip().lower().startswith(b"ext::")
            for k, v in entries
        )
        if bad:
            self._quarantine(
                fd,
                path,
                ".gitmodules",
                ".gitmodules written during the run gives a submodule an ext:: URL (a command)",
            )

    def _check_specials(self, fd: int, path: str, rel: str, entries: dict[str, int], is_gitdir: bool) -> None:
        """Quarantine a FIFO, socket or device made during the run where the host user's git opens a file:
        anywhere in a git dir (HEAD, the index, a ref, an object), or at a name git reads in the worktree
        (`.git`, `.gitignore`, `.gitattributes`, `.gitmodules`, `.mailmap`). git opens them without
        O_NONBLOCK and waits: a FIFO at `.git/HEAD` held the user's next `git status` for ever. One made
        elsewhere (a build's named pipe) is left alone, and so is one at a worktree name born before the run.
        In a git dir one is moved aside whatever its age: git makes none there, and a directory renamed
        into one keeps its entries' ctimes (a first run's `stash/heads/main` FIFO, where nothing of git's
        looks, renamed to `sub/.git/refs/heads` by a second run, held the user's `git status` for ever)."""
        in_git = is_gitdir or self._inside_gitdir(rel.lstrip("/"))
        for name, mode in list(entries.items()):
            if mode != _SPECIAL or not (in_git or name in _WORKTREE_GIT_FILES) or _moved_aside(name):
                continue
            if in_git or self._changed(fd, name) is not None:
                self._quarantine(
                    fd, path, name, "a FIFO, socket or device where git opens a file (git would wait on it)"
                )

    def _check_links(self, fd: int, path: str, rel: str, entries: dict[str, int], is_gitdir: bool) -> None:
        """Quarantine a symlink made during the run (its own ctime, or its directory's: one renamed into
        place keeps its entries' ctimes) where the host user's git opens a file: in a git dir (the index, a
        ref, `packed-refs`, `info/exclude`, `objects/info/alternates`...; git makes no symlink there), or
        at `.gitmodules`, `.gitattributes`, `.gitignore` or `.mailmap` in a worktree. git follows it, to a
        FIFO (a build's named pipe, or one the host keeps anywhere) where it waits for ever, or to
        /dev/zero, which it reads until its memory runs out. Only in a directory changed during the run (an
        fstat; nothing else for the rest); not `hooks` and not in a hooks directory (a user's hooks are
        often links: _check_hook_links judges them), not `.git` (_check_pointer), not `HEAD` (git reads a
        symlinked HEAD's text as a symref, never opens its target; the mounts refuse one under
        .git/modules)."""
        if os.fstat(fd).st_ctime_ns < self.since:
            return  # nothing in it was made, removed or renamed during the run
        in_git: bool | None = None
        for name, mode in list(entries.items()):
            if mode != stat.S_IFLNK or name in ("hooks", ".git", "HEAD") or _moved_aside(name):
                continue
            if in_git is None:
                in_git = (is_gitdir or self._inside_gitdir(rel.lstrip("/"))) and not rel.endswith("/hooks")
            if not (in_git or name in _WORKTREE_GIT_FILES):
                continue
            if self._changed(fd, name) is not None or self._moved_in(path):
                self._quarantine(
                    fd, path, name, "a symlink where git opens a file, made during the run (git follows it)"
                )

    @staticmethod
    def _bound(fd: int, rel: str, walk: bool) -> bool:
        """Whether the mounts bound this directory's protected git files read-only for the run
        (mounts._protect, _expand_git): the top `.git`, and each directory its walk of `.git/modules`
        takes for a submodule's git dir (HEAD a regular file). The scan trusts a protected file born before
        the run only there: anywhere else (a git dir in another's objects/, a HEAD that is a symlink,
        which the walk does not take for a git dir) the sandbox could have rewritten it in place."""
        if rel == "/.git":
            return True
        if not walk:
            return False
        try:
            head = os.stat("HEAD", dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(head.st_mode)

    def _check_global(self, fd: int, root: str) -> None:
        """A writable root that is (or holds, at its top) a home directory: `.gitconfig` and
        `.config/git/config` there are the host user's global git configuration, which their git reads in
        EVERY repository. Written during the run with a setting that runs programs: quarantined, like a
        repository's config."""
        if self._changed(fd, ".gitconfig") is not None:
            reason = self._config_problem(fd, os.path.join(root, ".gitconfig"), ".gitconfig")
            if reason:
                self._quarantine(fd, root, ".gitconfig", reason.replace("git config", "global git config"))
        self._check_includes(fd, root, ".gitconfig", 0)
        with contextlib.suppress(OSError):
            os.stat(".gitconfig", dir_fd=fd, follow_symlinks=False)
            self._hold_name(fd, ".gitconfig")  # a rewrite in place sets only its own ctime
        sub = -1
        try:
            sub = os.open(".config", _DIR_FLAGS, dir_fd=fd)
            git = os.open("git", _DIR_FLAGS, dir_fd=sub)
        except OSError:
            return  # none, a link (never followed), unreadable
        finally:
            if sub >= 0:
                os.close(sub)
        try:
            path = os.path.join(root, ".config", "git")
            with contextlib.suppress(OSError):
                os.stat("config", dir_fd=git, follow_symlinks=False)
                self._abandon()  # not held by name: the quick check could not see it rewritten in place
            if self._changed(git, "config") is not None:
                reason = self._config_problem(git, os.path.join(path, "config"), "config")
                if reason:
                    self._quarantine(git, path, "config", reason.replace("git config", "global git config"))
        finally:
            os.close(git)

    def _check_includes(
        self, fd: int, path: str, name: str, depth: int, home: str | None = None, worktree: str | None = None
    ) -> None:
        """The files the config `name` (in directory `fd`, at `path`) includes (`include.path`,
        `includeIf.*.path`, whatever their condition), when they lie in the root being scanned: git reads
        them as part of that config, so one written during the run with a setting that runs programs is
        quarantined like a config, however old the including config is (the user's own `.git/config`
        with `include.path = ../.gitconfig`, a shared file in the worktree, is the usual case). Includes
        of includes are followed, as git does, to its depth of 10. A target reached only through a
        symlink is followed by reading it (`_open_in_root`). A scan that met an include into the root takes
        no snapshot: the quick check does not watch the included files. `worktree`: the including config is
        a repository's, whose worktree an included file's hooks directory and programs are relative to."""
        read = self._config_entries(fd, path, name) if depth < 10 else None
        if read is None:
            return
        entries, owner = read
        config = os.path.join(path, name)
        for key, value in entries:
            if value is None or not key.endswith(".path"):
                continue
            if not (key.startswith("include.") or key.startswith("includeif.")):
                continue
            target = self._in_root(path, value, owner, home)
            if target is None and worktree is not None:
                self._check_outside_include(path, value, owner, home, worktree, config, depth)
                continue
            if target is None or target in self._included:
                continue
            what = f"git config {config} includes it"
            self._check_included(target, what, f"git config included by {config}", depth, home, worktree)

    def _check_outside_include(
        self, base: str, value: bytes, owner: int, home: str | None, worktree: str, config: str, depth: int
    ) -> None:
        """A file outside the root being scanned that the repository config `config` (of the worktree
        `worktree`) includes (`value`, relative to `base`): git reads it as part of that config, so the
        hooks directory it sets and the programs it runs, relative to the worktree, and the files it
        includes in turn, are checked when they lie in the root (a team config kept beside the repository,
        `include.path = ../../shared/team.gitconfig`, with `core.hooksPath = .githooks`: the mounts bind
        a hooks directory `.git/config` itself names only). Read safely (`_gitglobal.read`), to git's
        include depth, each file once per scan."""
        text = value.decode("utf-8", errors="surrogateescape")
        if text.startswith("~/") or text == "~":
            try:
                text = os.path.join(home or pwd.getpwuid(owner).pw_dir, text[2:])
            except KeyError:
                return
        target = os.path.normpath(os.path.join(base, text))
        self._abandon()  # the quick check does not watch this file: a change to it is seen by a full scan
        if depth >= 10 or target in self._included or len(self._included) > 4096:
            return
        self._included.add(target)
        if any(target == r.rstrip("/") or target.startswith(r.rstrip("/") + "/") for r in self.roots):
            return  # another root's: checked there
        data = _gitglobal.read(target, self.roots)  # the user's (outside every root): not charged
        if data is None:
            return
        try:
            entries = _gitconfig.parse(data)
        except _gitconfig.ConfigSyntaxError:
            return  # git refuses it, and the including config with it
        try:
            own_home = home or pwd.getpwuid(owner).pw_dir
        except KeyError:
            own_home = ""
        refs, included = _gitglobal.of_config(entries, target, own_home, worktree)
        label = f"the git config {target} (included by {config})"
        for program, key, _via in refs.programs:
            target_in = self._in_root("/", os.fsencode(program), owner)
            if target_in is not None:
                self._check_program(target_in, f"{key} of {label}", f"a program {label} runs ({key})", True)
        for absolute, _rel, _via in refs.hooks:
            hooks_in = self._in_root("/", os.fsencode(absolute), owner) if absolute else None
            if hooks_in is not None:
                self._check_hooks_dir(hooks_in, f"core.hooksPath of {label}")
        for nested in included:
            nested_in = self._in_root("/", os.fsencode(nested), owner)
            if nested_in is None:
                self._check_outside_include(
                    "/", os.fsencode(nested), owner, home, worktree, target, depth + 1
                )
            elif nested_in not in self._included:
                what = f"{label} includes it"
                self._check_included(
                    nested_in, what, f"git config included by {label}", depth + 1, home, worktree
                )

    def _check_included(
        self, target: str, what: str, by: str, depth: int, home: str | None, worktree: str | None = None
    ) -> None:
        """The git config file `target` (in the root being scanned; `what` says who names it), included
        at `depth`: written during the run with a setting that runs programs, it is quarantined (the reason
        calls it a `by`); otherwise its own includes are followed, and, included by a repository's config
        (`worktree` its worktree), the hooks directory it names and the programs it runs are checked as
        that repository's own: a team config kept in the tree (`include.path = ../.gitconfig`) with
        `core.hooksPath = .githooks`, which no mount binds (the mounts read `.git/config` alone), had the
        sandbox's `.githooks/pre-commit` run at the user's next commit."""
        self._included.add(target)
        dpath, leaf = os.path.split(target)
        # O_PATH, not O_NOFOLLOW: RESOLVE_NO_SYMLINKS refuses a final link too, with ELOOP (not ENOTDIR).
        opened = self._open_in_root(dpath, os.O_PATH, target, what)
        if opened is None:
            return
        dfd, dpath = opened
        target = os.path.join(dpath, leaf)  # its real path, when a link was on the way
        self._included.add(target)
        try:
            moved = self._moved_in(dpath)
            if self._changed(dfd, leaf) is not None or moved:
                reason = self._config_problem(dfd, target, leaf)
                if reason:
                    if moved and self._changed(dfd, leaf) is None:
                        reason = reason.replace("written during the run", f"reached through {moved}", 1)
                    self._quarantine(dfd, dpath, leaf, reason.replace("git config", by, 1))
                    return
            st = self._lstat(dfd, leaf)
            if st is not None and stat.S_ISLNK(st.st_mode):
                self._check_included_link(dfd, dpath, leaf, what, by, depth, home, worktree)
                return
            if worktree is not None:
                self._check_hooks_path(dfd, dpath, leaf, False, worktree)
                self._check_programs(dfd, dpath, leaf, worktree)
            self._check_includes(dfd, dpath, leaf, depth + 1, home, worktree)
        finally:
            os.close(dfd)

    def _check_included_link(
        self,
        dfd: int,
        dpath: str,
        leaf: str,
        what: str,
        by: str,
        depth: int,
        home: str | None,
        worktree: str | None = None,
    ) -> None:
        """An included config that is a symlink older than the run (the user's: `include.path =
        ../team.gitconfig`, a link to `tools/gitconfig`): git reads what it leads to, which the sandbox
        may have rewritten while the link stayed as it was (the user's `git status` ran the core.fsmonitor
        it appended). Its target in the root being scanned is checked as the included file; one reached
        through another symlink below a root, or in another root and written during the run, has the link
        moved aside; one outside the roots is the user's."""
        try:
            link = os.readlink(leaf, dir_fd=dfd)
        except OSError:
            return
        resolved = self._resolve_text(os.path.join(dpath, link))
        root = self._root.rstrip("/")
        if resolved is not None and resolved.startswith(root + "/") and depth < 10:
            if resolved not in self._included:
                self._check_included(resolved, what, by, depth + 1, home, worktree)
            return
        why = self._link_target_problem(os.path.join(dpath, link))
        if why:
            self._quarantine(dfd, dpath, leaf, f"{by} is a symlink {why}")

    def _check_hooks_path(
        self, fd: int, path: str, name: str, mounted: bool, worktree: str | None = None
    ) -> None:
        """The hooks directory the config `name` of the git dir at `path` names (`core.hooksPath`, the
        last one), when it lies in the root being scanned: git runs hooks from there instead of
        `hooks/`, so every entry written during the run (but `*.sample`) is quarantined as a hook would
        be. A configured directory that was missing when the run started was not bound read-only by the
        mounts, and the sandbox could fill it (`core.hooksPath = .githooks` before the directory exists);
        one that existed in the top repository's worktree was bound, and is trusted like `.git/hooks`.
        Relative paths are taken from the worktree (the directory holding `.git`), else the git dir.
        `worktree`: the config is a file a repository's config includes, and that repository's worktree
        (every value it sets is checked: which one is the last depends on the including file)."""
        read = self._config_entries(fd, path, name)
        entries, owner = read if read is not None else ([], os.geteuid())
        values = [v for k, v in entries if k == "core.hookspath" and v is not None]
        base = worktree or (os.path.dirname(path) if os.path.basename(path) == ".git" else path)
        if worktree is not None:
            for value in values:
                target = self._in_root(base, value, owner)
                if target is not None:
                    self._check_hooks_dir(target, f"core.hooksPath of {os.path.join(path, name)} names it")
            return
        if not values:
            if name == "config":  # the users' global `core.hooksPath = .githooks`: from each worktree
                for rel, via in self._global_hooks_rel:
                    target = self._in_root(base, os.fsencode(rel), owner)
                    if target is not None:
                        self._check_hooks_dir(
                            target, f"core.hooksPath of the global git config {via}", via=via
                        )
            return
        target = self._in_root(base, values[-1], owner)
        if target is None:
            return
        top_repo = mounted and path == os.path.join(self._root, ".git")  # the mounts protect only its
        self._check_hooks_dir(target, f"core.hooksPath of {os.path.join(path, name)} names it", top_repo)

    def _check_programs(self, fd: int, path: str, name: str, worktree: str | None = None) -> None:
        """The programs the config `name` of the git dir at `path` runs (`core.fsmonitor`, `core.editor`,
        a filter's `clean`, a diff driver's `textconv`, `alias.x = !...`...), when a word of the command
        names a file in the root being scanned by a path (relative ones from the worktree's top, where git
        runs them; `~/` the config owner's home): a file there written during the run is moved aside. The
        user's own `.git/config` (bound read-only, never rewritten) with `core.fsmonitor = tools/fsmon` (a
        script kept in the tree), or a filter's `clean = python3 tools/strip` (the same as an argument),
        ran what the sandbox wrote into `tools/` at the user's next `git status` or `git add`. A word
        without a slash is a program from PATH (not looked at). `worktree`: the config is a file a
        repository's config includes, and that repository's worktree."""
        read = self._config_entries(fd, path, name)
        if read is None:
            return
        entries, owner = read
        base = worktree or (os.path.dirname(path) if os.path.basename(path) == ".git" else path)
        config = os.path.join(path, name)
        home = None
        with contextlib.suppress(KeyError):
            home = pwd.getpwuid(owner).pw_dir  # once per config, not per setting
        for key, value in entries:
            if value is None or not _gitglobal.runs_program(key, value):
                continue
            for word in _gitglobal.program_paths(value, home or "", base):
                target = self._in_root("/", os.fsencode(word), owner)
                if target is not None:
                    what = f"{key} of {config}"
                    self._check_program(target, what, f"a program {what} runs", skip_moved_aside=True)

    def _check_program(self, target: str, what: str, reason: str, skip_moved_aside: bool = False) -> None:
        """Move aside the program file `target` (in the root being scanned; `what` names who runs it) when
        it holds what the sandbox wrote (`_written`), saying `reason` and why. `skip_moved_aside`: not a file
        an earlier scan already moved aside."""
        dpath, leaf = os.path.split(target)
        opened = self._open_in_root(dpath, os.O_PATH, target, what)
        if opened is None:
            return
        dfd, dpath = opened
        try:
            why = "" if skip_moved_aside and _moved_aside(leaf) else self._written(dfd, dpath, leaf)
            if why:
                self._quarantine(dfd, dpath, leaf, f"{reason}, {why}")
        finally:
            os.close(dfd)

    def _check_hooks_dir(self, target: str, what: str, bound: bool = False, via: str = "") -> None:
        """Quarantine every entry (but `*.sample`) written during the run in the hooks directory `target`
        (in the root being scanned; `what` names who configures it). `bound`: the mounts bound it
        read-only for the run when it existed before (the top repository's own), so it is then trusted.
        `via`: the users' global git config that names it (warned about once, `_warn_global`)."""
        opened = self._open_in_root(target, os.O_RDONLY, target, what)
        if opened is None:
            return
        if opened[1] != target:
            bound = False  # reached through a link: the mounts bind no such directory (they refuse it)
        hfd, target = opened
        if via:
            self._warn_global(target, via, "a git hooks directory")
        try:
            # A directory made or renamed there during the run (or one on its way): what it holds is what
            # the run put there, however old (a first run fills `stash/`, a second renames it into place).
            moved = self._moved_in(target)
            if bound and not moved and self._born_dir_before(hfd):
                # the top repository's configured hooks, bound read-only during the run: only where a link
                # among them leads, and what was written through another hard link to one
                listed = sorted(os.listdir(hfd))
                self._check_hardlinked_hooks(hfd, target, f"git hook ({what})", listed)
                self._check_hook_links(hfd, target, f"git hook ({what})", names=listed)
                return
            listed = sorted(os.listdir(hfd))
            for entry in listed:
                if entry.endswith((".sample", QUARANTINE_SUFFIX)):
                    continue
                if self._changed(hfd, entry) is not None:
                    self._quarantine(hfd, target, entry, f"git hook ({what}) written during the run")
                elif moved:
                    self._quarantine(hfd, target, entry, f"git hook ({what}) reached through {moved}")
            self._check_hook_links(hfd, target, f"git hook ({what})", names=listed)
        finally:
            os.close(hfd)

    def _config_entries(
        self, fd: int, path: str, name: str
    ) -> tuple[list[tuple[str, bytes | None]], int] | None:
        """The settings in the config `name` (in directory `fd`, at `path`) as git reads them, and the
        file's owner, when its text holds any of the needles any check looks for (`_NEEDLES`, lower case:
        a section or key name, which git writes in one piece, so a config without any sets nothing a check
        looks at and is not parsed; the caller picks its keys). None when it cannot be read safely (gone, a
        FIFO, a link...) or git would refuse it. Parsed once per scan (`_parsed_config`). Past the scan's
        parse budget, a config is moved aside unchecked (it may name a program, an included file or a
        hooks directory the run rewrote: a sandbox that spent the budget on configs of its own had the
        user's `core.fsmonitor = bin/fsmon.sh` go unchecked), except the top repository's own `.git`
        configs, the user's, bound read-only during the run, which are parsed whatever the budget (two
        files of at most 1 MiB each)."""
        try:
            data = _hostfs.read_file(fd, name, os.path.join(path, name))
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (OSError, _hostfs.Unsafe):
            return None
        if data is None:
            return None
        key = (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size)
        entries = self._configs.get(key)
        if entries is None:
            low = data.lower()  # once, not once per needle (up to 1 MiB, ~20 needles)
            if not any(n in low for n in _NEEDLES):
                return None
            top = path == os.path.join(self._root.rstrip("/"), ".git")
            entries = self._parsed_config(key, data, charge=not top)
            if entries is None:
                self._quarantine(
                    fd,
                    path,
                    name,
                    f"git config not checked (over the scan's {PARSE_BUDGET >> 20} MiB of git configs "
                    "parsed): it may name a program, an included file or a hooks directory this run "
                    "rewrote; review it",
                )
                return None
        if isinstance(entries, str):
            return None
        return entries, st.st_uid

    def _parsed_config(
        self, key: tuple[int, int, int, int], data: bytes, charge: bool = True
    ) -> list[tuple[str, bytes | None]] | str | None:
        """The config `data` (the file identified by `key`) parsed, once per scan: its settings, or the
        syntax error's text when git would refuse it; None when the parse budget is spent (not parsed;
        `charge` False: parsed whatever the budget)."""
        entries = self._configs.get(key)
        if entries is not None:
            return entries
        if charge and not self._parse_budget(data):
            return None
        try:
            entries = _gitconfig.parse(data)
        except _gitconfig.ConfigSyntaxError as err:
            entries = f"unparsed: {err}"
        self._configs[key] = entries
        return entries

    def _parse_budget(self, data: bytes) -> bool:
        """Charge parsing `data` to this scan's budget (PARSE_BUDGET bytes); False when it is spent. git's
        syntax is parsed in Python at about 0.6 s per MiB, so a sandbox that writes many large configs
        must not hold the scan (and the GIL the event loop shares) for minutes."""
        self._parsed += len(data)
        return self._parsed <= PARSE_BUDGET

    def _in_root(self, base: str, value: bytes, owner: int, home: str | None = None) -> str | None:
        """The path a config setting `value` names (relative to `base`; `~/` the home of the config's
        `owner`, who is the one running git on it, or `home` when given: a global config's), when it lies
        in the root being scanned, else None. Meeting one makes this scan take no snapshot: the quick
        check does not watch such paths."""
        text = value.decode("utf-8", errors="surrogateescape")
        if text.startswith("~/") or text == "~":
            try:
                text = os.path.join(home or pwd.getpwuid(owner).pw_dir, text[2:])
            except KeyError:
                return None
        target = os.path.normpath(os.path.join(base, text))
        if not target.startswith(self._root.rstrip("/") + "/"):
            return None
        self._abandon()
        return target

    def _open_in_root(self, target: str, flags: int, named: str, what: str) -> tuple[int, str] | None:
        """The directory `target` (in the root being scanned) opened beneath the root's fd with no symlink
        followed, and its path; None when it cannot be. A symlink in the way is followed as git follows
        it, by reading it (`_through_links`): the directory it leads to in the root is opened instead
        (its real path returned), a link made during the run is moved aside, and `named` is reported
        (`what` says who names it) when the way leads into another writable root."""
        rel = target[len(self._root.rstrip("/")) + 1 :]
        try:
            if not rel:
                return os.dup(self._rootfd), target
            return _hostfs.open_beneath(self._rootfd, rel, flags | os.O_DIRECTORY), target
        except OSError as err:
            if err.errno != errno.ELOOP:
                return None
        real = self._through_links(target, named, what)
        if real is None or real == target:
            return None
        self._abandon()  # the quick check does not watch what a link leads to
        return self._open_in_root(real, flags, named, what)

    def _through_links(self, target: str, named: str, what: str) -> str | None:
        """The real path of `target`, which passes through a symlink below a writable root, resolved as
        the kernel resolves it for git (each link read, never followed by an open; `..` after a link from
        its target), when it lies in the root being scanned; None when it does not or cannot be told
        (missing, a loop, outside every root: the user's). A link below a writable root made during the
        run is moved aside (None): git would follow it to where the sandbox chose (`bin -> x`, with
        `x/fsmon.sh` its own, where the user's `core.fsmonitor = bin/fsmon.sh`), and so is an older one
        in a directory made or renamed where it is during the run (`_moved_in`: a first run left
        `stash/bin -> ../x`, a second ran `mv lib lib.old && mv stash lib`, where the user's config
        names `lib/bin/fsmon.sh`); another older one (the user's `bin -> vendor/bin`) is followed, and
        what it leads to is checked like any target. (These used to be reported only, "review it", while
        the user's git ran what they led to.) Each component is looked at beneath "/" with no link
        followed (`lstat_nofollow`), not by path: another sandbox of the root still running may have
        turned a directory already looked at into a link to a mount that hangs."""
        done: list[str] = []
        todo = [p for p in target.split("/") if p][::-1]
        hops = 0
        while todo:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            path = "/" + "/".join([*done, part])
            st = lstat_nofollow(path)
            if st is None:
                return None
            if stat.S_ISLNK(st.st_mode):
                below = [r for r in self.roots if path.startswith(r.rstrip("/") + "/")]
                parent = "/" + "/".join(done)
                why = ""
                if below and st.st_ctime_ns >= self.since:
                    why = "made during the run"
                elif below and (moved := self._moved_in(parent)):
                    why = f"in {moved}"
                if why:
                    pfd = open_dir_nofollow(parent)
                    if pfd is None:
                        return None
                    try:
                        reason = f"a symlink {why}, on the way to {named} ({what})"
                        self._quarantine(pfd, parent, part, reason)
                    finally:
                        os.close(pfd)
                    return None
                hops += 1
                try:
                    link = os.readlink(path)
                except OSError:
                    return None
                if hops > 40 or not link:
                    return None
                if link.startswith("/"):
                    done = []
                todo.extend(p for p in link.split("/")[::-1] if p)
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                return None
            done.append(part)
        real = "/" + "/".join(done)
        root = self._root.rstrip("/")
        if real.startswith(root + "/") or real == root:
            return real
        if any(real == r.rstrip("/") or real.startswith(r.rstrip("/") + "/") for r in self.roots):
            self.found.append(
                (named, f"{what} through a symlink into another writable root (not followed); review it")
            )
        return None

    def _born_dir_before(self, dirfd: int) -> bool:
        """Whether the directory `dirfd` existed before the run (statx birth time of "." in it)."""
        born = birth_ns(dirfd, ".")
        return born is not None and born < self.since

    def _changed(self, fd: int, name: str) -> os.stat_result | None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        return st if st.st_ctime_ns >= self.since else None

    def _moved_in(self, dpath: str) -> str:
        """Which directory on the way from the root being scanned to the directory `dpath` (itself
        included) was made or renamed where it is during the run ("" when none, or when that cannot be
        told: outside the root, missing, a symlink on the way, which the callers deal with). A file's
        ctime moves when it is renamed, but not when a directory above it is: a first run fills `x/`, a
        second runs `mv bin bin.old && mv x bin`, and `bin/fsmon.sh`, which the user's config
        runs, kept the first run's ctime. Such a directory has a ctime of the run, and so has the one
        holding it (its entries changed); both are checked, component by component with no link
        followed. (A directory that merely gained or lost an entry in the run, inside one that did too,
        counts as well: the ctimes cannot tell it from a rename, and what it leads to is moved aside.)"""
        root = self._root.rstrip("/")
        if not dpath.startswith(root + "/"):
            return ""
        cur = os.dup(self._rootfd)
        try:
            parent_new = os.fstat(cur).st_ctime_ns >= self.since
            done = root
            for part in dpath[len(root) + 1 :].split("/"):
                if part in ("", "."):
                    continue
                try:
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                except OSError:
                    return ""
                if not stat.S_ISDIR(st.st_mode):
                    return ""
                done = os.path.join(done, part)
                new = st.st_ctime_ns >= self.since
                if new and parent_new:
                    self._abandon()
                    return f"{done}, made or renamed there during the run"
                try:
                    nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                except OSError:
                    return ""
                os.close(cur)
                cur, parent_new = nxt, new
            return ""
        finally:
            os.close(cur)

    def _quarantine(self, fd: int, path: str, name: str, reason: str) -> None:
        self.found.extend(move_aside(fd, path, name, reason))

    def _born_before(self, fd: int, name: str) -> bool:
        """Whether `name` existed before the run (statx birth time; False when the file system has none)."""
        born = birth_ns(fd, name)
        return born is not None and born < self.since

    def _fresh(self, fd: int, defining: list[str]) -> bool:
        """Whether the directory `fd` gained every one of git's defining entries it holds (`defining`:
        HEAD, objects, refs, commondir) during the run: each was created, renamed or linked there, or
        rewritten, since the run began (ctime; a sandbox cannot set one). A directory that became a git dir
        during the run is that: its config and hooks, however old, are then what git newly reads, and are
        checked as if written now. (A first run left `config` and `hooks/pre-commit` in a directory with
        none of them, which the scan then did not look at; a second run added HEAD, objects and refs, and
        the config, older than that run, was trusted: the user's `git status` ran its core.fsmonitor.) A
        directory that held any of them before the run was checked as one when its config was written."""
        for name in defining:
            st = self._lstat(fd, name)
            if st is not None and st.st_ctime_ns < self.since:
                return False
        return True

    def _lstat(self, fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None

    def _check_gitdir(
        self,
        fd: int,
        path: str,
        entries: dict[str, int],
        mounted: bool = False,
        fresh: bool = False,
        hook_names: bool = False,
    ) -> None:
        """Quarantine what in the git dir `fd` changed during the run and could run code. `mounted`: the
        mounts bound its protected files read-only (_bound), so one born before the run is the user's.
        `fresh`: it became a git dir during the run (_fresh): nothing in it is trusted for its age.
        `hook_names`: only entries of `hooks/` named as git's hooks are hooks (a directory not yet a git
        dir: what else is there is not run by git, and may be a source tree's)."""
        for name in ("config", "config.worktree", "commondir", "hooks"):
            if name in entries:
                self._hold_name(fd, name)
        for name in ("config", "config.worktree"):
            if (
                mounted
                and not fresh
                and name in self.protected
                and self._born_before(fd, name)
                and not self._hardlinked_written(fd, name)
            ):
                continue  # bound read-only during the run
            if name in entries and (fresh or self._changed(fd, name) is not None):
                reason = self._config_problem(fd, os.path.join(path, name), name, gitdir=path)
                if reason:
                    if fresh and self._changed(fd, name) is None:
                        reason = reason.replace("written during the run", _FRESH, 1)
                    self._quarantine(fd, path, name, reason)
        for name in ("config", "config.worktree"):
            if name in entries:
                worktree = os.path.dirname(path) if os.path.basename(path) == ".git" else path
                self._check_includes(fd, path, name, 0, worktree=worktree)
                self._check_hooks_path(fd, path, name, mounted)
                self._check_programs(fd, path, name)
        if "config" not in entries and self._global_hooks_rel:
            self._check_hooks_path(fd, path, "config", mounted)  # git works without one: the global's apply
        if entries.get("rebase-merge") == stat.S_IFDIR:
            self._check_rebase(fd, path, fresh)
        if "gitdir" in entries and "commondir" in entries and entries["gitdir"] == stat.S_IFREG:
            self._check_pointer(fd, path, "gitdir", path)
        if "commondir" in entries and self._changed(fd, "commondir") is not None:
            try:
                data = _hostfs.read_file(fd, "commondir", os.path.join(path, "commondir"), 4096)
            except (OSError, _hostfs.Unsafe):
                data = None
            if data is None or data.strip() != b"../..":
                self._quarantine(
                    fd, path, "commondir", "commondir written during the run points git elsewhere"
                )
        if "hooks" in entries:
            # Bound read-only during the run: its entries are the user's, but what a link among them
            # leads to in a writable root is not (_check_hook_links).
            bound = (
                mounted
                and not fresh
                and "hooks" in self.protected
                and entries["hooks"] == stat.S_IFDIR
                and self._born_before(fd, "hooks")
            )
            if entries["hooks"] != stat.S_IFDIR:
                if hook_names:
                    return  # checked if the directory becomes a git dir (_fresh)
                if fresh or self._changed(fd, "hooks") is not None:
                    self._quarantine(fd, path, "hooks", "hooks is not a directory (written during the run)")
                elif entries["hooks"] == stat.S_IFLNK:
                    self._check_hooks_link(fd, path)
                return
            try:
                hfd = self._open_dir(fd, "hooks", os.path.join(path, "hooks"))
            except OSError as err:
                self._unopened(os.path.join(path, "hooks"), err)
                return
            try:
                hooks_path = os.path.join(path, "hooks")
                if bound:
                    listed = sorted(os.listdir(hfd))
                    self._check_hardlinked_hooks(hfd, hooks_path, "git hook", listed)
                    self._check_hook_links(hfd, hooks_path, "git hook", names=listed)
                    return
                self._hold(hfd, os.fstat(hfd))
                # A hooks directory made, renamed in or changed during the run: a hook in it is what the
                # run put there however old (a first run fills `stash/hooks`, a second renames it to
                # `sub/.git/hooks`: a directory's rename leaves its entries' ctimes as they were).
                moved = not fresh and self._changed(fd, "hooks") is not None
                listed = sorted(os.listdir(hfd))
                for name in listed:
                    if name.endswith((".sample", QUARANTINE_SUFFIX)):
                        continue
                    if hook_names and name not in _HOOK_NAMES:
                        continue
                    self._hold_name(hfd, name)
                    if self._changed(hfd, name) is not None:
                        self._quarantine(hfd, hooks_path, name, "git hook written during the run")
                    elif fresh:
                        self._quarantine(hfd, hooks_path, name, f"git hook {_FRESH}")
                    elif moved:
                        self._quarantine(hfd, hooks_path, name, f"git hook {_MOVED}")
                self._check_hook_links(hfd, hooks_path, "git hook", hook_names, listed)
            finally:
                self._closing(hfd)
                os.close(hfd)

    def _check_hooks_link(self, fd: int, path: str) -> None:
        """`hooks` in the git dir `fd` (at `path`) is a symlink older than the run (the user's, in a nested
        repository the mounts do not bind: `lib/.git/hooks -> ../../tools/hooks`): git runs the hooks in
        what it leads to, which the sandbox may write. A target in the root being scanned is checked as a
        configured hooks directory is; one through another symlink below a root is moved aside."""
        try:
            link = os.readlink("hooks", dir_fd=fd)
        except OSError:
            return
        target = self._resolve_text(os.path.join(path, link))
        if target is None:
            self._quarantine(
                fd, path, "hooks", "hooks is a symlink through another symlink in a writable root"
            )
            return
        if target.startswith(self._root.rstrip("/") + "/"):
            self._abandon()
            self._check_hooks_dir(target, f"{os.path.join(path, 'hooks')}, a symlink, leads to it")

    def _hardlinked_written(self, fd: int, name: str) -> bool:
        """Whether `name` in `fd`, a file the mounts bound read-only, is a regular file with another hard
        link that was written during the run: the bind covers this name only, and the same inode is
        writable under its other name in a root (the user's `ln tools/pre-commit .git/hooks/`)."""
        st = self._lstat(fd, name)
        return (
            st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_ctime_ns >= self.since
        )

    def _check_hardlinked_hooks(self, hfd: int, hooks_path: str, what: str, names: list[str]) -> None:
        """In a hooks directory the mounts bound read-only (`names`: its listing): move aside each hook
        written during the run through another hard link to it (`_hardlinked_written`)."""
        for name in names:
            if name.endswith((".sample", QUARANTINE_SUFFIX)):
                continue
            if self._hardlinked_written(hfd, name):
                self._quarantine(
                    hfd, hooks_path, name, f"{what} written during the run through another (hard) link to it"
                )

    def _check_hook_links(
        self, hfd: int, hooks_path: str, what: str, hook_names: bool = False, names: list[str] | None = None
    ) -> None:
        """The hooks in the directory `hfd` (at `hooks_path`) that are symlinks: git runs what they lead
        to, and a hook installed as a link into the tree (`ln -s ../../tools/pre-commit .git/hooks/`, a
        common way to share hooks) leads to a file the sandbox may write, while the link itself, in the
        bound `.git/hooks`, stays as the user made it: the sandbox rewrote `tools/pre-commit` and the
        user's next commit ran it. A link whose target, in a writable root, was written during the run
        (or is reached through a symlink there, which is not followed) is moved aside. A tree with such a
        link takes no snapshot (the quick check does not watch the targets)."""
        for name in names if names is not None else sorted(os.listdir(hfd)):  # the caller's listing, if any
            if name.endswith((".sample", QUARANTINE_SUFFIX)) or (hook_names and name not in _HOOK_NAMES):
                continue
            st = self._lstat(hfd, name)
            if (
                st is not None
                and stat.S_ISLNK(st.st_mode)
                and (why := self._link_problem(hfd, hooks_path, name))
            ):
                self._quarantine(hfd, hooks_path, name, f"{what} is {why}")

    def _written(self, dfd: int, dpath: str, leaf: str) -> str:
        """Why the file `leaf` in `dfd` (at `dpath`), which git runs, holds what the sandbox wrote ("" when
        it does not): written during the run, or a symlink (older than the run: the user's `tools/fsmon
        -> fsmon.real`) to a file in a writable root written during the run, or through another symlink
        there. git runs what the link leads to."""
        st = self._lstat(dfd, leaf)
        if st is None:
            return ""
        if st.st_ctime_ns >= self.since:
            return "written during the run"
        moved = self._moved_in(dpath)
        if moved:
            return f"reached through {moved}"
        return self._link_problem(dfd, dpath, leaf) if stat.S_ISLNK(st.st_mode) else ""

    def _link_problem(self, dfd: int, dpath: str, leaf: str) -> str:
        """Why the symlink `leaf` in `dfd` (at `dpath`) leads to what a sandbox wrote (`_link_target_problem`,
        as "a symlink <why>"), "" when it does not or cannot be read."""
        try:
            link = os.readlink(leaf, dir_fd=dfd)
        except OSError:
            return ""
        why = self._link_target_problem(os.path.join(dpath, link))
        return f"a symlink {why}" if why else ""

    def _link_target_problem(self, target: str) -> str:
        """Why a symlink naming `target` (absolute) leads to what a sandbox wrote ("" when it does not): a
        file in a writable root written during the run, or a path through a symlink below a root (not
        followed). Meeting a target in a root makes this scan take no snapshot."""
        resolved = self._resolve_text(target)
        if resolved is None:
            self._abandon()
            return "into a writable root through another symlink there (not followed)"
        for root in self.roots:
            r = root.rstrip("/")
            if resolved == r or resolved.startswith(r + "/"):
                self._abandon()
                try:
                    st = self._lstat_in_roots(resolved)  # _resolve_text checked every component
                except _hostfs.Unsafe:
                    return "into a writable root through another symlink there (not followed)"
                if st is None:
                    return ""  # dangling: git runs nothing
                if stat.S_ISLNK(st.st_mode):
                    return "to another symlink in a writable root (not followed)"
                if st.st_ctime_ns >= self.since:
                    return f"to {resolved}, written during the run"
                moved = self._moved_in(os.path.dirname(resolved)) if resolved.startswith(self._root) else ""
                return f"to {resolved}, reached through {moved}" if moved else ""
        return ""

    def _config_problem(self, fd: int, path: str, name: str, gitdir: str | None = None) -> str:
        """Why the config `name` (in directory `fd`, at `path`) written during the run must be moved aside,
        or "" when it sets only what runs nothing. `gitdir`: the git dir whose own config it is, where a
        `core.worktree` naming that git dir's own submodule checkout is kept (`_worktree_problem`); anywhere
        else (an included file, a global config) `core.worktree` is moved aside."""
        try:
            data = _hostfs.read_file(fd, name, path)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except _hostfs.Unsafe as err:
            return f"git config written during the run is unsafe to read ({err.hint.split(';')[0]})"
        except OSError as err:
            return f"git config written during the run is unreadable ({os.strerror(err.errno or 0)})"
        if data is None:
            return ""
        entries = self._parsed_config((st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size), data)
        if entries is None:
            return f"git config written during the run not checked (over the scan's {PARSE_BUDGET >> 20} MiB)"
        bad = [entries] if isinstance(entries, str) else _unsafe(entries)
        if (
            bad
            and bad == ["core.worktree"] * len(bad)
            and gitdir is not None
            and not isinstance(entries, str)
        ):
            values = [v for k, v in entries if k == "core.worktree"]
            why = self._worktree_problem(gitdir, values[-1])
            if not why:
                return ""
            return f"git config written during the run sets core.worktree {why}"
        if not bad:
            return ""
        return "git config written during the run sets what can run programs: " + ", ".join(
            sorted(set(bad))[:8]
        )

    def _worktree_problem(self, gitdir: str, value: bytes | None) -> str:
        """Why `core.worktree = value` in the git dir at `gitdir` would point the user's git at a directory
        it must not work in, or "" when it names that git dir's own submodule checkout, as `git submodule
        add`/`update`/`absorbgitdirs` write it (`../../../sub` in `.git/modules/sub`): a directory in the
        root being scanned, reached with no symlink, in no git dir, whose `.git` file points back at this
        git dir. Anything else is a redirect: the user's next `git checkout`/`reset`/`stash` in that
        repository writes files where the setting says, as the host user (outside the roots, or into
        another repository's git dir such as its hooks/)."""
        if value is None:
            return "with no value"
        resolved = self._resolve_text(os.path.join(gitdir, value.decode("utf-8", errors="surrogateescape")))
        if resolved is None:
            return "to a directory through a symlink (not followed)"
        target = resolved
        root = self._root.rstrip("/")
        if target != root and not target.startswith(root + "/"):
            return "to a directory outside the writable root (git would check files out there)"
        rel = target[len(root) + 1 :]
        if ".git" in rel.split("/"):
            return "to a directory inside a git dir (git would check files out there)"
        try:
            tfd = os.dup(self._rootfd) if not rel else _hostfs.open_beneath(self._rootfd, rel, _DIR_FLAGS)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EXDEV):
                return "to a directory through a symlink (not followed)"
            return f"to a directory that cannot be opened ({os.strerror(err.errno or 0)})"
        try:
            if self._inside_gitdir(rel):
                return "to a directory inside a git dir (git would check files out there)"
            try:
                data = _hostfs.read_file(tfd, ".git", os.path.join(target, ".git"), 4096)
            except (OSError, _hostfs.Unsafe):
                data = None
            pointer = _gitfile_target(target, data)
            if pointer is None or self._resolve_text(pointer) != os.path.normpath(gitdir):
                return "to a directory whose .git does not point back at this git dir (not its checkout)"
            return ""
        finally:
            os.close(tfd)

    def _resolve_text(self, path: str) -> str | None:
        """`path` with its `.` and `..` taken component by component as the kernel takes them, or None when
        a component below a writable root is a symlink (never followed: a sandbox may have planted it, and
        `a/../x` through a link `a` leads where the link does). lstat only, no link followed; a component
        that does not exist ends the checks (nothing below it exists either)."""
        cur = "/"
        checking = True
        for part in path.split("/"):
            if part in ("", "."):
                continue
            cur = os.path.dirname(cur) if part == ".." else os.path.join(cur, part)
            if not checking or part == "..":
                continue
            if not any(cur.startswith(r.rstrip("/") + "/") for r in self.roots):
                continue  # the host's own directories on the way to a root
            try:
                st = self._lstat_in_roots(cur)  # no link followed below the root, even one swapped in
            except _hostfs.Unsafe:
                return None  # a directory on the way turned into a link since its check
            if st is None:
                checking = False
                continue
            if stat.S_ISLNK(st.st_mode):
                return None
        return cur

    def _lstat_in_roots(self, path: str) -> os.stat_result | None:
        """lstat of `path`, below a writable root, beneath that root's fd: no symlink below the root is
        followed, even one another sandbox of the root still running swapped in for a directory already
        looked at (it could lead to a mount that hangs this scan's worker). None when missing (or when it
        cannot be told). Raises _hostfs.Unsafe for a symlink on the way."""
        root = next((r.rstrip("/") for r in self.roots if path.startswith(r.rstrip("/") + "/")), None)
        if root is None:
            return lstat_nofollow(path)
        try:
            fd = os.dup(self._rootfd) if root == self._root.rstrip("/") else _hostfs.open_root(root)
        except OSError:
            return None
        try:
            return _hostfs.lstat_beneath(fd, path[len(root) + 1 :])
        except OSError:
            return None
        finally:
            os.close(fd)

    def _inside_gitdir(self, rel: str) -> bool:
        """Whether the directory `rel` (below the root being scanned) or one of its parents is a git dir
        (git's own test: HEAD, and objects + refs or commondir), looked up with no symlink followed."""
        parts = rel.split("/") if rel else []
        for i in range(len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                names = {
                    n
                    for n in ("HEAD", "objects", "refs", "commondir")
                    if _hostfs.lstat_beneath(self._rootfd, f"{sub}/{n}" if sub else n) is not None
                }
            except (OSError, _hostfs.Unsafe):
                return True  # cannot tell: treated as one
            if "HEAD" in names and ("commondir" in names or {"objects", "refs"} <= names):
                return True
        return False

    def _check_rebase(self, fd: int, path: str, fresh: bool = False) -> None:
        """An interactive rebase in progress in the git dir `fd` (at `path`): its todo list
        (`rebase-merge/git-rebase-todo`) or merge strategy written during the run. The user's
        `git rebase --continue` runs every `exec`/`x` line of the todo as a shell command, and the strategy
        names a program (`git-merge-<name>`). A todo with such a line, a strategy other than git's own, or
        either unreadable, moves the whole `rebase-merge` aside (git then sees no rebase in progress; the
        user reviews it). A tree with a rebase in progress gets no snapshot (the todo is rewritten in
        place, which the quick check would not see)."""
        self._abandon()
        # `rebase-merge` itself made, renamed in or changed during the run (or in a directory that became
        # a git dir then): its files are what the run put there however old (a first run moved a stopped
        # rebase's directory aside, a second renamed it back: its todo kept the first run's ctime).
        whole = fresh or self._changed(fd, "rebase-merge") is not None
        try:
            rfd = self._open_dir(fd, "rebase-merge", os.path.join(path, "rebase-merge"))
        except OSError:
            return
        reason = ""
        try:
            if whole or self._changed(rfd, "git-rebase-todo") is not None:
                try:
                    todo = _hostfs.read_file(
                        rfd, "git-rebase-todo", os.path.join(path, "rebase-merge"), 4 << 20
                    )
                except (OSError, _hostfs.Unsafe):
                    todo = b"exec"
                for line in (todo or b"").splitlines():
                    word = line.strip().split(None, 1)[0].lower() if line.strip() else b""
                    if word in (b"exec", b"x"):
                        reason = (
                            "a rebase todo written (or moved in) during the run has exec lines "
                            "(run by rebase --continue)"
                        )
                        break
            if not reason and (whole or self._changed(rfd, "strategy") is not None):
                try:
                    strategy = _hostfs.read_file(rfd, "strategy", os.path.join(path, "rebase-merge"), 4096)
                except (OSError, _hostfs.Unsafe):
                    strategy = b"?"
                if strategy is not None and strategy.strip() not in _MERGE_STRATEGIES:
                    reason = "a rebase merge strategy written during the run names a program"
        finally:
            os.close(rfd)
        if reason:
            self._quarantine(fd, path, "rebase-merge", reason)

    def _check_pointer(self, fd: int, path: str, name: str, base: str) -> None:
        """A `.git` file (`gitdir: <dir>`, a checkout's pointer to its git dir) or a linked worktree's
        `gitdir` (the path of its checkout's `.git` file), `name` in directory `fd` at `path`, written
        during the run: quarantined when it names a place outside every writable root, or reached through
        a symlink, relative paths taken from `base`. The user's git follows it and works there as the host
        user: a `.git` file in a checkout registered in the top repository's index made the user's plain
        `git status` refresh (write) another repository's index outside the roots, and its
        `git submodule update` move that repository's HEAD; `git worktree repair` writes the `.git` file a
        `gitdir` names. A pointer into a writable root is harmless: that git dir is scanned.

        An older `.git` naming its git dir by a RELATIVE path, in a directory renamed there during the run
        (`_moved_in`), is checked too: its meaning moved with it. (A first run left `d1/d2/a/.git` with
        `gitdir: ../../<elsewhere>`, inside the root from there; a second ran `mv d1/d2/a a`, and the
        user's commit in `a` went into the repository outside the roots that the same text now named.) It
        is kept when that git dir's `core.worktree` names this checkout, as git's submodules write it (a
        workdir inside a superproject whose submodules' git dirs lie above it)."""
        self._hold_name(fd, name)
        st = self._lstat(fd, name)
        if st is None:
            return
        moved = ""
        if st.st_ctime_ns < self.since:
            if name != ".git" or path == self._root.rstrip("/"):
                return
            moved = self._moved_in(path)
            if not moved:
                return
        written = f"in {moved}," if moved else "written during the run"
        where = os.path.join(path, name)
        if name == ".git" and stat.S_ISLNK(st.st_mode):
            # git follows a `.git` symlink to the git dir it names; read the link, never follow it.
            try:
                link = os.readlink(name, dir_fd=fd)
            except OSError:
                return
            if moved and link.startswith("/"):
                return  # its meaning did not move
            target = os.path.join(base, link)
            reason = self._outside_roots(target)
            if reason and not (moved and self._points_back(target, path)):
                made = f"in {moved}," if moved else "made during the run"
                self._quarantine(fd, path, name, f".git symlink {made} points git {reason}")
            return
        try:
            data = _hostfs.read_file(fd, name, where, 4096)
        except (OSError, _hostfs.Unsafe):
            return  # a FIFO or huge file: git cannot use it as a pointer either
        if data is None:
            return
        if name == ".git":
            pointer = _gitfile_target(base, data)
            if pointer is None:
                return  # not a gitfile: git refuses it
            if moved and _gitfile_target("/", data) == _gitfile_target("/x", data):
                return  # an absolute path: its meaning did not move
            reason = self._outside_roots(pointer)
            if reason and not (moved and self._points_back(pointer, path)):
                self._quarantine(fd, path, name, f"{name} {written} points git {reason}")
            return
        line = data.rstrip(_GIT_SPACE).split(b"\0", 1)[0]  # the whole file, trimmed at the end
        if not line:
            return
        target = os.path.join(base, line.decode("utf-8", errors="surrogateescape"))
        reason = self._outside_roots(target)
        if reason:
            self._quarantine(fd, path, name, f"{name} written during the run points git {reason}")

    def _points_back(self, gitdir: str, checkout: str) -> bool:
        """Whether the git dir `gitdir` (outside the roots) sets `core.worktree` to `checkout`, as git's
        submodule machinery writes it: the checkout is that git dir's own, wherever both were moved from.
        Its config is read safely (`_gitglobal.read`: no link below a root followed, bounded)."""
        real = self._resolve_text(gitdir)
        if real is None:
            return False
        data = _gitglobal.read(os.path.join(real, "config"), self.roots)
        if data is None:
            return False
        try:
            values = [v for k, v in _gitconfig.parse(data) if k == "core.worktree"]
        except _gitconfig.ConfigSyntaxError:
            return False
        if not values or values[-1] is None:
            return False
        named = os.path.normpath(os.path.join(real, values[-1].decode("utf-8", errors="surrogateescape")))
        return named == os.path.normpath(checkout)

    def _outside_roots(self, path: str) -> str:
        """Why the path `path` (absolute, as git will resolve it: `..` after a symlink goes up from the
        link's target) is a place a pointer must not name ("" when it is fine): reached through a symlink
        below a writable root, or outside every writable root of the scan."""
        target = self._resolve_text(path)
        if target is None:
            return "through a symlink (not followed)"
        for root in self.roots:
            r = root.rstrip("/")
            if target == r or target.startswith(r + "/"):
                return ""  # in a root (scanned there), or missing there (git fails, naming nothing outside)
        return "outside the writable roots (the user's git would work on another repository there)"


#: (target, global config) pairs already warned about in this process (_warn_global).
_warned: set[tuple[str, str]] = set()

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


#: The environment variables that choose which global git config files are read (_gitglobal).
_GLOBAL_ENV = ("HOME", "XDG_CONFIG_HOME")  # and every GIT_CONFIG* (_read_globals)

#: git's defining entries of a git dir (is_git_directory: HEAD, and objects + refs or commondir).
_DEFINING = ("HEAD", "objects", "refs", "commondir")


def lstat_nofollow(path: str) -> os.stat_result | None:
    """lstat of the absolute `path` with no symlink on the way followed, even one swapped in since its
    components were looked at (another sandbox of the same root still running may turn a directory into a
    link to a mount that hangs, while this scan holds its worker): None when it or a directory on the way
    is missing or a symlink."""
    slash = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _hostfs.lstat_beneath(slash, path.strip("/")) if path.strip("/") else os.fstat(slash)
    except (OSError, _hostfs.Unsafe):
        return None
    finally:
        os.close(slash)


def open_dir_nofollow(path: str) -> int | None:
    """An O_PATH fd of the directory at the absolute `path`, no symlink on the way followed (None when
    that cannot be)."""
    slash = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not path.strip("/"):
            return os.dup(slash)
        return _hostfs.open_beneath(slash, path.strip("/"), os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    finally:
        os.close(slash)


#: What a git dir holds that runs code (checked in a directory with any of _DEFINING).
_CHECKED = ("config", "config.worktree", "hooks")
#: What a config that sets a program holds (lower case: a key name git writes in one piece), so that a
#: config without any is not parsed for _check_programs.
_PROGRAM_NEEDLES = (
    b"fsmonitor",
    b"editor",
    b"pager",
    b"sshcommand",
    b"askpass",
    b"gitproxy",
    b"helper",
    b"program",
    b"external",
    b"hook",
    b"filter",
    b"command",
    b"textconv",
    b"clean",
    b"smudge",
    b"process",
    b"driver",
    b"cmd",
    b"path",
    b"alias",
    b"uploadpack",
    b"receivepack",
    b"update",
    b"smtpserver",
    b"trailer",
    b"tunnel",
    b"httpd",
)
#: What any check of a config's settings looks for (`_config_entries`: a config without any is not parsed).
_NEEDLES = (b"include", b"hookspath", *_PROGRAM_NEEDLES)
#: The hooks git runs (githooks(5)), by their exact names.
_HOOK_NAMES = frozenset(
    {
        "applypatch-msg",
        "pre-applypatch",
        "post-applypatch",
        "pre-commit",
        "pre-merge-commit",
        "prepare-commit-msg",
        "commit-msg",
        "post-commit",
        "pre-rebase",
        "post-checkout",
        "post-merge",
        "pre-push",
        "pre-receive",
        "update",
        "proc-receive",
        "post-receive",
        "post-update",
        "reference-transaction",
        "push-to-checkout",
        "pre-auto-gc",
        "post-rewrite",
        "sendemail-validate",
        "fsmonitor-watchman",
        "p4-changelist",
        "p4-prepare-changelist",
        "p4-post-changelist",
        "p4-pre-submit",
        "post-index-change",
    }
)
#: The reason's words for what a directory that became a git dir during the run held from before.
_FRESH = "in a directory that became a git dir during the run"

#: The reason's words for a hook in a hooks directory made, renamed in or changed during the run.
_MOVED = "in a hooks directory made, renamed there or changed during the run"

#: git's own merge strategies (a rebase's `strategy` file may name only these).
_MERGE_STRATEGIES = frozenset({b"ort", b"recursive", b"resolve", b"octopus", b"ours", b"subtree"})

#: git's isspace (sane_ctype): not \v or \f.
_GIT_SPACE = b" \t\n\r"


def _gitfile_target(base: str, data: bytes | None) -> str | None:
    """The git dir a `.git` file's `data` names (`gitdir: <path>`, relative to `base`, the directory
    holding it), normalised as text; None when it is no gitfile git would read."""
    if data is None or not data.rstrip(_GIT_SPACE).startswith(b"gitdir: "):
        return None
    # git trims the end, keeps inner newlines, and reads a C string (up to a NUL)
    value = data.rstrip(_GIT_SPACE)[len(b"gitdir: ") :].split(b"\0", 1)[0]
    if not value:
        return None
    return os.path.join(base, value.decode("utf-8", errors="surrogateescape"))


def _fits(caches: list[RootCache]) -> int | None:
    """The number of leaves, when the cached listings of a scan's roots fit a snapshot: at most
    SNAPSHOT_DIRS directories that hold something that matters (the root's included) and LEAF_WATCHES
    leaves; else None. Stops counting at the first bound passed (a large tree is told in a few dozen
    steps)."""
    held = leaves = 0
    for cache in caches:
        for rel, (_dev, _ino, _ctime, entries) in cache.items():
            if entries or not rel:
                held += 1
                if held > SNAPSHOT_DIRS:
                    return None
            else:
                leaves += 1
                if leaves > LEAF_WATCHES:
                    return None
    return leaves


class _Budget(Exception):
    pass


def _leaf(entries: dict[str, int]) -> bool:
    """Whether a directory with these listed entries is a leaf for a snapshot (watched, not held): nothing
    but symlinks, which an inotify watch sees change as any entry."""
    return all(mode == stat.S_IFLNK for mode in entries.values())


def move_aside(fd: int, path: str, name: str, reason: str) -> list[tuple[str, str]]:
    """Rename `name` (in directory `fd`, named `path`) out of the way: to `<name>.corral-quarantined`, or,
    when the sandbox put something there that a rename cannot replace (a directory), `....1` up to `....9`,
    then `....r<8 random hex digits>` (a sandbox that took all ten names with non-empty directories kept a
    directory it made at a protected name where it was), or `.corral-quarantined.rHEX` for a name too long
    to take a suffix; as a last resort a file or link is removed.
    Returns the report, a (path, reason) pair (none when `name` is gone since it was listed: a scan of the
    same root beside this one moved it)."""
    err = 0
    short = False  # a name too long for the suffixes: `.corral-quarantined.rHEX` alone
    for i in range(13):
        if short:
            target = f"{QUARANTINE_SUFFIX}.r{secrets.token_hex(4)}"
        else:
            target = (
                name
                + QUARANTINE_SUFFIX
                + (f".{i}" if 0 < i < 10 else f".r{secrets.token_hex(4)}" if i else "")
            )
        try:
            os.rename(name, target, src_dir_fd=fd, dst_dir_fd=fd)  # renameat: follows no link
        except OSError as e:
            err = e.errno or 0
            if err == errno.ENAMETOOLONG and not short:
                short = True
                continue
            if err in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EBUSY):
                continue
            if err == errno.ENOENT and target == name + QUARANTINE_SUFFIX:
                return []
            break
        return [(os.path.join(path, name), f"{reason}; moved to {target}")]
    try:
        os.unlink(name, dir_fd=fd)
    except OSError:
        return [
            (os.path.join(path, name), f"{reason}; could NOT be moved aside ({os.strerror(err)}): remove it")
        ]
    return [(os.path.join(path, name), f"{reason}; removed (could not be moved aside)")]


def _moved_aside(name: str) -> bool:
    """Whether `name` is one `move_aside` gives (`<name>.corral-quarantined`, `....N`, `....rHEX`): git
    never opens it, and the rename moved its ctime, so a run started within MARGIN_NS of it took it for new
    and moved it again, and again, until the name was too long and the file was removed."""
    base, dot, last = name.rpartition(".")
    if dot and ((last.isdigit() and len(last) == 1) or _RANDOM_SUFFIX.fullmatch(last)):
        name = base
    return name.endswith(QUARANTINE_SUFFIX)


#: The random last part of a name `move_aside` gives when the ten fixed ones are taken.
_RANDOM_SUFFIX = re.compile(r"r[0-9a-f]{8}")


class _StatxTimestamp(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("pad", ctypes.c_int32))


class _Statx(ctypes.Structure):
    _fields_ = (
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("pad1", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("spare", ctypes.c_uint64 * 16),
    )


_STATX_BTIME = 0x800
_AT_SYMLINK_NOFOLLOW = 0x100
_libc = ctypes.CDLL(None, use_errno=True)
_statx = getattr(_libc, "statx", None)


def birth_ns(dirfd: int, name: str) -> int | None:
    """The birth time of `name` under `dirfd` (not following a symlink), or None when unknown."""
    if _statx is None:
        return None
    buf = _Statx()
    if _statx(dirfd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, ctypes.byref(buf)) != 0:
        return None
    if not buf.stx_mask & _STATX_BTIME:
        return None
    return int(buf.stx_btime.tv_sec) * 1_000_000_000 + int(buf.stx_btime.tv_nsec)


def wanted(policy: Policy) -> bool:
    """Whether runs of `policy` get the post-run scan: it confines the filesystem, has writable roots, and
    protects git (a `.git/...` entry among its protected paths, as the profiles do by default)."""
    fs = policy.filesystem
    return fs.confine and bool(fs.write) and any(p.startswith(".git/") for p in fs.protected)


SnapshotKey = tuple[tuple[str, ...], frozenset[str]]
_Seen = tuple[int, int, int]  # st_dev, st_ino, st_ctime_ns


def writable_roots(policy: Policy) -> tuple[str, ...]:
    """`policy`'s writable roots as a scan visits them: normalised, sorted, nested ones dropped."""
    roots: list[str] = []
    for root in sorted({os.path.normpath(p) for p in policy.filesystem.write}):
        if not any(root.startswith(r.rstrip("/") + "/") for r in roots):  # nested roots: scanned once
            roots.append(root)
    return tuple(roots)


def _protected(policy: Policy) -> frozenset[str]:
    return frozenset(p.split("/", 1)[1] for p in policy.filesystem.protected if p.startswith(".git/"))


def snapshot_key(policy: Policy) -> SnapshotKey:
    """What a scan's outcome depends on besides the tree: the roots and the protected git files."""
    return writable_roots(policy), _protected(policy)


def scan(
    policy: Policy, started_ns: int, listings: Listings | None = None, unbound: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Scan `policy`'s writable roots for what changed since `started_ns` (time.time_ns() at the request),
    with the supervisor's `listings` of earlier scans (and its snapshots: one is taken of a small tree
    when none is kept for these roots). `unbound`: the roots that had no `.git` when the sandbox's view was
    built (the fork server's reply). Runs in a worker thread. Never raises."""
    key = snapshot_key(policy)
    return Scan(list(key[0]), started_ns, listings=listings, protected=key[1], key=key, unbound=unbound).run()
