"""Pre-forked sandboxes: a sandbox built and fully confined ahead of its command, so that a request for the
same policy and workdir costs only the hand-over of the command (argv, env, stdio) and its exec.

After each spawn for a (policy, workdir) the supervisor asks the fork server for the next sandbox of that
key, in a cgroup leaf of its own made now. The sandbox runs every containment step (`server._confinement`:
namespaces, the whole filesystem view, cgroup namespace, rlimits, capabilities, no_new_privs, Landlock,
seccomp), writes an R record and waits on a socket for its command, which the supervisor sends it directly.

The filesystem view depends on what existed when it was built (a .git/hooks to protect, a credential file to
hide, the inode a writable root had). So the paths it depends on are fingerprinted (`mounts.fingerprint`)
before the build starts and again when the R record arrives: a sandbox whose two fingerprints differ is
discarded, and one is handed a request only while the fingerprint taken at the request still equals them.
The first is taken in a worker thread with a Recheck (forkserver/_recheck.py) that the loop evaluates at the R
record and at the request, with no worker-thread hop, while nothing it recorded changed; the next build of the
same key starts from that same fingerprint and Recheck, on the loop, while the Recheck holds.
Otherwise the request takes a sandbox built on the spot, which sees the tree as it is then. (A change made and
undone while a view is being built, by a concurrent child in the same workspace, is not seen by either path:
mount-based protection can only protect what exists when it is built.)

Every sandbox here is a child of the supervisor (CLONE_PARENT): discarded ones are killed, reaped, and their
leaves removed, in tasks of the supervisor's task group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections import OrderedDict
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from policies import Policy
from supervisor._errors import SandboxSetupError
from supervisor._plan import CompiledPolicy
from supervisor._proxy import take_listener
from supervisor.forkserver import _recheck, protocol
from supervisor.forkserver._recheck import Recheck
from supervisor.forkserver.client import ForkServer, StatusReader
from supervisor.forkserver.protocol import READY, SpawnRequest
from supervisor.sandbox import mounts
from supervisor.sandbox._sys import readable, rights
from supervisor.sandbox.cgroups import Leaf

log = logging.getLogger("corral")

Key = tuple[int, str]  # (policy_id, workdir)
LeafFactory = Callable[[Policy], tuple[Leaf | None, list[str], list[tuple[str, str]]]]


class Stub:
    """A confined sandbox waiting for its command, with the cgroup leaf it already sits in."""

    __slots__ = (
        "absent",
        "cg_enforced",
        "cg_missing",
        "ctl",
        "fingerprint",
        "leaf",
        "listener",
        "mount_generation",
        "nogit",
        "pid",
        "pidfd",
        "recheck",
        "status",
    )

    def __init__(
        self,
        pid: int,
        pidfd: int,
        status: StatusReader,
        ctl: socket.socket,
        leaf: Leaf | None,
        cg_enforced: list[str],
        cg_missing: list[tuple[str, str]],
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.status = status
        self.ctl = ctl
        self.leaf = leaf
        self.cg_enforced = cg_enforced
        self.cg_missing = cg_missing
        self.fingerprint: tuple[object, ...] = ()
        #: The fingerprint's inputs, re-checkable on the event loop (forkserver/_recheck.py), or None.
        self.recheck: Recheck | None = None
        #: Network mode "proxy": the proxy's listening socket, sent by the init on `ctl` before its R.
        self.listener: socket.socket | None = None
        #: The protected paths missing when it was cloned (the reply's `absent`): the supervisor uses it only
        #: while the paths its fingerprint covers (the protected ones) are as they were then.
        self.absent: tuple[tuple[str, str], ...] = ()
        #: The writable roots without a `.git` when its view was built (the reply's `nogit`).
        self.nogit: tuple[str, ...] = ()
        #: The host's mount table's generation (mounts.MountTable) before its view was planned.
        self.mount_generation = -1

    def hand_over(self, request: SpawnRequest, fds: list[int]) -> bool:
        """Send the command of `request` and its fds to the sandbox (protocol.CTL_*); False when the
        sandbox is gone (then the caller discards it)."""
        if request.get("cmd_fd"):
            message = protocol.CTL_MEMFD
        else:
            message = protocol.CTL_INLINE + request.get("cmd", b"")
        try:
            self.ctl.sendmsg([message], rights(fds))
        except OSError:
            return False
        self.ctl.close()
        return True


class Prefork:
    """The ready and pending sandboxes, per (policy, workdir).

    per_key:  sandboxes kept ready or in the making for each key (0: none are built).
    max_keys: keys kept at once; the least recently used one's sandboxes go first.

    A key gets sandboxes built only from its second exit on: a policy used once (a one-off timeout, the
    CLI's single command) costs no build that nothing would use.
    """

    def __init__(
        self,
        forkserver: ForkServer,
        tg: TaskGroup,
        make_leaf: LeafFactory,
        per_key: int = 2,
        max_keys: int = 4,
    ) -> None:
        self._fs = forkserver
        self._tg = tg
        self._make_leaf = make_leaf
        self.per_key = per_key
        self.max_keys = max_keys
        self._ready: OrderedDict[Key, list[Stub]] = OrderedDict()
        self._building: dict[Key, int] = {}
        self._exits: OrderedDict[Key, int] = OrderedDict()  # exits per key, the most recent 64 keys
        #: Per key, the last fingerprint taken for a build, with its Recheck (shared: `Recheck.share`) and
        #: digest: the next build of the key reuses them while the Recheck holds (`_fingerprint_for`).
        self._taken: OrderedDict[Key, tuple[tuple[object, ...], Recheck, bytes]] = OrderedDict()
        self._closed = False
        #: A bind mount the host made since a sandbox's view was planned may show a denied object under a
        #: name that view does not hide (mounts._mount_aliases): such a sandbox is not used.
        self._mount_table = mounts.MountTable()

    async def take(self, policy: Policy, compiled: CompiledPolicy, cwd: str) -> Stub | None:
        """A confined sandbox for this policy and workdir whose view still matches the tree, or None (then
        the caller builds one on the spot; waiting for one still being built would take as long)."""
        key = self._key(compiled, cwd)
        if key is None:
            return None
        stub = self._pop_ready(key)
        if stub is None:
            return None
        return await self.fresh(stub, compiled, cwd)

    async def fresh(self, stub: Stub, compiled: CompiledPolicy, cwd: str) -> Stub | None:
        """`stub` if the paths its view depends on are as they were when it was built; else None (it is
        discarded). Taken off the pool already: discarded, not leaked, on cancellation too. Told on the loop
        when the stub's Recheck holds (no worker-thread hop), else by the fingerprint in a worker thread."""
        recheck, stub.recheck = stub.recheck, None
        try:
            if stub.mount_generation != self._mount_table.generation():
                fresh = False
            elif recheck is not None and recheck.unchanged():
                fresh = True
            else:
                fresh = await _fingerprint(_mounts(compiled), cwd) == stub.fingerprint
        except BaseException:  # off the list now: never leave it unreaped
            self.discard(stub)
            raise
        finally:
            if recheck is not None:
                recheck.close()
        if not fresh:
            self.discard(stub)
            return None
        return stub

    def refill(self, policy: Policy, compiled: CompiledPolicy, cwd: str) -> None:
        """Start building sandboxes for this policy and workdir until `per_key` are ready or being
        built. Called when a child of that key has exited, so that the build does not compete for the CPU
        with the child it would follow."""
        key = self._key(compiled, cwd)
        if key is None:
            return
        self._exits[key] = exits = self._exits.pop(key, 0) + 1
        if len(self._exits) > 64:
            self._exits.popitem(last=False)
        if exits < 2:
            return
        missing = self.per_key - len(self._ready.get(key, ())) - self._building.get(key, 0)
        if missing <= 0:
            return
        if key not in self._ready:
            self._ready[key] = []
            while len(self._ready) > self.max_keys:
                old, stubs = self._ready.popitem(last=False)
                for stub in stubs:
                    self.discard(stub)
                self._forget_taken(old)
        self._building[key] = self._building.get(key, 0) + missing
        for _ in range(missing):
            self._tg.start_soon(self._build, key, policy, compiled, cwd)

    def _key(self, compiled: CompiledPolicy, cwd: str) -> Key | None:
        """The pool key for this policy and workdir, or None when the pool is closed. (A workdir under
        /tmp, /run or /dev is kept visible by the init itself, at build time, like the rest of the view.)"""
        if self._closed:
            return None
        return compiled.policy_id, cwd

    def _pop_ready(self, key: Key) -> Stub | None:
        stubs = self._ready.get(key)
        if stubs is None:
            return None
        self._ready.move_to_end(key)
        while stubs:
            stub = stubs.pop(0)
            if not _exited(stub.pidfd):
                return stub
            self.discard(stub)
        return None

    async def _build(self, key: Key, policy: Policy, compiled: CompiledPolicy, cwd: str) -> None:
        """Build one sandbox for `key` and keep it ready."""
        stub: Stub | None = None
        try:
            stub = await self.build(policy, compiled, cwd)
        except Exception as err:  # a build is an optimisation: it must never fail the supervisor
            log.debug("pre-forked sandbox not built: %r", err)
        finally:
            self._building[key] -= 1
            if not self._building[key]:
                del self._building[key]
            if stub is not None:
                if self._closed or key not in self._ready:
                    self.discard(stub)
                else:
                    self._ready[key].append(stub)

    async def build(self, policy: Policy, compiled: CompiledPolicy, cwd: str) -> Stub | None:
        """A sandbox confined for this policy, workdir and a new cgroup leaf, not kept in the pool; None
        when the fork server started none, or the one started is unusable (discarded). Raises
        SandboxSetupError (no cgroup for a policy that needs one, the fork server gone)."""
        prepared = _mounts(compiled)
        # Errors (no cgroup for a policy that needs one, the fork server gone) are the request's own spawn's
        # to report; _build only logs them. The leaf's mkdirs run here, on the loop, as a request's do: a
        # worker-thread hop for them cost the loop more (waking the worker: ~0.09 ms under load) than the
        # mkdirs themselves save it, and more CPU in all.
        leaf, cg_enforced, cg_missing = self._make_leaf(policy)
        generation = self._mount_table.generation()
        before, recheck, view = await self._fingerprint_for((compiled.policy_id, cwd), prepared, cwd)
        try:
            reply, fds = await self._fs.prefork(
                cwd,
                leaf.placement_files if leaf is not None else [],
                compiled.policy_id,
                compiled.payload,
                view,
            )
        except BaseException:
            if leaf is not None:
                self._tg.start_soon(_remove_leaf_later, leaf)
            if recheck is not None:
                recheck.close()
            raise
        if fds is None:
            if leaf is not None:
                self._tg.start_soon(_remove_leaf_later, leaf)
            if recheck is not None:
                recheck.close()
            return None
        pidfd, status_fd, ctl_fd = fds
        stub = Stub(
            reply["pid"],
            pidfd,
            StatusReader(status_fd),
            socket.socket(fileno=ctl_fd),
            leaf,
            cg_enforced,
            cg_missing,
        )
        stub.recheck = recheck
        stub.mount_generation = generation
        stub.absent = protocol.absent_pairs(reply)
        stub.nogit = protocol.nogit_roots(reply)
        try:
            if "error" in reply:
                raise _Unusable
            rec = await stub.status.next()
            if rec is None or rec[0] != READY or not await self._still(stub, prepared, cwd, before):
                raise _Unusable
            if compiled.payload["ns"]["proxy"]:
                try:
                    stub.listener = take_listener(stub.ctl)  # sent before R: there by now
                except BlockingIOError:
                    stub.listener = None
                if stub.listener is None:
                    raise _Unusable
        except BaseException as err:
            self.discard(stub)
            if isinstance(err, _Unusable):
                return None
            raise
        stub.fingerprint = before
        return stub

    async def _fingerprint_for(
        self, key: Key, prepared: mounts.Prepared | None, cwd: str
    ) -> tuple[tuple[object, ...], Recheck | None, bytes]:
        """The fingerprint a build of `key` starts from, with its Recheck (the caller's to close) and its
        digest: those of the key's last build, on the loop, while their Recheck holds (then the paths'
        fingerprint is what it was: the Recheck's guarantee, whenever it is asked), without a worker-thread
        hop (about 50 us of the loop's CPU) and a fingerprint and record in the thread (about 115 us here);
        else taken in a worker thread (`_take`), and kept for the next build of the key. Cancellation: as
        `_take`'s."""
        kept = self._taken.get(key)
        if kept is not None:
            if kept[1].unchanged():
                self._taken.move_to_end(key)
                return kept[0], kept[1].share(), kept[2]
            self._forget_taken(key)
        fingerprint, recheck, view = await _take(prepared, cwd)
        if recheck is not None and not self._closed:
            self._forget_taken(key)
            self._taken[key] = (fingerprint, recheck.share(), view)
            while len(self._taken) > self.max_keys:
                self._forget_taken(next(iter(self._taken)))
        return fingerprint, recheck, view

    def _forget_taken(self, key: Key) -> None:
        kept = self._taken.pop(key, None)
        if kept is not None:
            kept[1].close()

    @staticmethod
    async def _still(
        stub: Stub, prepared: mounts.Prepared | None, cwd: str, before: tuple[object, ...]
    ) -> bool:
        """Whether the fingerprint is still `before` now that the sandbox is built: on the loop when its
        Recheck holds; else in a worker thread (and the Recheck, which no longer holds, is dropped)."""
        if stub.recheck is not None:
            if stub.recheck.unchanged():
                return True
            stub.recheck.close()
            stub.recheck = None
        return await _fingerprint(prepared, cwd) == before

    def discard(self, stub: Stub) -> None:
        """Kill an unused sandbox; a task reaps it and removes its leaf."""
        if stub.recheck is not None:
            stub.recheck.close()
            stub.recheck = None
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(stub.pidfd, signal.SIGKILL)
        stub.ctl.close()
        stub.status.close()
        if stub.listener is not None:
            stub.listener.close()
        self._tg.start_soon(_reap_and_remove, stub.pid, stub.pidfd, stub.leaf)

    def close(self) -> None:
        """Discard every ready sandbox; those still being built are discarded when done."""
        self._closed = True
        for stubs in self._ready.values():
            for stub in stubs:
                self.discard(stub)
        self._ready.clear()
        for key in list(self._taken):
            self._forget_taken(key)
        self._mount_table.close()


def _mounts(compiled: CompiledPolicy) -> mounts.Prepared | None:
    """The compiled policy's mount plan (None: no mount namespace)."""
    return compiled.payload["mounts"]


async def _take(
    prepared: mounts.Prepared | None, cwd: str
) -> tuple[tuple[object, ...], Recheck | None, bytes]:
    """_recheck.take (the fingerprint and its Recheck, which holds fds) in a worker thread, for the same
    reasons as `_fingerprint`, and the fingerprint's digest (for the fork server: PreforkRequest's `view`).
    Cancellation waits for the thread (bounded work), so that the Recheck is returned and its owner closes
    it, never abandoned with its fds open."""
    return await anyio.to_thread.run_sync(_take_digest, prepared, cwd)


def _take_digest(
    prepared: mounts.Prepared | None, cwd: str
) -> tuple[tuple[object, ...], Recheck | None, bytes]:
    fingerprint, recheck = _recheck.take(prepared, cwd)
    return fingerprint, recheck, mounts.digest(fingerprint)


async def _fingerprint(prepared: mounts.Prepared | None, cwd: str) -> tuple[object, ...]:
    """mounts.fingerprint in a worker thread: it looks into writable roots (lstat, .git/config, the
    .git/modules walk), where a sandbox may have planted something slow to look at; the event loop, which
    enforces every other child's limits, must never wait on that. (Bounded and non-blocking as it is, a
    10,000-entry walk still costs milliseconds.) Cancellation: abandons the thread's result."""
    return await anyio.to_thread.run_sync(mounts.fingerprint, prepared, cwd, abandon_on_cancel=True)


class _Unusable(Exception):
    pass


def _exited(pidfd: int) -> bool:
    """Whether the process behind `pidfd` has exited (pidfds poll readable then); True when that cannot
    be told (the sandbox is then discarded, not used)."""
    try:
        return readable(pidfd)
    except (OSError, ValueError):
        return True


async def _reap_and_remove(pid: int, pidfd: int, leaf: Leaf | None) -> None:
    """Reap a killed sandbox (our child: CLONE_PARENT), then remove its leaf."""
    with anyio.CancelScope(shield=True):
        try:
            # WNOHANG, in a loop: a readiness report can be spurious (see Child._collect), and a blocking
            # waitid would then hold the event loop until the sandbox is gone.
            while os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is None:  # noqa: ASYNC222
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        if leaf is not None:
            await _remove_leaf_later(leaf)


async def _remove_leaf_later(leaf: Leaf) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(SandboxSetupError, OSError):
        await anyio.to_thread.run_sync(leaf.remove_reaped)
