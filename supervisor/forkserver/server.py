"""The fork server: a small single-threaded process, started once per Supervisor, that creates sandboxed
children on request. Standard library and corral's own C extension only; it runs as `python -I -S` (see
protocol.BOOT, and protocol.py for every message it receives and sends, in order).

Why a fork server: the supervisor is multi-threaded (asyncio, worker threads), and forking a multi-threaded
process risks locks held by other threads; starting a fresh interpreter per child costs 13-18 ms. This
process never has a second thread and stays small.

For each request the server decides, in Python, every step of the sandbox's confinement (`_confinement`:
the ordered list, with why each step stands where it does), writes the list into a pipe and launches the
sandbox init, a small static C executable (supervisor/sandbox/_cinit.c), with vfork semantics (nothing of
this process is copied) into new user and pid namespaces and with CLONE_PARENT, so that it is a child of
the supervisor itself (the supervisor reaps it through a pidfd, and its PDEATHSIG fires when the supervisor
dies). The init, pid 1 of its pid namespace, runs the steps, spawns the command, and relays its exec result
and exit status to the supervisor over the status pipe (protocol.py, "Status records").

A pre-forked sandbox (a PreforkRequest) does all of that ahead of its request, for a given policy, workdir
and cgroup, and then waits on a socket for the command alone; the supervisor hands it the command directly
(see supervisor/forkserver/prefork.py, which also decides when such a sandbox may still serve a request).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import signal
import socket
import sys
from collections import OrderedDict

from supervisor.forkserver import _overlays, _recheck, protocol
from supervisor.forkserver.netpool import NetPool, close_all
from supervisor.forkserver.protocol import CompiledPayload, PreforkRequest, Reply, Request, SpawnRequest
from supervisor.sandbox import (
    _cinit,
    _ops,
    _sys,
    capabilities,
    landlock,
    mounts,
    namespaces,
    probe,
    rlimits,
    seccomp,
)

_CLONE_NEWCGROUP = 0x02000000
#: The sandbox init executable, built next to the extension (setup.py).
_INIT = os.fsencode(os.path.join(os.path.dirname(_cinit.__file__), "corral-init"))


# ----------------------------------------------------------------------------------------------------------
# The sandbox's confinement, in order.


def _confinement(
    policy_id: int,
    pol: CompiledPayload,
    cwd: str,
    procs: list[str],
    supervisor_pidfd: int,
    cache: _Cache,
    pooled_net: bool = False,
    console: str | None = None,
    checked: bytes | None = None,
    stub: bool = False,
) -> list[_ops.Segment]:
    """Every containment step of a sandbox, in the order the init applies them: steps 1-3 in `_head`, 4
    here, 5-8 in `_view`, 9-13 in `_lockdown`. Returns the plan's segments. Raises SetupFailure for what is
    known to fail already (a protected path that is a symlink). `checked`, `stub`: see `_Cache.view`.

    Runs in the fork server; the init (supervisor/sandbox/_cinit.c) executes the plan. A pre-forked sandbox
    runs all of it before its command is known (the path-dependent step 8 included; the supervisor checks
    at the request that the paths it looked at are unchanged, else the request takes a sandbox built on the
    spot). Every part but step 4 is cached (_Cache).
    """
    # 0. (At launch: the init is born in its user and pid namespaces, pid 1 of the new one, and a child of
    #    the supervisor; with `pooled_net`, in a network namespace lent by netpool.NetPool. The id maps: the
    #    caller's uid and gid mapped to themselves, written by the launched child itself before its exec
    #    (_cinit.start, premap): every later step that creates a file (a mount point, a device node) needs
    #    its owner mapped, and mapped to root the exec keeps the capabilities without 41 ambient raises. A
    #    root caller's sandbox in another account's workdir gets the fork server's two-line maps instead
    #    (namespaces.owner_maps), written before the init reads its plan's end; the plan is the same.)
    head = cache.head(policy_id, pol, supervisor_pidfd)
    # 4. Into the cgroup leaf, so that everything the sandbox does is charged and limited there; the
    #    command inherits it. Writing 0 moves the writer: on v1 into `tasks` (Leaf.placement_files: no
    #    global lock, no RCU grace period to wait out); done here, a slow move delays only this sandbox.
    #    (The one part that differs for every sandbox: packed directly, not through a Plan.)
    placement = _placement(procs)
    cgroup_view = mounts.cgroup_view(procs, bool(pol["cgroupns"])) if pol["mounts"] is not None else ()
    view = cache.view(policy_id, pol, cwd, pooled_net, cgroup_view, console, checked, stub)
    return [head, placement, view, cache.lockdown(policy_id, pol, supervisor_pidfd)]


#: Placement segments by leaf (their files): a leaf the supervisor reuses is placed by the same segment.
_placements: dict[tuple[str, ...], _ops.Segment] = {}


def _placement(procs: list[str]) -> _ops.Segment:
    """Step 4's segment: write 0 into each of the leaf's placement files. Made once per leaf while at most
    256 are remembered (cleared when full)."""
    key = tuple(procs)
    seg = _placements.get(key)
    if seg is None:
        if len(_placements) >= 256:
            _placements.clear()
        seg = _placements[key] = _ops.write_segment(
            "cgroups", [(path, "0", f"write {os.path.basename(path)}") for path in procs]
        )
    return seg


def _head(pol: CompiledPayload, supervisor_pidfd: int) -> _ops.Plan:
    """Steps 1-3: what comes before anything else (the id maps, step 2, are written at the launch)."""
    plan = _ops.Plan()
    # 1. Die with the supervisor. PDEATHSIG is set first so that no later step can outlive it; the init
    #    then polls the supervisor's pidfd, which closes the race where it died between launch and prctl.
    #    A root caller's sandbox keeps the pidfd open for step 12b, whose change of ids clears PDEATHSIG.
    owner = int(bool(pol["ns"].get("owner")))
    plan.add(_cinit.OP_PDEATHSIG, "pdeathsig", "prctl(PR_SET_PDEATHSIG)", a=(supervisor_pidfd, owner))
    # 3. New session: no controlling terminal, so TIOCSTI cannot push keystrokes into the caller's shell.
    #    (With `corral run --tty` the init, this session's leader, makes the pty corral made for the command
    #    its controlling terminal when it starts the command: _cinit.c, PLAN_CTTY. Never the caller's
    #    terminal, which is its own session's: TIOCSCTTY refuses that, EPERM.)
    plan.add(_cinit.OP_SETSID, "new_session", "setsid")
    return plan


def _view(
    pol: CompiledPayload,
    cwd: str,
    pooled_net: bool,
    cgroup_view: tuple[mounts.CgroupViewEntry, ...] = (),
    console: str | None = None,
    share: mounts.Share | None = None,
) -> _ops.Plan:
    """Steps 5-8: the other namespaces and the filesystem view. Raises SetupFailure. `share`: the fork
    server's shared overlays (mounts.emit_base)."""
    plan = _ops.Plan()
    # A root caller's sandbox runs as the workdir's owner: their credential stores are hidden too.
    pol = {**pol, "mounts": mounts.with_owner_secrets(pol["mounts"], cwd)}
    # 5. The mount, network, ipc and uts namespaces (owned by the new user namespace), the hostname and
    #    loopback: need CAP_SYS_ADMIN/CAP_NET_ADMIN there, so before the drop. (A pooled network namespace
    #    is there already, with loopback up.)
    namespaces.emit(pol["ns"], plan, pooled_net)
    #    Paths under /tmp, /run or /dev that the request needs are opened (O_PATH) in the new mount
    #    namespace (a bind's source must be in it), before step 6 replaces those; step 8 binds them back.
    mnt = pol["mounts"]
    #    So are the roots below a directory the view shows through an overlay (mounts.overlay_roots).
    overlays = mounts.overlay_roots(mnt, cwd)
    keep = mounts.keep_visible(mnt, cwd, overlays) if mnt is not None else []
    mounts.emit_keep(keep, plan)
    #    So is the command's terminal when it is a pty made for it (--tty), to be named /dev/console.
    console_slot = len(keep) if console is not None and mnt is not None and mnt["confine"] else -1
    if console is not None and 0 <= console_slot < _cinit.SLOTS:
        mounts.emit_console(console, console_slot, plan)
    else:
        console_slot = -1
    # 6. The path-independent part of the filesystem view (read-only host tree, an empty /run, minimal
    #    /dev, private /tmp, fresh /proc): needs CAP_SYS_ADMIN and must precede Landlock, which forbids
    #    mounting and whose rules must see the new tmpfs inodes. Each overlay a copy of one this process
    #    made for the view, where it can (_overlays.py).
    if mnt is not None:
        mounts.emit_base(mnt, plan, pooled_net, overlays, share)
    # 7. The cgroup namespace now that step 4 moved us into our leaf cgroup: the namespace root is the
    #    leaf, and the sandbox sees nothing of the host's hierarchy.
    if pol["cgroupns"]:
        plan.add(_cinit.OP_UNSHARE, "namespaces", "unshare(CLONE_NEWCGROUP)", a=(_CLONE_NEWCGROUP,))
    # 8. The path-dependent mounts, which depend on what exists now (a .git/hooks made since the last
    #    sandbox must be protected): writable roots, protected paths, denied paths; then chdir(workdir)
    #    into the new view.
    #    Then the sandbox's own /sys/fs/cgroup: the host's tree shows every other sandbox's leaf, other
    #    supervisors' pids and the host's totals. Its hierarchies are mounted afresh, which inside the
    #    new cgroup namespace roots them at the leaf: so after the unshare, and before step 10 drops the
    #    CAP_SYS_ADMIN a mount needs; after the path-dependent mounts, so that no writable root under
    #    /sys/fs/cgroup (a policy's allow_write on the cgroup tree) shows through it. (Without a cgroup
    #    namespace, an empty read-only directory.) Its chdir comes last, into the finished view.
    if mnt is not None:
        mounts.emit_paths(mnt, cwd, keep, plan, cgroup_view, console_slot, overlays)
    else:
        plan.add(_cinit.OP_CHDIR, "mounts", "chdir(workdir)", s=(cwd,), path=cwd)
    return plan


