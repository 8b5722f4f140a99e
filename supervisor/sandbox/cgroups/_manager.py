"""corral's cgroups: created, limited, sampled, killed and removed by direct cgroupfs I/O.

Layout on disk, per hierarchy (v2: the one unified tree; v1: one per mounted hierarchy, the same
names in each):

    <base>/                          the supervisor's own cgroup, or a delegated one (`delegate=`)
        <prefix>-<pid>-<start>-l<nonce>/      corral's parent cgroup for one supervisor (one
                                              CgroupManager)
            <child_id>/                       one leaf per child, limits written before the child is
                                              placed in it
        <prefix>-<pid>-<start>-l<nonce>.self/ v2 only: where the supervisor moved itself (no
                                              internal processes rule)

Liveness is proven by a lock, not inferred from the pid in the name: the owner holds flock(LOCK_EX) on
each of these directories (an fd kept open for its life; the kernel drops the lock when the process dies,
however it dies), and a starting supervisor removes such a directory only when it can take that lock
itself. A pid and start time mean nothing to a supervisor in another pid or time namespace (a live
supervisor that is pid 1 of its own namespace looked dead), while a cgroup directory is one kernel object
in every mount, pid, time and cgroup namespace, so its lock is too. `<pid>-<start>` stays in the name for
people; the nonce makes names unique across namespaces. Names of the earlier format (`<prefix>-<pid>
[-<start>][.<n>][.self]`, which held no lock) are still judged by pid and start time.
Everything here is synchronous file I/O: call it off the event loop.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from supervisor.sandbox.cgroups import _fs, _pool
from supervisor.sandbox.cgroups._layout import (
    CONTROLLERS,
    V2_DOMAIN_CONTROLLERS,
    CgroupLayout,
    Hierarchy,
    discover,
)
from supervisor.sandbox.cgroups._leaf import Leaf

if TYPE_CHECKING:
    from types import TracebackType

    from policies import ResourcePolicy
    from supervisor._errors import SandboxSetupError

log = logging.getLogger("corral.cgroups")

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_CHILD_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(slots=True)
class _Tree:
    """One hierarchy as the manager uses it."""

    hierarchy: Hierarchy
    base: str
    serves: set[str]
    parent: str = ""


class CgroupManager:
    """corral's cgroups for one supervisor process. Synchronous; call it off the event loop.

    >>> mgr = CgroupManager()
    >>> mgr.open("corral")                 # parent cgroup(s), stale cleanup
    >>> leaf = mgr.create_leaf("c1", policy.resources)
    >>> # the sandbox init writes 0 into each of leaf.placement_files (or: a pid into leaf.procs_files)
    >>> leaf.stats(); leaf.kill(); leaf.remove()
    >>> mgr.close()

    After open(): `available` says whether any controller is usable, `controllers` maps each usable
    controller to its cgroup version, `unavailable` maps the others to the reason (the caller falls
    back to rlimits and supervisor-enforced limits with a warning when best_effort, or refuses),
    `stale_removed` lists the cgroups of dead supervisors that were removed, and `moved_self_to` is
    set when the supervisor moved itself into a v2 leaf to satisfy the no-internal-processes rule.
    """

    def __init__(
        self,
        layout: CgroupLayout | None = None,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pool: int = _pool.POOL_SIZE,
    ) -> None:
        self._layout = layout
        #: Leaves kept for reuse (`recycle`; cgroups/_pool.py): at most `pool`, and one per 32 fds of the soft
        #: RLIMIT_NOFILE now; 0 keeps none.
        self.pool = _pool.LeafPool(_pool.size_for(pool))
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._trees: list[_Tree] = []
        self._serve: dict[str, _Tree] = {}
        self._leaves: dict[str, Leaf] = {}
        self.interface_files: dict[tuple[str, str], bool] = {}  # (controller, interface file) -> exists
        self._lock = threading.Lock()
        self._locks: list[int] = []  # fds holding the locks of our parent cgroups: see the module's doc
        self._opened = False
        self._closed = False
        self.name = ""
        self.unavailable: dict[str, str] = {}
        self.errors: list[SandboxSetupError] = []
        self.stale_removed: list[str] = []
        self.moved_self_to: str | None = None

    def __enter__(self) -> CgroupManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def layout(self) -> CgroupLayout:
        """The discovered (or given) layout; discovers on first use."""
        if self._layout is None:
            self._layout = discover(self._proc_root, self._cgroup_root)
        return self._layout

    @property
    def available(self) -> bool:
        """Whether open() made at least one controller usable."""
        return bool(self._serve)

    @property
    def controllers(self) -> dict[str, int]:
        """Usable controller -> cgroup version (1 or 2)."""
        return {c: t.hierarchy.version for c, t in self._serve.items()}

    @property
    def reason(self) -> str:
        """One line saying why controllers are unusable ("" when all are usable)."""
        return "; ".join(f"{c}: {why}" for c, why in sorted(self.unavailable.items()))

    @property
    def brief(self) -> str:
        """`reason` said once: controllers that failed the same way share one short clause (the
        syscall, errno and where), without the fix (`FIX` says it). "" when all are usable."""
        by_cause: dict[str, list[str]] = {}
        errors = {c: e for e in self.errors for c in self.unavailable if e.path and f"/{c}/" in e.path + "/"}
        for controller, why in sorted(self.unavailable.items()):
            err = errors.get(controller)
            if err is not None and err.errno:
                where = os.path.dirname(err.path or "") or self._cgroup_root
                for c in (controller, *controller.split(",")):
                    where = where.replace(f"/{c}/", "/*/").replace(f"/{c}", "/*")
                verb = err.operation.split()[0]
                cause = f"{verb} under {where}: {_errno.errorcode.get(err.errno, err.errno)}"
            else:
                cause = why.split("; ")[0]
            by_cause.setdefault(cause, []).append(controller)
        return "; ".join(f"{', '.join(cs)}: {cause}" for cause, cs in by_cause.items())

    @property
    def fix(self) -> str:
        """What to do about the unusable controllers (the first failure's hint), once."""
        return next((e.hint for e in self.errors if e.hint), "see docs/cgroups.md")

    @property
    def parents(self) -> list[str]:
        """corral's parent cgroup directories, one per hierarchy in use."""
        return [t.parent for t in self._trees]

    def open(
        self,
        name_prefix: str = "corral",
        *,
        delegate: str | Mapping[str, str] | None = None,
        move_self: bool = True,
        cleanup_stale: bool = True,
    ) -> None:
        """Create corral's parent cgroup `<name_prefix>-<pid>-<start>` in each hierarchy in use,
        after removing stale ones left by dead supervisors (their processes are killed first).

        delegate: a cgroup path to create under instead of this process's own cgroup, for ordinary
        users, who cannot write elsewhere: one path used in every hierarchy (e.g. "/corral-alice"
        chowned in each v1 hierarchy), or a mapping controller -> path when they differ. On v2 the
        usual delegated cgroup is the own one (`systemd-run --user --scope -p Delegate=yes`), which
        needs no `delegate`.
        move_self: on v2, when the own cgroup holds processes (so that the no-internal-processes rule
        forbids enabling controllers) and this process is the only one there, move it into a `.self`
        leaf first, as nsjail does. Otherwise the EBUSY is reported with its explanation.

        Never raises for an unusable hierarchy: its controllers land in `unavailable` with the
        reason, and the translated SandboxSetupError in `errors`. Raises ValueError for a bad
        prefix, RuntimeError when already opened. Stale cleanup failures are logged, not raised.
        """
        if self._opened:
            msg = "CgroupManager.open() called twice"
            raise RuntimeError(msg)
        if not _PREFIX_RE.fullmatch(name_prefix):
            msg = f"cgroup name prefix must match {_PREFIX_RE.pattern}: {name_prefix!r}"
            raise ValueError(msg)
        self._opened = True
        layout = self.layout
        pid = os.getpid()
        st = _fs.proc_stat(self._proc_root, pid)
        # The nonce: unique across supervisors (two in one process; two that are each pid 1 of their own
        # pid namespace), and the mark of a name whose owner holds its lock.
        self.name = f"{name_prefix}-{pid}-{st[1] if st else 0}-l{secrets.token_hex(4)}"
        self.unavailable = dict(layout.missing)

        trees = self._trees_under(layout, delegate)
        if cleanup_stale:
            self._cleanup_stale(trees, name_prefix)
        for tree in trees:
            if self._make_parent(tree, move_self=move_self and delegate is None) and tree.serves:
                self._trees.append(tree)
                for c in tree.serves:
                    self._serve[c] = tree
                    self.unavailable.pop(c, None)
        if self.unavailable:
            log.info("cgroups: unavailable controllers: %s", self.reason)

    def _trees_under(self, layout: CgroupLayout, delegate: str | Mapping[str, str] | None) -> list[_Tree]:
        """Each hierarchy in use with the cgroup corral's parent goes under (the own one, or `delegate`);
        a hierarchy without one has its controllers put in `unavailable`."""
        trees: list[_Tree] = []
        for h in layout.hierarchies():
            serves = {c for c in CONTROLLERS if layout.controllers.get(c) == h}
            if delegate is None:
                path = h.cgroup
            elif isinstance(delegate, str):
                path = delegate
            else:
                given = [delegate[c] for c in sorted(serves) if c in delegate]
                if not given:
                    for c in serves:
                        self.unavailable[c] = f"no delegated cgroup given for {c}"
                    continue
                path = given[0]
            try:
                base = h.dir_of(path)
            except ValueError as err:
                for c in serves:
                    self.unavailable[c] = str(err)
                continue
            trees.append(_Tree(h, base, serves))
        return trees

    def _make_parent(self, tree: _Tree, move_self: bool) -> bool:
        """corral's parent cgroup in `tree`, locked (v2: with the controllers enabled). False when it could
        not be made: its controllers are then in `unavailable`, the error in `errors`."""
        try:
            if tree.hierarchy.version == 2:
                self._open_v2(tree, move_self=move_self)
            else:
                tree.parent = os.path.join(tree.base, self.name)
                self._locks.append(_fs.mkdir_locked(tree.parent))
        except Exception as err:
            from supervisor._errors import SandboxSetupError

            if not isinstance(err, SandboxSetupError):
                raise
            self.errors.append(err)
            for c in tree.serves:
                self.unavailable[c] = str(err)
            if tree.parent:
                with contextlib.suppress(OSError):
                    os.rmdir(tree.parent)
            return False
        return True

    def _open_v2(self, tree: _Tree, move_self: bool) -> None:
        base = tree.base
        want = tree.serves & set(V2_DOMAIN_CONTROLLERS)
        try:
            avail = set(_fs.read(os.path.join(base, "cgroup.controllers")).split())
            enabled = set(_fs.read(os.path.join(base, "cgroup.subtree_control")).split())
        except OSError as err:
            raise _fs.setup_error(err, "read cgroup.controllers", base) from err
        for c in sorted(want - avail):
            self.unavailable[c] = (
                f"cgroup2 controller {c} is not delegated to {base} (absent from its cgroup.controllers)"
            )
            tree.serves.discard(c)
        want &= avail
        need = sorted(want - enabled)
        if need:
            # Settle the no-internal-processes rule before writing anything: enabling a threaded
            # controller (cpu, pids) in a cgroup that holds processes succeeds and turns it into a thread
            # root, after which memory fails with EOPNOTSUPP instead of the EBUSY that names the problem.
            # The true root cgroup (the only one without cgroup.type) is exempt from the rule.
            is_root = not os.path.exists(os.path.join(base, "cgroup.type"))
            if not is_root and _fs.read_pids(base):
                busy = OSError(_errno.EBUSY, os.strerror(_errno.EBUSY))
                self._move_self_or_explain(base, move_self, busy)
            try:
                self._enable(base, need)
            except OSError as err:
                if err.errno != _errno.EBUSY:
                    raise _fs.setup_error(err, "write cgroup.subtree_control", base) from err
                self._move_self_or_explain(base, move_self, err)  # a process arrived meanwhile
                try:
                    self._enable(base, need)
                except OSError as err2:
                    raise _fs.setup_error(err2, "write cgroup.subtree_control", base) from err2
        tree.parent = os.path.join(base, self.name)
        self._locks.append(_fs.mkdir_locked(tree.parent))
        try:
            self._enable(tree.parent, sorted(want))
        except OSError as err:
            raise _fs.setup_error(err, "write cgroup.subtree_control", tree.parent) from err
        if "freezer" in tree.serves and not (
            os.path.exists(os.path.join(tree.parent, "cgroup.kill"))
            or os.path.exists(os.path.join(tree.parent, "cgroup.freeze"))
        ):
            # Kill then falls back to SIGKILL rounds until the group is empty.
            tree.serves.discard("freezer")
            self.unavailable["freezer"] = "no cgroup.kill or cgroup.freeze (kernel older than 5.2)"

    @staticmethod
    def _enable(cgroup_dir: str, controllers: list[str]) -> None:
        # One write: the kernel vets the whole set at once, so a refusal leaves nothing half-enabled.
        order = sorted(controllers, key=lambda c: (c != "memory", c))
        _fs.write(os.path.join(cgroup_dir, "cgroup.subtree_control"), " ".join(f"+{c}" for c in order))

    def _move_self_or_explain(self, base: str, move_self: bool, err: OSError) -> None:
        me = os.getpid()
        others = [p for p in _fs.read_pids(base) if p != me]
        if others or not move_self:
            shown = " ".join(map(str, others[:5])) + (" ..." if len(others) > 5 else "")
            who = f"processes {shown}" if others else "this process"
            raise _fs.setup_error(
                err,
                "write cgroup.subtree_control",
                base,
                hint=f"{base} holds {who}; {_fs.NIP_HINT}",
            ) from err
        selfdir = os.path.join(base, self.name + ".self")
        _fs.SELF_LOCKS.append(_fs.mkdir_locked(selfdir))
        _fs.write_or_raise(os.path.join(selfdir, "cgroup.procs"), str(me))
        self.moved_self_to = selfdir
        log.warning(
            "cgroups: moved the supervisor (pid %d) into %s: cgroup v2 forbids enabling "
            "controllers in a cgroup that holds processes",
            me,
            selfdir,
        )

    def _cleanup_stale(self, trees: list[_Tree], prefix: str) -> None:
        """Kill and remove the corral cgroups of dead supervisors under each tree's base: a directory
        of today's format only when its lock can be taken (its owner is proven gone; the lock is held
        while it is removed), one of the earlier format when its pid and start time name no live
        process. Failures are logged."""
        rx = _fs.stale_name_re(prefix)
        stale: dict[str, list[tuple[Hierarchy, str]]] = {}
        alive: set[str] = set()
        for t in trees:
            try:
                entries = list(os.scandir(t.base))
            except OSError:
                continue
            for e in entries:
                m = rx.fullmatch(e.name)
                if not m or not e.is_dir(follow_symlinks=False) or e.name == self.name:
                    continue
                if m["lock"] is None:
                    start = int(m["start"]) if m["start"] else None
                    if _fs.owner_alive(int(m["pid"]), start, self._proc_root):
                        continue
                stale.setdefault(e.name, []).append((t.hierarchy, e.path))
        for name, places in sorted(stale.items()):
            locks: list[int] = []
            try:
                named = rx.fullmatch(name)  # it matched when listed
                if named is not None and named["lock"] is not None:
                    for _h, d in places:
                        try:
                            fd = _fs.try_lock(d)
                        except FileNotFoundError:
                            continue  # removed meanwhile (by its owner, or another sweeper)
                        except OSError as err:  # cannot open it: nothing proven, leave it
                            log.info("cgroups: cannot test the lock of %s: %s; left alone", d, err)
                            fd = None
                        if fd is None:
                            alive.add(name)
                            break
                        locks.append(fd)
                    if name in alive:
                        continue
                if not _fs.kill_places(places, timeout=2.0):
                    log.warning("cgroups: stale %s: processes survive SIGKILL; left alone", name)
                    continue
                deadline = time.monotonic() + 2.0
                for _h, d in places:
                    for sub in _fs.subtree_dirs(d):
                        _fs.rmdir_retry(sub, deadline)
            except OSError as err:
                log.warning("cgroups: could not remove stale %s: %s", name, err)
                continue
            finally:
                for fd in locks:
                    os.close(fd)
            self.stale_removed.append(name)
            log.warning("cgroups: removed stale cgroup %s left by a dead supervisor", name)

    def create_leaf(self, child_id: str, resources: ResourcePolicy, *, freezer: bool = True) -> Leaf:
        """Create the leaf `<parent>/<child_id>` in each hierarchy it needs and write the limits
        `resources` sets. On v1 each hierarchy costs a mkdir, a cgroup.procs write and an rmdir per
        child, so a hierarchy serving only `cpu` is skipped when no cpus limit is set, and one serving
        only `freezer` when `freezer` is False (the caller kills the tree another way: a child with its
        own pid namespace dies with its init). The limits: v2 memory.max, memory.swap.max 0,
        memory.oom.group 1, cpu.max "<quota> 100000", pids.max; v1 memory.limit_in_bytes,
        memory.memsw.limit_in_bytes, memory.oom_control 0, cpu.cfs_period_us and cpu.cfs_quota_us,
        pids.max. The leaf's `enforced`/`reasons` say which took effect; with cgroups unavailable it
        has no paths and every requested limit is reported missing (see Leaf.require).

        A leaf kept by `recycle` that spans the same hierarchies is taken instead when there is one (its
        directories keep the name of the child they were made for): only the limits that differ from what
        it holds are written, so the same policy's next child costs no cgroupfs call here at all
        (cgroups/_pool.py). When that write fails, the kept leaf is removed and a new one made.

        Raises ValueError for a bad or duplicate child_id, SandboxSetupError when a directory or
        limit cannot be written (the partly made leaf is removed first), RuntimeError when not
        opened.
        """
        if not self._opened or self._closed:
            msg = "CgroupManager is not open"
            raise RuntimeError(msg)
        if not _CHILD_ID_RE.fullmatch(child_id) or child_id in (".", ".."):
            msg = f"child id must match {_CHILD_ID_RE.pattern}: {child_id!r}"
            raise ValueError(msg)
        with self._lock:
            if child_id in self._leaves:
                msg = f"a leaf named {child_id!r} exists"
                raise ValueError(msg)
        places: list[tuple[Hierarchy, str]] = []
        dirs: dict[str, str] = {}
        needed = {"memory", "cpuacct", "pids"}
        if resources.cpus is not None:
            needed.add("cpu")
        if freezer:
            needed.add("freezer")
        trees = [t for t in self._trees if not (t.hierarchy.version == 1 and not t.serves & needed)]
        kept = self.pool.take(tuple(t.parent for t in trees))
        if kept is not None:
            try:
                kept.apply_limits(resources)  # only what differs from what it holds (`written`)
                kept.prime()
            except Exception as err:  # e.g. EBUSY lowering the limit under what is charged: a new leaf
                log.info("cgroups: kept leaf %s not reusable (%s): making a new one", kept.paths, err)
                with contextlib.suppress(Exception):
                    kept.remove(timeout=0.0)
            else:
                return kept
        try:
            for t in trees:
                d = f"{t.parent}/{child_id}"
                try:
                    os.mkdir(d, 0o755)
                except OSError as err:
                    raise _fs.setup_error(err, "mkdir leaf cgroup", d) from err
                places.append((t.hierarchy, d))
                for c in t.serves:
                    dirs[c] = d
            versions = {c: self._serve[c].hierarchy.version for c in dirs}
            leaf = Leaf(self, child_id, places, dirs, versions)
            leaf.apply_limits(resources)
            leaf.prime()
        except BaseException:
            for _h, d in reversed(places):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise
        with self._lock:
            self._leaves[child_id] = leaf
        return leaf

    def leaves(self) -> list[Leaf]:
        """The leaves created and not yet removed."""
        with self._lock:
            return list(self._leaves.values())

    def forget(self, leaf: Leaf) -> None:
        with self._lock:
            if self._leaves.get(leaf.name) is leaf:
                del self._leaves[leaf.name]

    def recycle(self, leaf: Leaf) -> bool:
        """The leaf of a reaped child: kept for the next child when the pool has room and the leaf is
        provably empty with clean event counters (cgroups/_pool.py), its usage counters then reset and its
        directories handed to a new Leaf object (the finished child's keeps nothing of them); else removed,
        as Leaf.remove_reaped. Returns whether it was kept. Blocking (a worker thread's job). Raises
        SandboxSetupError from the removal."""
        if self.pool.has_room() and not self._closed and not leaf.handed_over:
            try:
                why = _pool.recyclable(leaf, leaf.has("memory", "memory.kmem.usage_in_bytes"))
                if why is None:
                    _pool.reset(leaf, self.interface_files)
            except OSError as err:
                why = str(err)
            if why is None:
                # A kept leaf holds no fd (hand_over closes them), so the supervisor's fd count does not grow
                # with the pool and the pool takes no fd from the children under a low RLIMIT_NOFILE.
                fresh = leaf.hand_over()
                with self._lock:
                    if self._leaves.get(leaf.name) is leaf:
                        self._leaves[leaf.name] = fresh
                if self.pool.put(fresh):
                    return True
                leaf = fresh
            else:
                log.debug("cgroups: leaf %s not kept: %s", leaf.paths, why)
        leaf.remove_reaped()
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Kill and remove every remaining leaf, then remove the parent cgroups. Idempotent. A v2
        supervisor that moved itself stays in its `.self` leaf (the next start removes it once this
        process is gone). Tries everything, then raises the first SandboxSetupError met."""
        if self._closed:
            return
        self._closed = True
        self.pool.close()
        first: Exception | None = None
        for leaf in self.leaves():
            try:
                leaf.kill(timeout)
                leaf.remove(timeout)
            except Exception as err:  # keep going: the other leaves and parents still need removing
                first = first or err
        deadline = time.monotonic() + timeout
        for t in self._trees:
            try:
                _fs.rmdir_retry(t.parent, deadline)
            except OSError as err:
                first = first or _fs.setup_error(err, "rmdir parent cgroup", t.parent)
        # Held until the directories are gone (a parent left behind stays ours until this process exits:
        # then the next start removes it).
        if first is None:
            for fd in self._locks:
                os.close(fd)
            self._locks.clear()
        if first is not None:
            raise first