def _lockdown(pol: CompiledPayload, supervisor_pidfd: int) -> _ops.Plan:
    """Steps 9-13: what depends on the policy alone. Then the init starts the command (_cinit.c,
    run_command): not dumpable, signals forwarded, stdio in place, every other fd closed, signals default;
    it reports X, reaps, and reports S."""
    plan = _ops.Plan()
    # 9. rlimits only lower limits, which needs no capability, but do it while the process is still ours.
    rlimits.emit(pol["rlimits"], plan)
    # 10. Capabilities: the securebits locked (NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE) and the
    #     bounding set emptied first; everything above needed the capabilities.
    capabilities.emit_bounding(pol["caps"], plan)
    # 11. no_new_privs: required by Landlock and by unprivileged seccomp; no exec can regain privilege.
    capabilities.emit_no_new_privs(plan)
    # 12. Landlock after the mounts it describes and after no_new_privs. Its rules open their paths as the
    #     setup's ids (root's, for a root caller: a root-only directory on the way is no obstacle).
    if pol["landlock"] is not None:
        landlock.emit(pol["landlock"], plan)
    # 12b. A root caller's sandbox becomes its workdir's owner (namespaces.owner_maps), which needs
    #     CAP_SETUID/CAP_SETGID; NO_SETUID_FIXUP keeps the rest until the drop right after: the ambient,
    #     effective, permitted and inheritable sets emptied. Nothing below needs a capability.
    namespaces.emit_become_owner(pol["ns"], plan, supervisor_pidfd)
    capabilities.emit_drop(plan)
    # 13. seccomp last: its filter denies syscalls the steps before use (mount, unshare, ...).
    if pol["seccomp"] is not None:
        seccomp.emit(pol["seccomp"], plan)
    return plan


class _Cache:
    """Packed plan segments, so that a request repeats only the lookups its view depends on.

    `head` and `lockdown` depend on the policy alone. `view` depends on the policy, the workdir, whether
    the network namespace is a pooled one, and the state of the paths `mounts.fingerprint` covers (the
    host paths the base view tests, the roots, the protected and denied paths): it is reused only while
    the fingerprint taken now equals the one taken around its build, which must itself have been stable
    (a build that changed what it looked at, by creating a .git/hooks to protect, is not kept). For a
    pre-forked sandbox, "now" is the supervisor's fingerprint taken just before its request (its digest,
    `checked`): the supervisor uses the sandbox only while the paths still match that fingerprint, at its R
    record and at the request, so the fork server takes none of its own for a view it has for it. For the
    other requests, a Recheck of the fingerprint a view was packed for (forkserver/_recheck.py: single-name
    stats on held fds, about 30 us where the fingerprint takes 45) answers while it holds, for the
    MAX_RECHECKS most recently used views; the fingerprint otherwise.
    """

    def __init__(self) -> None:
        self._head: dict[int, _ops.Segment] = {}
        self._lockdown: dict[int, _ops.Segment] = {}
        self._views: dict[
            tuple[int, str, bool, tuple[mounts.CgroupViewEntry, ...], str | None, bool],
            # (mounts.digest of the fingerprint it was packed for, the segment, its shared overlays' fds)
            tuple[bytes, _ops.Segment, tuple[int, ...]],
        ] = {}
        #: The detached overlays the views' sandboxes copy (_overlays.py); `fds`: those of the segment
        #: `view` returned last, which the init must inherit.
        self.shared = _shared_overlays()
        self.fds: tuple[int, ...] = ()
        #: A view's Recheck (None: none could be recorded), by the view's key; bounded (each holds fds).
        self._rechecks: OrderedDict[
            tuple[int, str, bool, tuple[mounts.CgroupViewEntry, ...], str | None, bool],
            _recheck.Recheck | None,
        ] = OrderedDict()
        #: POLLPRI on /proc/self/mountinfo: the host's mount table changed since it was last polled (a bind
        #: mount gives a denied object another name: mounts._mount_aliases), so no cached view is used.
        self._mount_table = mounts.MountTable()
        self._mount_generation = 0

    def head(self, policy_id: int, pol: CompiledPayload, supervisor_pidfd: int) -> _ops.Segment:
        seg = self._head.get(policy_id)
        if seg is None:
            seg = self._head[policy_id] = _head(pol, supervisor_pidfd).segment()
        return seg

    def lockdown(self, policy_id: int, pol: CompiledPayload, supervisor_pidfd: int) -> _ops.Segment:
        seg = self._lockdown.get(policy_id)
        if seg is None:
            seg = self._lockdown[policy_id] = _lockdown(pol, supervisor_pidfd).segment()
        return seg

    def forget(self, policy_id: int) -> None:
        """Drop every segment of this policy."""
        self._head.pop(policy_id, None)
        self._lockdown.pop(policy_id, None)
        for key in [k for k in self._views if k[0] == policy_id]:
            del self._views[key]
            self._drop_recheck(key)
        self._release()

    def _hit(self, entry: tuple[bytes, _ops.Segment, tuple[int, ...]]) -> _ops.Segment:
        """A cached view's segment, its shared overlays made anew where they are stale."""
        self.fds = entry[2]
        if self.shared is not None:
            self.shared.refresh(entry[2])
        return entry[1]

    def _release(self) -> None:
        """Close the shared overlays no cached view and not the last segment uses."""
        if self.shared is not None:
            used = set(self.fds)
            for entry in self._views.values():
                used.update(entry[2])
            self.shared.release(used)

    def view(
        self,
        policy_id: int,
        pol: CompiledPayload,
        cwd: str,
        pooled_net: bool,
        cgroup_view: tuple[mounts.CgroupViewEntry, ...] = (),
        console: str | None = None,
        checked: bytes | None = None,
        stub: bool = False,
    ) -> _ops.Segment:
        """Step 5-8's segment: the cached one while the paths are as when it was packed, else packed now
        (and kept when they did not change meanwhile). `checked`: the digest of a fingerprint the caller
        took and compares the paths with again after the build (a pre-forked sandbox's): the cached
        segment for it is used as it is. `stub`: for a pre-forked sandbox, whose view has overlays of its own
        (a view of its own, cached apart): it may wait for its command for minutes, and a copy of the shared
        overlay would show it what the sandboxes around its build looked up, as it was then."""
        mnt = pol["mounts"]
        key = (policy_id, cwd, pooled_net, cgroup_view, console, stub)
        generation = self._mount_table.generation()
        if generation != self._mount_generation:
            self._mount_generation = generation
            # The views' plans hide each denied object under the names the mount table gave it when they were
            # packed; a bind mount made since gives it one more. (One poll per request: about a microsecond.)
            for old in list(self._views):
                self._drop_recheck(old)
            self._views.clear()
        hit = self._views.get(key)
        before: bytes | None = None
        if hit is not None:
            if checked is not None and hit[0] == checked:
                return self._hit(hit)
            recheck = self._rechecks.get(key)
            if recheck is not None:
                if recheck.unchanged():
                    self._rechecks.move_to_end(key)
                    return self._hit(hit)
                self._drop_recheck(key)
            elif key not in self._rechecks:
                # No Recheck yet (a new cache entry's was refused, say, for a ctime within its margin):
                # the fingerprint with one, once.
                fingerprint, recheck = _recheck.take(mnt, cwd)
                before = mounts.digest(fingerprint)
                if before == hit[0]:
                    self._keep_recheck(key, recheck)
                    return self._hit(hit)
                if recheck is not None:
                    recheck.close()
        if before is None:
            before = mounts.digest(mounts.fingerprint(mnt, cwd))
        if hit is not None and hit[0] == before:
            return self._hit(hit)
        fds: list[int] = []
        share = None
        if self.shared is not None and not stub:
            shared = self.shared

            def share(top: str, layers: str) -> int | None:
                fd = shared.make(top, layers)
                if fd is not None:
                    fds.append(fd)
                return fd

        seg = _view(pol, cwd, pooled_net, cgroup_view, console, share).segment()
        self.fds = tuple(fds)
        after, recheck = _recheck.take(mnt, cwd)
        if mounts.digest(after) == before:
            if len(self._views) >= 256:  # bounded: one entry per policy and workdir in use
                self._views.clear()
                for old in list(self._rechecks):
                    self._drop_recheck(old)
            self._views[key] = (before, seg, self.fds)
            self._keep_recheck(key, recheck)
        elif recheck is not None:
            recheck.close()
        self._release()
        return seg

    def _keep_recheck(
        self,
        key: tuple[int, str, bool, tuple[mounts.CgroupViewEntry, ...], str | None, bool],
        recheck: _recheck.Recheck | None,
    ) -> None:
        self._drop_recheck(key)
        self._rechecks[key] = recheck
        while len(self._rechecks) > MAX_RECHECKS:
            self._drop_recheck(next(iter(self._rechecks)))

    def _drop_recheck(
        self, key: tuple[int, str, bool, tuple[mounts.CgroupViewEntry, ...], str | None, bool]
    ) -> None:
        recheck = self._rechecks.pop(key, None)
        if recheck is not None:
            recheck.close()


#: Views whose Recheck the fork server keeps (each holds up to _recheck.MAX_FDS directory fds).
MAX_RECHECKS = 16


def _shared_overlays() -> _overlays.SharedOverlays | None:
    """The views' shared overlays (_overlays.py), unless CORRAL_SHARED_OVERLAYS=0 in the environment;
    CORRAL_SHARED_OVERLAYS=N (seconds): made anew after N seconds instead of _overlays.MAX_AGE. Diagnostics,
    and how the tests check the per-sandbox overlay and sharing without a race against the age. Where the
    kernel refuses this process an overlay (an ordinary user's: EPERM), the first attempt says so, once."""
    value = os.environ.pop("CORRAL_SHARED_OVERLAYS", "")  # (none of it reaches a sandbox init)
    try:
        age = float(value) if value else _overlays.MAX_AGE
    except ValueError:
        age = _overlays.MAX_AGE
    return _overlays.SharedOverlays(age) if age > 0 else None


# ----------------------------------------------------------------------------------------------------------
# The server loop.


#: The one receive buffer of the request loop: recvmsg(MAX_REQUEST) allocated (and the allocator mapped,
#: shrank and unmapped) 1 MiB for every request of a few hundred bytes. An anonymous mapping: only the
#: pages the largest request wrote are ever resident.
_REQUEST_BUFFER = memoryview(mmap.mmap(-1, protocol.MAX_REQUEST))


def _recv(sock: socket.socket) -> tuple[Request | None, list[int], bool]:
    """One request, the fds sent with it, and whether the kernel dropped some of them (MSG_CTRUNC: no fd
    was free here); (None, [], False) at EOF."""
    size, ancdata, flags, _addr = sock.recvmsg_into(
        [_REQUEST_BUFFER], socket.CMSG_SPACE(protocol.MAX_FDS * 4)
    )
    fds = _sys.received_fds(ancdata)
    if not size:
        for fd in fds:
            os.close(fd)
        return None, [], False
    # (marshal copies what it decodes: nothing of the request refers to the buffer after this.)
    return protocol.decode_request(_REQUEST_BUFFER[:size]), fds, bool(flags & socket.MSG_CTRUNC)


def _send(sock: socket.socket, reply: Reply, fds: list[int]) -> None:
    sock.sendmsg([protocol.encode(reply)], _sys.rights(fds))


class Server:
    """The request loop's state: the compiled policies, by id."""

    def __init__(self, supervisor_pidfd: int, slot: mmap.mmap | None = None) -> None:
        self.supervisor_pidfd = supervisor_pidfd
        #: Shared with the supervisor (protocol.SLOT): (pid, request number) of the last clone, the pid
        #: stored by the kernel (CLONE_PARENT_SETTID) before the init runs. If this process dies before its
        #: reply, the supervisor still knows the init it has to kill and reap (client._orphan).
        self.slot = slot
        self.requests = 0
        self.policies: dict[int, CompiledPayload] = {}
        self.cache = _Cache()
        #: What the last request's view build noted (_ops.Plan.nogit, _ops.Plan.absent), for its reply.
        self.nogit: list[str] = []
        self.absent: list[tuple[str, str]] = []
        self.netpool = NetPool()
        #: The init executable, opened once here and executed from this fd (execveat): a sandbox that may
        #: write where corral is installed (a project's virtualenv in its workdir) replaced `corral-init`
        #: there, and the next spawn ran the replacement as root, outside any sandbox.
        self.init_fd = os.open(_INIT, os.O_PATH | os.O_CLOEXEC)

    def forget(self, policy_id: object) -> None:
        """The supervisor no longer keeps this policy (its LRU evicted it, or it came "once"): drop it and
        everything cached for it."""
        if isinstance(policy_id, int):
            self.policies.pop(policy_id, None)
            self.cache.forget(policy_id)
            self.netpool.forget(policy_id)

    def _policy(self, req: Request) -> CompiledPayload:
        key = req["policy_id"]
        if "policy" in req:
            self.policies[key] = req["policy"]
        return self.policies[key]

    def _start(
        self,
        pol: CompiledPayload,
        req: Request,
        mode: int,
        stdio: list[int],
        ctl_fd: int = -1,
        command: bytes = b"",
        command_fd: int = -1,
        ctty: bool = False,
        proxy_fd: int = -1,
    ) -> tuple[Reply, list[int]]:
        """Plan the sandbox and launch its init with the plan; returns the reply and its fds [pidfd,
        status_r]. The reply carries an error and no fds when nothing was started; an error and the fds
        when the init could not be executed (it exited at once; the supervisor reaps it)."""
        cwd = str(req["cwd"])
        key = (req["policy_id"], cwd)
        self.nogit, self.absent = [], []
        net = self.netpool.take(key) if pol["ns"]["net"] else None
        # A root caller's sandbox in another account's workdir: its two-line id maps are written here
        # once it runs, and it must not read its plan's end before (the write end stays open until then).
        # In a root-owned workdir the launched child maps 0 itself, as any caller's does (no cost here).
        try:
            maps = namespaces.owner_maps(cwd) if pol["ns"].get("owner") else None
            if maps == namespaces.ROOT_MAPS:
                maps = None
            segments = self._segments(pol, req, cwd, stdio, pooled_net=net is not None, ctty=ctty)
            self.nogit = [root for seg in segments for root in seg.nogit]
            self.absent = [pair for seg in segments for pair in seg.absent]
        except _sys.SetupFailure as failure:
            if net is not None:
                self.netpool.unused(key, net)
            return {"error": failure.to_dict()}, []
        try:
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
        except OSError as err:
            if net is not None:
                self.netpool.unused(key, net)
            return {"error": _sys.SetupFailure("fork server", "pipe2", err.errno or 0).to_dict()}, []
        try:
            pid, exec_errno, unmapped, plan_w = self._launch(
                pol,
                segments,
                mode,
                stdio,
                status_w,
                net,
                maps is None,
                ctl_fd,
                command,
                command_fd,
                ctty,
                proxy_fd,
            )
        except OSError as err:
            os.close(status_r)
            if net is not None:
                self.netpool.unused(key, net)
            launch = _sys.SetupFailure("fork server", "launch corral-init", err.errno or 0, _INIT.decode())
            return {"error": launch.to_dict()}, []
        if plan_w >= 0 and maps is not None:
            return self._map_owner(pid, maps, plan_w, status_r, net, key)
        return self._started(pid, status_r, net, key, unmapped, exec_errno)

    def _segments(
        self,
        pol: CompiledPayload,
        req: Request,
        cwd: str,
        stdio: list[int],
        *,
        pooled_net: bool,
        ctty: bool,
    ) -> list[_ops.Segment]:
        """The plan's segments for this request (`_confinement`); raises _sys.SetupFailure as it does."""
        return _confinement(
            req["policy_id"],
            pol,
            cwd,
            req.get("cgroup_procs", []),
            self.supervisor_pidfd,
            self.cache,
            pooled_net=pooled_net,
            console=mounts.console_path(stdio[0]) if ctty and stdio else None,
            checked=req.get("view") if protocol.is_prefork(req) else None,
            stub=protocol.is_prefork(req),
        )

    def _launch(
        self,
        pol: CompiledPayload,
        segments: list[_ops.Segment],
        mode: int,
        stdio: list[int],
        status_w: int,
        net: tuple[int, ...] | None,
        close_plan: bool,
        ctl_fd: int,
        command: bytes,
        command_fd: int,
        ctty: bool,
        proxy_fd: int,
    ) -> tuple[int, int, _sys.SetupFailure | None, int]:
        """Write the plan to a pipe and launch the init reading it; returns (pid, exec errno, the id maps'
        failure, plan write end).

        `close_plan`: the launched child writes its own id maps (the caller's uid and gid to themselves;
        namespaces.launch_maps) before its exec, and the plan's write end is closed here (-1); otherwise
        the caller writes the owner maps and closes it. It is closed here too when the init was not
        started, could not map its ids (the child has then exited) or failed to exec. Closes `status_w`
        always. Raises OSError when the pipe, the write or the launch fails.
        """
        plan_r = plan_w = pid = -1
        exec_errno = 0
        unmapped = None
        premap = namespaces.launch_maps(pol["ns"]) if close_plan else None
        try:
            plan_r, plan_w = os.pipe2(os.O_CLOEXEC)
            blob = _ops.blob(
                segments,
                mode,
                status_w=status_w,
                ctl_fd=ctl_fd,
                stdio=stdio,
                keep=[self.supervisor_pidfd, *self.cache.fds],
                command=command,
                command_fd=command_fd,
                net_sysfs_fd=net[1] if net is not None else -1,
                ctty=ctty,
                proxy_fd=proxy_fd,
                own_maps=premap is not None,
            )
            _write_all(plan_w, blob)  # whole, before the init runs: it reads to EOF
            if close_plan:
                os.close(plan_w)
                plan_w = -1
            extra = tuple(fd for fd in (ctl_fd, command_fd, net[1] if net else -1, proxy_fd) if fd >= 0)
            extra += self.cache.fds  # the view's shared overlays, which the plan copies and closes
            keep = (plan_r, status_w, self.supervisor_pidfd, *stdio, *extra)
            flags = namespaces.clone_flags(pol["ns"])
            netfd = net[0] if net is not None else -1
            if self.slot is not None:
                protocol.SLOT.pack_into(self.slot, 0, 0, self.requests)
                pid, exec_errno, failed = _cinit.start(
                    flags, _INIT, plan_r, keep, netfd, self.slot, premap=premap, exec_fd=self.init_fd
                )
            else:
                pid, exec_errno, failed = _cinit.start(
                    flags, _INIT, plan_r, keep, netfd, premap=premap, exec_fd=self.init_fd
                )
            if failed is not None:
                unmapped = namespaces.map_failure(failed, exec_errno)
                exec_errno = 0
        finally:
            for fd in (plan_r, status_w):
                if fd >= 0:
                    os.close(fd)
            if plan_w >= 0 and (pid < 0 or exec_errno or unmapped is not None):
                os.close(plan_w)
                plan_w = -1
        return pid, exec_errno, unmapped, plan_w

    def _map_owner(
        self,
        pid: int,
        maps: tuple[bytes, bytes],
        plan_w: int,
        status_r: int,
        net: tuple[int, ...] | None,
        key: tuple[int, str],
    ) -> tuple[Reply, list[int]]:
        """Write the init `pid`'s owner id maps, then close the plan's write end `plan_w`; returns the
        reply as `_started`. A map that cannot be written kills the init (the reply carries the error)."""
        # Before the plan's end: the init is blocked reading it. A map that cannot be written stops
        # the sandbox (it would run as root instead: no silent downgrade).
        try:
            namespaces.write_owner_maps(pid, maps)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            os.close(plan_w)
            unmapped = _sys.SetupFailure(
                "namespaces",
                f"write /proc/{pid}/uid_map",
                err.errno or 0,
                hint="a root caller's sandbox runs as its workdir's owner, whose ids this process maps "
                "(it needs CAP_SETUID and CAP_SETGID); run corral with them, or as the workdir's owner",
            )
            return self._started(pid, status_r, net, key, unmapped)
        os.close(plan_w)
        return self._started(pid, status_r, net, key, None)

    def _started(
        self,
        pid: int,
        status_r: int,
        net: tuple[int, ...] | None,
        key: tuple[int, str],
        failure: _sys.SetupFailure | None,
        exec_errno: int = 0,
    ) -> tuple[Reply, list[int]]:
        """The reply for the init `pid` just launched: [pidfd, status_r], with an error when it failed to
        exec (it exited at once) or `failure` (it was killed); the supervisor reaps it."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as err:  # EMFILE: the init runs, and is the supervisor's to kill and reap by pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            os.close(status_r)
            if net is not None:
                close_all(*net)  # its borrower may still be in it
            lost = _sys.SetupFailure("fork server", "pidfd_open", err.errno or 0)
            return {"pid": pid, "error": lost.to_dict()}, []
        if net is not None:
            self.netpool.lend(key, net, pidfd)
        reply: Reply = {"pid": pid}
        if failure is not None:
            reply["error"] = failure.to_dict()
        elif exec_errno:
            hint = "corral's C parts are not built: reinstall corral (pip install -e .)"
            unexecuted = _sys.SetupFailure(
                "fork server", "execve(corral-init)", exec_errno, _INIT.decode(), hint
            )
            reply["error"] = unexecuted.to_dict()
        return reply, [pidfd, status_r]

    def spawn(self, req: SpawnRequest, fds: list[int]) -> tuple[Reply, list[int]]:
        """A sandbox for this request, set up from scratch. Reply fds: [pidfd, status_r]."""
        ctty = bool(req.get("ctty"))
        # Network mode "proxy": the socket the init sends the proxy's listener on, at "proxy_fd" among the
        # fds (closed with the rest by the request loop).
        where = req.get("proxy_fd")
        fds = list(fds)
        proxy_fd = fds.pop(where) if isinstance(where, int) else -1
        pol = self._policy(req)
        if req.get("cmd_fd"):  # a large command comes in a memfd, the last fd
            reply, out = self._start(
                pol, req, _ops.MODE_SPAWN, fds[:-1], command_fd=fds[-1], ctty=ctty, proxy_fd=proxy_fd
            )
        else:
            reply, out = self._start(
                pol, req, _ops.MODE_SPAWN, fds, command=req.get("cmd", b""), ctty=ctty, proxy_fd=proxy_fd
            )
        return _with_notes(reply, out, self.absent, self.nogit)

    def prefork(self, req: PreforkRequest) -> tuple[Reply, list[int]]:
        """A sandbox that confines itself fully for the policy, workdir and cgroup of `req` and then waits
        for its command on a socket. Reply fds: [pidfd, status_r, the socket's supervisor end]."""
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pol = self._policy(req)
            # Network mode "proxy": the proxy's listening socket comes back on the same socket, before R.
            proxy_fd = ctl_child.fileno() if pol["ns"]["proxy"] else -1
            reply, out = self._start(pol, req, _ops.MODE_STUB, [], ctl_child.fileno(), proxy_fd=proxy_fd)
        finally:
            ctl_child.close()
        if out:
            out.append(ctl_parent.detach())
        else:
            ctl_parent.close()
        return _with_notes(reply, out, self.absent, self.nogit)


def _with_notes(
    reply: Reply, out: list[int], absent: list[tuple[str, str]], nogit: list[str]
) -> tuple[Reply, list[int]]:
    """`reply` naming, when it started a sandbox, what its view's build noted: the protected paths missing
    then (the supervisor moves aside what the command made there) and the writable roots without a `.git`
    (the git scan trusts nothing in one there)."""
    if out:
        if absent:
            reply["absent"] = [list(pair) for pair in absent]
        if nogit:
            reply["nogit"] = nogit
    return reply, out


def _write_all(fd: int, data: bytes) -> None:
    """Write `data` into the empty pipe `fd` without blocking: the pipe is first grown to hold it."""
    if len(data) > 65536:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, len(data))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(sock_fd: int, slot_fd: int = -1) -> None:
    """Serve requests on the SOCK_SEQPACKET socket `sock_fd` until it closes: first the probe report, then
    one reply per request, in order (protocol.py). `slot_fd`: the memfd of protocol.SLOT."""
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    supervisor_pidfd = os.pidfd_open(os.getppid())
    if _sys.readable(supervisor_pidfd):
        sys.exit(0)
    sock = socket.socket(fileno=sock_fd)
    report: protocol.ProbeReport = probe.probe_in_fork_server()
    sock.sendall(protocol.encode(report))
    slot = None
    if slot_fd >= 0:
        slot = mmap.mmap(slot_fd, mmap.PAGESIZE)
        os.close(slot_fd)
    server = Server(supervisor_pidfd, slot)
    while True:
        req, fds, truncated = _recv(sock)
        if req is None:
            return
        server.requests += 1
        out: list[int] = []
        for policy_id in req.get("forget", ()):
            server.forget(policy_id)
        reply: Reply
        try:
            if truncated:  # never start a sandbox with some of its stdio missing
                failure = _sys.SetupFailure(
                    "fork server",
                    "recvmsg(SCM_RIGHTS)",
                    errno.EMFILE,
                    hint="the fork server had no fd free for the request's stdio; raise RLIMIT_NOFILE",
                )
                reply = {"error": failure.to_dict()}
            elif protocol.is_prefork(req):
                reply, out = server.prefork(req)
            else:
                reply, out = server.spawn(req, fds)
        except Exception as exc:
            reply = {"error": protocol.bug_failure(exc)}
        finally:
            for fd in fds:
                os.close(fd)
            if req.get("once"):
                server.forget(req.get("policy_id"))
        _send(sock, reply, out)
        for fd in out:
            os.close(fd)
