"""The Supervisor: many sandboxed children in one anyio task group."""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import logging
import math
import os
import resource
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Literal

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from policies import EnvPolicy, Policy, PolicyError, filter_environment, profiles
from policies._commands import CommandDecision, CommandRules
from supervisor import _gitscan, _protectscan, _rules
from supervisor._child import Child
from supervisor._devnull import open_devnull
from supervisor._errors import (
    CommandFailedError,
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxSetupError,
    SupervisorClosedError,
    SupervisorRunningError,
)
from supervisor._monitor import (
    DISK_INTERVAL,
    FULL_EVERY,
    Enforcer,
    disk_sample,
    io_written,
    sample,
    sample_all,
    sample_due,
)
from supervisor._observing import Observing
from supervisor._plan import CompiledPolicy, SharedParts, compile_policy
from supervisor._proxy import ChildProxy, ProxyConfig, host_interfaces, receive_listener
from supervisor._rules import Approver
from supervisor._spawnfds import DEVNULL, PIPE, SpawnFds, StdioArg
from supervisor._stdio_files import StdioFiles, StdioShield, close_fds
from supervisor._types import ChildStats, Denial, Result, Rule, Violation
from supervisor.forkserver import protocol
from supervisor.forkserver.client import ForkServer, StatusReader
from supervisor.forkserver.prefork import Prefork
from supervisor.forkserver.protocol import FailureRecord, SpawnRequest, absent_pairs, nogit_roots
from supervisor.sandbox._ops import EncodedEnv, encode_command, encode_env
from supervisor.sandbox.cgroups import CgroupManager, CgroupStats, Leaf
from supervisor.sandbox.cgroups._notify import Notifiers
from supervisor.sandbox.probe import KernelCaps

log = logging.getLogger("corral")

#: Warning lines one run's git scan logs at most (one per path), then one line for the rest.
_QUARANTINE_LINES = 20


#: Bytes of each output stream kept by `run` when the policy sets no output limit.
DEFAULT_CAPTURE = 1 << 20

#: Compiled policies kept, the least recently used evicted first (the fork server is told to forget it:
#: each costs ~12 kB here and ~20 kB there, and every new workdir is a new policy). A policy evicted and
#: used again is compiled again (~0.1 ms: its seccomp filter is shared, see SharedParts).
MAX_COMPILED = 256


@dataclass(slots=True)
class _Sandbox:
    """A started sandbox, by either path: its init (pid, pidfd, status pipe), its cgroup leaf with the
    cgroup layers enforced and missing, and the fork server's error when it could not finish the setup
    (the init then exits; its watcher reaps it)."""

    pid: int
    pidfd: int
    status: StatusReader
    leaf: Leaf | None
    cg_enforced: list[str]
    cg_missing: list[tuple[str, str]]
    error: FailureRecord | None = None
    #: Network mode "proxy", a pre-forked sandbox: the proxy's listening socket it made (else the init of
    #: a sandbox built now sends it on SpawnFds' proxy channel).
    listener: socket.socket | None = None
    #: The protected paths missing before it was cloned, as (root, relative path) (Reply's `absent`).
    absent: tuple[tuple[str, str], ...] = ()
    #: The writable roots without a `.git` when its view was built (Reply's `nogit`).
    nogit: tuple[str, ...] = ()


class _Slot:
    """A concurrency slot held on behalf of one child, released exactly once."""

    __slots__ = ("released",)

    def __init__(self) -> None:
        self.released = False

    def release(self, limiter: anyio.CapacityLimiter) -> None:
        if not self.released:
            self.released = True
            limiter.release_on_behalf_of(self)


class _EnvCache:
    """The environment a child gets (filtered of secrets, encoded for the init), per environment policy,
    computed again only when the caller's os.environ has changed since (filtering and encoding ~35 names
    took ~115 us per spawn; a cache hit takes ~1 us)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[EnvPolicy, bool], tuple[dict[bytes, bytes], EncodedEnv]] = {}

    def get(self, policy: Policy) -> EncodedEnv:
        """The child's environment under `policy`. Raises ValueError on an embedded NUL."""
        data = getattr(os.environ, "_data", None)  # CPython's os.environ keeps its encoded items here
        key = (policy.environment, policy.network.mode == "proxy")  # proxy: its variables are added
        hit = self._cache.get(key)
        if hit is not None and isinstance(data, dict) and hit[0] == data:
            return hit[1]
        env = filter_environment(policy, os.environ)
        encoded = encode_env({os.fsencode(k): os.fsencode(v) for k, v in env.items()})
        if isinstance(data, dict):
            if len(self._cache) >= 64:  # bounded: a caller generating policies must not grow it forever
                self._cache.clear()
            self._cache[key] = (dict(data), encoded)
        return encoded


@dataclass(frozen=True, slots=True)
class Event:
    """A lifecycle event: `started` (the command is running), `violation` (a limit was broken; the child
    is being killed unless the kernel held it), `denied` (a layer refused something new: `denial` is set,
    with count 1; the Result has the folded counts), `exited` (reaped; `result` is set), and, only when
    command rules are in use, `decision` (the rules decided a command before it started: `decision` is set,
    `child` is None; `approved` is True or False when a `prompt` decision was put to the approver)."""

    kind: Literal["started", "violation", "denied", "exited", "decision"]
    child: Child | None
    at: float
    result: Result | None = None
    violation: Violation | None = None
    denial: Denial | None = None
    decision: CommandDecision | None = None
    approved: bool | None = None


class Supervisor:
    """Supervises sandboxed children. Use as ``async with Supervisor() as sup:``.

    Leaving the block, normally, by an error or by cancellation, kills every child still running (the
    whole pid namespace and cgroup of each) and reaps it before returning. `max_concurrency` bounds the
    children alive at once; further `start`/`run` calls wait their turn in FIFO order.

    cgroups: give each child its own cgroup (memory, cpu and pids limits enforced by the kernel, exact usage,
             whole-tree kill). When no cgroup can be had (an ordinary user without a delegated subtree), the
             limits fall back to rlimits and supervisor sampling for `best_effort` policies; other policies
             that set memory/cpus/pids are refused.
    cgroup_delegate: a delegated cgroup to create children under (for ordinary users; see docs/cgroups.md).
    monitor_interval: seconds between samples of every child (cgroup files; psutil where needed).
    prefork: sandboxes kept built and confined ahead of time for each (policy, workdir) that has run more
             than once, so that its next command starts in ~1 ms of hand-over (docs/architecture.md,
             "Pre-forked sandboxes"); 0 builds none (each child's sandbox is then built at its request).
    rules:   command rules (policies.CommandRules, `load_rules`) every command is decided by before it
             starts (docs/rules.md); a call's own `rules=` apply as well, the stricter decision winning.
    approver: an async callable given the CommandDecision of a `prompt` command, returning True to run it;
             without one, a `prompt` command is refused like a forbidden one.
    observe_denials: run the denial observer (a root supervisor only: one BPF program on the kernel's
             syscall-exit tracepoint reporting the mount view's, Landlock's and RLIMIT_NOFILE's refusals;
             docs/denials.md). It costs every syscall on the host ~0.1 us while the supervisor runs;
             False starts none, and those layers are then listed in `Result.denials_unobservable`.
    reuse_cgroups: keep a reaped child's cgroup leaf, when it is provably empty and clean, for the next child
             (cgroup v1; docs/cgroups.md, "Reused leaves"), instead of an rmdir and a mkdir per child. A later
             child can read earlier ones' cumulative memory.stat and cpuacct.stat counters in it
             (docs/security.md, "Reused cgroup leaves"); False makes a new leaf for every child.
    """

    def __init__(
        self,
        max_concurrency: int = 64,
        *,
        capture_limit: int = DEFAULT_CAPTURE,
        cgroups: bool = True,
        cgroup_delegate: str | None = None,
        monitor_interval: float = 0.25,
        prefork: int = 2,
        rules: CommandRules | None = None,
        approver: Approver | None = None,
        observe_denials: bool = True,
        reuse_cgroups: bool = True,
    ) -> None:
        _check_options(
            max_concurrency, capture_limit, cgroups, cgroup_delegate, monitor_interval, prefork, rules
        )
        if not isinstance(observe_denials, bool):
            raise TypeError(f"observe_denials must be True or False, not {observe_denials!r}")
        if not isinstance(reuse_cgroups, bool):
            raise TypeError(f"reuse_cgroups must be True or False, not {reuse_cgroups!r}")
        self._reuse_cgroups = reuse_cgroups
        self.rules = rules
        self.approver = approver
        self.observe_denials = observe_denials
        self.max_concurrency = max_concurrency
        self.capture_limit = capture_limit
        self.monitor_interval = monitor_interval
        self.prefork = prefork
        self._use_cgroups = cgroups
        self._cgroup_delegate = cgroup_delegate
        self._cgroups: CgroupManager | None = None
        self._forkserver: ForkServer | None = None
        self._trash: MemoryObjectSendStream[Leaf] | None = None
        self._devnull = -1
        #: The files given as stdio, reopened out of the commands' reach (supervisor/_stdio_files.py).
        self._shield: StdioShield | None = None
        self._prefork: Prefork | None = None
        #: Directory listings of the post-run git scans (supervisor/_gitscan.py), kept between runs.
        self._listings = _gitscan.Listings()
        #: The children's OOM notifiers, polled by the sampler (cgroups/_notify.py); made by __aenter__.
        self._oom: Notifiers[Child] | None = None
        #: The syscall-exit observer (mount view, Landlock, RLIMIT_NOFILE refusals), or why none.
        self._observing = Observing()
        self._tg: TaskGroup | None = None
        self._caps: KernelCaps | None = None
        self._compiled: OrderedDict[Policy, CompiledPolicy] = OrderedDict()  # LRU, MAX_COMPILED
        self._live_ids: set[int] = set()  # the policy ids of _compiled, which the fork server keeps
        self._shared = SharedParts()
        self._compiling: dict[Policy, anyio.Event] = {}  # first uses being compiled, by policy
        self._children: set[Child] = set()
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._ids = itertools.count(1)
        self._enforcer = Enforcer()
        self._env = _EnvCache()
        self._subscribers: list[MemoryObjectSendStream[Event]] = []
        #: Handles given out whose pipes are still open: leaving the block closes what their callers did not.
        #: A handle leaves the set when its streams are closed (Child.aclose).
        self._handles: set[Child] = set()
        #: Warnings said once per supervisor: no usable cgroup, and each set of missing cgroup limits.
        self._said_no_cgroup = False
        self._said_missing: set[tuple[str, ...]] = set()
        #: Totals since start, for exporters: started, exited by outcome, violations by kind.
        self.totals: Counter[str] = Counter()
        #: What every child's network proxy shares (network mode "proxy"; supervisor/_proxy.py): the
        #: resolver, the host's own addresses (refreshed at most every minute), timeouts and the connection
        #: bound. Tests replace `proxy.resolver` with `_proxy.static_resolver` to send names to loopback.
        self.proxy = ProxyConfig()
        self._own_addresses_at = -math.inf

    @property
    def caps(self) -> KernelCaps:
        """What this kernel offers, as probed by the fork server at start."""
        if self._caps is None:
            raise SupervisorClosedError("the supervisor is not running")
        return self._caps

    @property
    def cgroups(self) -> CgroupManager | None:
        """The cgroup manager, when cgroups are in use and at least one controller is usable."""
        return self._cgroups if self._cgroups is not None and self._cgroups.available else None

    @property
    def cgroup_status(self) -> str:
        """One line: the cgroup layout and controllers in use, or why none is usable and what to do."""
        mgr = self._cgroups
        if mgr is None:
            return (
                "not used (Supervisor(cgroups=False), --no-cgroup)" if not self._use_cgroups else "not open"
            )
        kind = mgr.layout.mode
        parts = []
        if mgr.available:
            used = ", ".join(f"{c} (v{v})" for c, v in sorted(mgr.controllers.items()))
            parts.append(f"usable: {used}")
        if mgr.unavailable:
            parts.append(f"unusable: {mgr.brief}; to fix: {mgr.fix}")
        return (f"{kind} layout; " if kind else "") + "; ".join(parts)

    @property
    def children(self) -> frozenset[Child]:
        """The children alive now."""
        return frozenset(self._children)

    async def __aenter__(self) -> Supervisor:
        if self._tg is not None or self._forkserver is not None:
            raise SupervisorRunningError(
                "this Supervisor is already running: enter it once (`async with sup:`), or make another"
            )
        # The denial observer's loader first (from this thread too: its PDEATHSIG), so that its loading
        # overlaps the fork server's start and the cgroups' opening; waited for below.
        self._observing.launch(self.observe_denials)
        fs = ForkServer()
        # Started from this (the event loop's) thread: the children's PDEATHSIG is tied to it.
        try:
            fs.start()
        except BaseException:
            self._observing.abort()
            raise
        fs.live = self._live_ids  # policies evicted from _compiled are sent once, not kept there
        _raise_nofile()  # after the fork server started: children keep the caller's usual limit
        self._forkserver = fs
        #: One /dev/null for every DEVNULL stdio (the init gets it by SCM_RIGHTS, as any other fd).
        # For a root caller through a read-only copy of its mount: a sandbox that is host uid 0 could
        # otherwise chmod the host's /dev/null through it (_devnull).
        self._devnull = open_devnull(os.O_RDWR)
        self._shield = StdioShield(self._devnull)
        self._caps = KernelCaps.from_dict(fs.caps_dict)
        try:
            if self._use_cgroups:
                mgr = CgroupManager() if self._reuse_cgroups else CgroupManager(pool=0)
                # Also removes the cgroups of a supervisor that died (SIGKILL) before cleaning up.
                await anyio.to_thread.run_sync(partial(mgr.open, "corral", delegate=self._cgroup_delegate))
                self._cgroups = mgr
                if not mgr.available:
                    # Said when it matters, once: when a policy asks for a limit only a cgroup holds
                    # (_leaf_for). A run that asks for none needs no word about it.
                    log.debug("cgroups unavailable: %s", mgr.reason)
            self._oom = Notifiers()
            tg = anyio.create_task_group()
            await tg.__aenter__()
        except BaseException:
            if self._oom is not None:
                self._oom.close()
                self._oom = None
            fs.close()
            self._forkserver = None
            os.close(self._devnull)
            self._devnull = -1
            self._observing.abort()
            raise
        self._tg = tg
        await self._observing.start(tg, fs.server_pid)
        fs.on_restart = self._observing.spawner  # a replaced fork server's sandboxes are watched too
        fs.start_soon = tg.start_soon  # reaps a dead fork server and the init it left unanswered
        tg.start_soon(fs.watchdog)
        self._prefork = Prefork(
            fs, tg, lambda policy: self._leaf_for(policy, f"c{next(self._ids)}"), per_key=self.prefork
        )
        tg.start_soon(self._monitor)
        # Leaves of exited children, removed in batches off the loop (what is left when the supervisor
        # closes, CgroupManager.close removes).
        self._trash, trash = anyio.create_memory_object_stream[Leaf](math.inf)
        tg.start_soon(self._remove_leaves, trash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            # Kill first: the watcher tasks then reap every child, and the pool's tasks every unused
            # pre-forked sandbox, while the task group exits.
            if self._prefork is not None:
                self._prefork.close()
            for child in list(self._children):
                child.kill()
            assert self._tg is not None
            self._tg.cancel_scope.cancel()  # the monitor; watchers reap under a shield
            try:
                return await self._tg.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                # The watcher tasks do not fail; a group holding only the body's own exception is the
                # task group's wrapping of it, and callers should be able to `except` the original.
                if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                    raise exc from exc.__cause__
                raise
        finally:
            self._tg = None
            self._prefork = None
            if self._trash is not None:
                self._trash.close()
                self._trash = None
            for send in self._subscribers:
                send.close()
            self._subscribers.clear()
            for handle in list(self._handles):
                handle._close_streams()
            self._handles.clear()
            if self._forkserver is not None:
                self._forkserver.close()
                self._forkserver = None
            self._listings.close()  # the fds its snapshots hold
            if self._oom is not None:
                self._oom.close()
                self._oom = None
            self._observing.close()
            if self._shield is not None:
                self._shield.close()
                self._shield = None
            if self._devnull >= 0:
                os.close(self._devnull)
                self._devnull = -1
            if self._cgroups is not None:
                mgr, self._cgroups = self._cgroups, None
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(mgr.close)

    def compile(self, policy: Policy) -> CompiledPolicy:
        """Compile (and cache) `policy` for this kernel. Raises SandboxSetupError (fail closed)."""
        compiled = self._compiled.get(policy)
        if compiled is None:
            compiled = self._remember(policy, _compile_checked(policy, self.caps, self._shared))
        return compiled

    def _remember(self, policy: Policy, compiled: CompiledPolicy) -> CompiledPolicy:
        """Cache `compiled` for `policy` (the one cached already wins: one id per policy), evicting the least
        recently used policies beyond MAX_COMPILED; the fork server forgets them with the next request."""
        kept = self._compiled.setdefault(policy, compiled)
        if kept is compiled:
            self._live_ids.add(compiled.policy_id)
            while len(self._compiled) > MAX_COMPILED:
                try:
                    _old, evicted = self._compiled.popitem(last=False)
                except KeyError:  # emptied by another thread meanwhile
                    break
                self._live_ids.discard(evicted.policy_id)
                if self._forkserver is not None:
                    self._forkserver.forget(evicted.policy_id)
        return kept

    async def _compiled_for(self, policy: Policy) -> CompiledPolicy:
        """The compiled policy, compiled off the event loop at its first use. Concurrent first uses of
        one policy share one compilation (and so one policy id, one pool of pre-forked sandboxes):
        the first compiles, the others wait for it on an Event and then find it cached; if it
        failed, the next waiter tries in turn (and fails alike: compile errors are deterministic).
        Raises SandboxSetupError. Cancellation while waiting leaves the compilation to the others."""
        while True:
            compiled = self._compiled.get(policy)
            if compiled is not None:
                return compiled
            pending = self._compiling.get(policy)
            if pending is None:
                break
            await pending.wait()
        pending = self._compiling[policy] = anyio.Event()
        try:
            # pyseccomp compiles off the event loop; the worker thread is not abandoned on
            # cancellation, so the result is cached for the waiters even then.
            compiled = await anyio.to_thread.run_sync(_compile_checked, policy, self.caps, self._shared)
            return self._remember(policy, compiled)
        finally:
            del self._compiling[policy]
            pending.set()

    @contextlib.contextmanager
    def subscribe(self, max_buffer: int = 1000) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """Lifecycle events from now on, as an anyio receive stream (``with sup.subscribe() as events:
        async for ev in events: ...``). A subscriber that falls `max_buffer` events behind loses the
        newest ones rather than slowing the supervisor; the stream ends when the supervisor closes."""
        send, receive = anyio.create_memory_object_stream[Event](max_buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(send)
            send.close()
            receive.close()

    async def _decide(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        call_rules: CommandRules | None,
        approver: Approver | None,
    ) -> CommandDecision | None:
        """The command rules' decision for `cmd` (None without rules): counted, emitted as a `decision`
        event, put to the approver when it is `prompt`. Raises CommandForbiddenError when the command may
        not run; the approver's errors and cancellation propagate (nothing was started)."""
        sets = [r for r in (self.rules, call_rules) if r is not None]

        def record(decision: CommandDecision, approved: bool | None) -> None:
            self.totals[f"decision:{decision.decision}"] += 1
            self._emit(Event("decision", None, time.monotonic(), decision=decision, approved=approved))

        return await _rules.decide(cmd, sets, approver if approver is not None else self.approver, record)

    def _emit(self, event: Event) -> None:
        for send in self._subscribers:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)

    async def start(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        *,
        policy: Policy | str | None = None,
        stdin: StdioArg = DEVNULL,
        stdout: StdioArg = PIPE,
        stderr: StdioArg = PIPE,
        name: str | None = None,
        pass_fds: Sequence[int] = (),
        rules: Sequence[Rule] | CommandRules = (),
        env: Mapping[str, str] | None = None,
        controlling_tty: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        approver: Approver | None = None,
    ) -> Child:
        """Start `cmd` (a sequence of arguments, never a string) confined by `policy`: a Policy, a built-in
        profile's name ("read-only", "workspace-write", "full-access": that profile on the current
        directory), or None for workspace-write on the current directory.

        stdin/stdout/stderr: PIPE (a stream on the Child), DEVNULL, None (inherit the supervisor's), or an
        open file/fd. `pass_fds` are passed on as fds 3, 4, ... `name` labels the child in events and
        metrics (keep it low-cardinality: a tool name). `rules` are extra kill rules checked at every
        sample, or command rules (CommandRules) deciding this command with the supervisor's own: `forbidden`
        raises CommandForbiddenError, `prompt` awaits `approver` (or the supervisor's), and an allowed
        command runs under its rule's profile or policy, if it names one (docs/rules.md). `env` is merged
        over the caller's environment before the policy's filter applies (so a secret-looking name
        given here is still dropped unless the policy passes or sets it). `cwd` is
        where the command starts, in the sandbox's view (relative: to the policy's workdir, the default);
        it is no part of the policy, so it takes the same pre-forked sandboxes.
        `controlling_tty`: `stdin` is a terminal the caller made for this command (a pty's slave, as
        `corral run --tty` does) and becomes the controlling terminal of the sandbox's session, with the
        command in its foreground (never give it a terminal that is another session's: the sandbox fails
        with SandboxSetupError, EPERM). Waits for a concurrency slot first; the policy's wall-clock
        timeout counts from then (the request for the sandbox: its setup counts). Close the handle
        (`await child.aclose()` or `async with child:`) to release its pipes; leaving the supervisor's
        block closes what is left.

        Raises TypeError for a string command, an unknown policy type or a bad `env`; PolicyError when
        the policy's workdir does not exist (checked at its first use); SandboxSetupError when a layer
        cannot be applied (the command did not run); CommandNotFoundError (127) or
        CommandNotExecutableError (126); CommandForbiddenError (nothing started) when the command rules
        refuse it. On cancellation while starting (or while the approver is asked), the child, if any, is
        killed and reaped.
        """
        if self._tg is None or self._forkserver is None:
            raise SupervisorClosedError("the supervisor is not running")
        _check_command(cmd)
        policy = _resolve_policy(policy)
        kills, call_rules = _rules.split_rules(rules)  # kill rules, command rules
        decision = await self._decide(cmd, call_rules, approver)
        if decision is not None:
            chosen = decision.policy_for(policy)
            if chosen is not policy:  # the rule's own sandbox: not for a program a sandbox could have written
                await _rules.check_planted(decision, policy, chosen, env, cwd)
            policy = chosen
        return await self._start_decided(
            cmd, policy, decision, stdin, stdout, stderr, name, pass_fds, kills, env, cwd, controlling_tty
        )

    async def _start_decided(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        policy: Policy,
        decision: CommandDecision | None,
        stdin: StdioArg,
        stdout: StdioArg,
        stderr: StdioArg,
        name: str | None,
        pass_fds: Sequence[int],
        kill_rules: Sequence[Rule],
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        controlling_tty: bool,
    ) -> Child:
        """`start` once the command rules decided `policy`: check `env` and `cwd`, compile the policy, take
        a concurrency slot for the child and spawn it. Raises and cancels as `start` says; the slot is
        released on any failure."""
        environment = None if env is None else _merged_env(policy, env)
        where = _check_cwd(cwd)
        compiled = await self._compiled_at_start(policy)
        # The slot belongs to the child, not to this task: the watcher task releases it after reaping.
        slot = _Slot()
        await self._limiter.acquire_on_behalf_of(slot)
        try:
            child = await self._spawn(
                cmd,
                policy,
                compiled,
                stdin,
                stdout,
                stderr,
                name,
                pass_fds,
                slot,
                kill_rules,
                environment,
                controlling_tty,
                where=where,
                decision=decision,
            )
        except OSError as err:  # never a raw OSError out of start(): EMFILE and its kind are corral's
            slot.release(self._limiter)
            raise SandboxSetupError(
                "supervisor", "start the child", err.errno or 0, hint=f"{err}; raise RLIMIT_NOFILE if EMFILE"
            ) from err
        except BaseException:
            slot.release(self._limiter)  # unless the watcher of a failed child already did
            raise
        if child.stdin is not None or child.stdout is not None or child.stderr is not None:
            self._handles.add(child)
            child._forget = self._handles.discard
        child._sample = sample
        return child

    async def _compiled_at_start(self, policy: Policy) -> CompiledPolicy:
        """The compiled form of `policy`: the cached one (marked recently used), else compiled now.
        Raises what `_compiled_for` raises, and SandboxSetupError for an OSError (EMFILE) while compiling."""
        compiled = self._compiled.get(policy)
        if compiled is None:
            try:
                compiled = await self._compiled_for(policy)
            except OSError as err:  # EMFILE while compiling: corral's failure, typed
                raise SandboxSetupError(
                    "supervisor", "compile the policy", err.errno or 0, hint=f"{err}"
                ) from err
        else:
            with contextlib.suppress(KeyError):  # evicted by a compile in a worker thread meanwhile
                self._compiled.move_to_end(policy)
        return compiled

    def _leaf_for(
        self, policy: Policy, child_id: str
    ) -> tuple[Leaf | None, list[str], list[tuple[str, str]]]:
        """The child's cgroup, with the enforced and missing cgroup layers. Fails closed (SandboxSetupError)
        when the policy sets a kernel limit no cgroup can enforce, unless best_effort."""
        r = policy.resources
        wanted = [k for k, v in (("memory", r.memory), ("cpus", r.cpus), ("pids", r.pids)) if v is not None]
        mgr = self.cgroups
        if mgr is None:
            if self._cgroups is not None:
                why, fix = self._cgroups.brief, self._cgroups.fix
            else:
                why = "cgroups are off: Supervisor(cgroups=False), --no-cgroup"
                fix = "turn them on, or set best_effort (--best-effort) to fall back to rlimits and sampling"
            if wanted and not policy.best_effort:
                raise SandboxSetupError(
                    "cgroups",
                    f"enforce the {', '.join(wanted)} limit",
                    hint=f"no usable cgroup ({why}); {fix}",
                )
            if wanted and not self._said_no_cgroup:
                self._said_no_cgroup = True
                log.warning(
                    "no usable cgroup (%s): best_effort: %s limits fall back to rlimits and sampling",
                    why,
                    "/".join(wanted),
                )
            return None, [], [(f"cgroup_{k}", why) for k in wanted]
        # The v1 freezer is how a tree without a pid namespace is killed whole; with one, the init's death
        # takes the tree (the supervisor kills the init).
        leaf = mgr.create_leaf(child_id, r, freezer="pid_ns" not in self.compile(policy).enforced)
        try:
            if not policy.best_effort:
                leaf.require()
        except BaseException:
            self._discard_leaf(leaf)  # empty, but never an rmdir-retry on the loop
            raise
        enforced = ["cgroup"] + [f"cgroup_{k}" for k, ok in leaf.enforced.items() if ok]
        missing = [(f"cgroup_{k}", leaf.reasons.get(k, "")) for k, ok in leaf.enforced.items() if not ok]
        return leaf, enforced, missing

    async def _spawn(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        policy: Policy,
        compiled: CompiledPolicy,
        stdin: StdioArg,
        stdout: StdioArg,
        stderr: StdioArg,
        name: str | None,
        pass_fds: Sequence[int],
        slot: _Slot,
        rules: Sequence[Rule],
        environment: EncodedEnv | None = None,
        controlling_tty: bool = False,
        where: bytes | None = None,
        decision: CommandDecision | None = None,
    ) -> Child:
        """Start the sandbox (a pre-forked one for this policy and workdir, else one the fork server builds
        now), make its Child, and wait until the command runs. Raises as `start` says; on any failure or
        cancellation every fd made for the child is closed, its cgroup leaf removed, and a sandbox that
        was started is killed and reaped (by its watcher)."""
        assert self._prefork is not None
        t0 = time.monotonic()
        t0_ns = time.time_ns()  # the clock of file ctimes, for the post-run git scan
        cwd = policy.workdir or os.getcwd()
        if environment is None:
            environment = self._env.get(policy)
        command = encode_command([os.fsencode(a) for a in cmd], environment, where)
        request: SpawnRequest = {"cwd": cwd, "policy_id": compiled.policy_id}
        proxied = policy.network.mode == "proxy"
        stdio_files = None
        if self._shield is not None:
            slots = _slot_fds(stdin, stdout, stderr) + list(pass_fds)
            if any(fd >= 0 for fd in slots):
                # The files given as stdio or pass_fds, opened again out of the command's reach
                # (_stdio_files).
                stdio_files = await self._shield.protect_async(slots)
        with SpawnFds(self._devnull, stdio_files) as io:
            io.add_stdio(stdin, stdout, stderr, list(pass_fds))
            io.add_command(request, command)
            # A sandbox confined ahead of time for this policy and workdir takes just the command; else
            # the fork server builds one now (always for a controlling terminal, which is set up from the
            # plan's header).
            if proxied:
                await self._refresh_own_addresses()
            if controlling_tty:
                request["ctty"] = True
                sandbox = None
            else:
                sandbox = await self._from_prefork(policy, compiled, cwd, request, io.fds)
            if sandbox is None:
                sandbox = await self._from_fork_server(cmd, policy, compiled, request, io, proxied)
            child_stdin, child_stdout, child_stderr = io.streams()
            proxy_sock = io.take_proxy_channel()
            stdio_files = io.take_stdio_files()
        try:
            streams = (child_stdin, child_stdout, child_stderr)
            child = self._make_child(sandbox, policy, compiled, name, streams)
        except BaseException:
            if stdio_files is not None:
                stdio_files.close()
            raise
        if stdio_files is not None and stdio_files.missing:
            child.missing = (*child.missing, *stdio_files.missing)
        child.requested_at = t0
        child.requested_ns = t0_ns
        child.rules = tuple(rules)
        child.decision = decision
        child._then = partial(self._prefork.refill, policy, compiled, cwd)
        self._children.add(child)
        self._start_watchers(child, sandbox, policy, slot, proxy_sock, stdio_files)
        return await self._until_running(child, sandbox, cmd, policy)

    def _start_watchers(
        self,
        child: Child,
        sandbox: _Sandbox,
        policy: Policy,
        slot: _Slot,
        proxy_sock: socket.socket | None,
        stdio_files: StdioFiles | None = None,
    ) -> None:
        """Start the child's tasks in the supervisor's task group: its network proxy (network mode "proxy",
        on `proxy_sock`, our end of its channel), its watcher (which reaps it and releases `slot`) and, when
        the policy limits disk or /tmp, its disk watcher. `stdio_files` are settled when the child ends."""
        assert self._tg is not None
        if policy.network.mode == "proxy":
            child.proxy = ChildProxy(policy.network, self.proxy)
            child.proxy.on_denial = partial(self._note_denial, child)
            self._tg.start_soon(self._serve_proxy, child, sandbox.listener, proxy_sock)
        self._tg.start_soon(self._watch, child, slot, stdio_files)
        r = policy.resources
        if r.disk is not None or r.tmp_size is not None:
            self._tg.start_soon(self._watch_disk, child)

    def _make_child(
        self,
        sandbox: _Sandbox,
        policy: Policy,
        compiled: CompiledPolicy,
        name: str | None,
        streams: tuple[ByteSendStream | None, ByteReceiveStream | None, ByteReceiveStream | None],
    ) -> Child:
        """The Child of a started sandbox, with the layers in force (a best_effort policy's missing cgroup
        layers said once per missing set)."""
        leaf = sandbox.leaf
        if sandbox.cg_missing and policy.best_effort and leaf is not None:  # once per missing set
            said = tuple(k for k, _ in sandbox.cg_missing)
            if said not in self._said_missing:
                self._said_missing.add(said)
                log.warning("best_effort: %s", "; ".join(f"{k} ({why})" for k, why in sandbox.cg_missing))
        child = Child(
            sandbox.pid,
            sandbox.pidfd,
            sandbox.status,
            name=name,
            profile=policy.profile,
            enforced=compiled.enforced + tuple(sandbox.cg_enforced),
            missing=compiled.missing + tuple(sandbox.cg_missing),
            stdin=streams[0],
            stdout=streams[1],
            stderr=streams[2],
        )
        child.leaf = leaf
        child.policy = policy
        child.absent_protected = sandbox.absent
        child.nogit = sandbox.nogit
        child.unobservable = compiled.unobservable
        sc = compiled.payload["seccomp"]
        if sc is not None and isinstance(sc.get("names"), dict):
            child.syscall_names = sc["names"]  # type: ignore[assignment]
            child.on_denial = partial(self._note_denial, child)
        fs_pid = self._forkserver.server_pid if self._forkserver is not None else None
        self._observing.attach(child, sandbox.pid, partial(self._note_denial, child), fs_pid)
        return child

    async def _until_running(
        self, child: Child, sandbox: _Sandbox, cmd: Sequence[str | bytes | os.PathLike[str]], policy: Policy
    ) -> Child:
        """Wait for the watcher's first record: the command runs (X), or why not (E: the typed error).
        On failure or cancellation the child is killed (its watcher reaps it) and its streams closed."""
        try:
            if sandbox.error is not None:  # the fork server could not finish setting it up and killed it
                await child.wait()
                raise _setup_error(sandbox.error, cmd, policy)
            # The watcher's first record says whether the command is running (X) or why not (E).
            try:
                await child._started.wait()
            except BaseException:
                child.kill()  # the watcher reaps it
                raise
            first = child._first
            if first is None or first[0] != protocol.EXEC:
                await child.wait()
                if child.killed and child.violation is not None and child.violation.kind == "wall_time":
                    return child  # its timeout ran out during setup: a wall_time violation like any other
                raise _setup_error(first[1] if first else None, cmd, policy)
        except BaseException:
            child._close_streams()  # the caller never gets the Child: its pipe ends are ours to close
            raise
        return child

    async def _from_prefork(
        self, policy: Policy, compiled: CompiledPolicy, cwd: str, request: SpawnRequest, fds: list[int]
    ) -> _Sandbox | None:
        """The pre-forked path: a sandbox confined ahead of time for this policy and workdir, handed the
        command and `fds`; None when none is ready (or the one taken was gone: discarded)."""
        assert self._prefork is not None
        stub = await self._prefork.take(policy, compiled, cwd)
        if stub is None:
            return None
        if not stub.hand_over(request, fds):
            self._prefork.discard(stub)
            return None
        sandbox = _Sandbox(stub.pid, stub.pidfd, stub.status, stub.leaf, stub.cg_enforced, stub.cg_missing)
        sandbox.listener, stub.listener = stub.listener, None
        sandbox.absent = stub.absent
        sandbox.nogit = stub.nogit
        return sandbox

    async def _from_fork_server(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        policy: Policy,
        compiled: CompiledPolicy,
        request: SpawnRequest,
        io: SpawnFds,
        proxied: bool,
    ) -> _Sandbox:
        """The fork-server path: a cgroup leaf made now, and a sandbox the fork server builds in it (with
        `proxied`, its init sends the proxy's listening socket on a channel `io` makes and owns). Raises
        the typed setup error when no sandbox was started; removes the leaf on any failure."""
        assert self._forkserver is not None
        leaf, cg_enforced, cg_missing = self._leaf_for(policy, f"c{next(self._ids)}")
        try:
            request["cgroup_procs"] = leaf.placement_files if leaf is not None else []
            if proxied:
                io.add_proxy_channel(request)
            reply, pidfd, status_fd = await self._forkserver.spawn(
                request, compiled.policy_id, compiled.payload, io.fds
            )
            if pidfd is None or status_fd is None:
                raise _setup_error(reply.get("error"), cmd, policy)
        except BaseException:
            if leaf is not None:
                self._discard_leaf(leaf)
            raise
        sandbox = _Sandbox(reply["pid"], pidfd, StatusReader(status_fd), leaf, cg_enforced, cg_missing)
        sandbox.error = reply.get("error")
        sandbox.absent = absent_pairs(reply)
        sandbox.nogit = nogit_roots(reply)
        return sandbox

    async def _refresh_own_addresses(self) -> None:
        """The host's own addresses for the proxy, looked up again at most once a minute, off the loop."""
        now = time.monotonic()
        if now - self._own_addresses_at > 60:
            self._own_addresses_at = now
            own = await anyio.to_thread.run_sync(host_interfaces)
            self.proxy.own_addresses, self.proxy.own_networks = own

    async def _serve_proxy(
        self, child: Child, listener: socket.socket | None, proxy_sock: socket.socket | None
    ) -> None:
        """The child's proxy (network mode "proxy"): serve its listening socket (a pre-forked sandbox's, or
        the one its init sends on `proxy_sock`) until the child is done; then every proxy connection of
        the child is closed. Without a listener (the init failed before making it) there is nothing to
        serve, and the child's setup error is reported by its start."""
        assert child.proxy is not None
        with anyio.CancelScope() as scope:
            child._proxy_scope = scope
            try:
                if listener is None and proxy_sock is not None:
                    listener = await receive_listener(proxy_sock)
            finally:
                if proxy_sock is not None:
                    proxy_sock.close()
            if listener is not None and child.running:
                await child.proxy.serve(listener)
        if listener is not None:
            listener.close()

    def _discard_leaf(self, leaf: Leaf) -> None:
        """Remove the leaf of a sandbox that never became a Child, off the loop: a sandbox killed in it
        may still be exiting, and removal then kills the cgroup and retries rmdir for up to 2 s (in a
        worker thread, never on the event loop)."""
        if self._trash is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._trash.send_nowait(leaf)
                return
        if self._tg is not None:
            self._tg.start_soon(partial(anyio.to_thread.run_sync, _remove_leaf_batch, [leaf]))
            return
        _remove_leaf_batch([leaf])  # the supervisor is closing: CgroupManager.close removes what remains

    async def _watch(self, child: Child, slot: _Slot, stdio_files: StdioFiles | None = None) -> None:
        """Reap `child`, enforcing its wall-clock timeout. On cancellation (the supervisor is closing),
        kill it first; always reap; then take the final cgroup sample and remove the cgroup. The files
        given as stdio get their offsets and metadata back once it is reaped (`stdio_files`)."""
        timeout = child.policy.resources.timeout if child.policy is not None else None
        try:
            # The wall clock runs from the request for the sandbox, setup included, not from the exec
            # report: a loop slow to read that report (or a sandbox that never sends it) must not give
            # the command more time. A timeout that runs out during setup is a wall_time violation too.
            with anyio.CancelScope() as scope:
                if timeout is not None:
                    scope.deadline = anyio.current_time() + timeout - (time.monotonic() - child.requested_at)
                await child._reap(on_exec=partial(self._on_exec, child))
            if child.running:  # the wall-clock limit fired
                assert timeout is not None
                elapsed = round(time.monotonic() - child.requested_at, 3)
                child.kill_for(Violation("wall_time", timeout, elapsed))
                self._note_violation(child)
                with anyio.CancelScope(shield=True):
                    await child._reap()
            elif timeout is not None:
                self._ended_late(child, timeout)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                child.kill()
                if child.running:
                    await child._reap()
                if stdio_files is not None:
                    stdio_files.settle()
                await self._finish(child, slot)
                if stdio_files is not None:
                    self._discard_trees(stdio_files)
            raise
        with anyio.CancelScope(shield=True):
            if stdio_files is not None:
                stdio_files.settle()  # before wait() wakes: the caller finds its files as they were
            await self._finish(child, slot)
            if stdio_files is not None:
                self._discard_trees(stdio_files)

    def _discard_trees(self, stdio_files: StdioFiles) -> None:
        """Close the clones' tree fds of a child's stdio files off the loop (each waits for an RCU grace
        period: _stdio_files._clone_open), in the shield's closer thread."""
        trees = stdio_files.take_trees()
        if self._shield is not None:
            self._shield.discard(trees)
        else:  # the supervisor is closing
            close_fds(trees)

    def _ended_late(self, child: Child, timeout: float) -> None:
        """A command that ended past its wall-clock limit by the init's own clock, though the watcher saw
        its end only later (a stalled loop read both records at once): a wall_time violation all the
        same, as if killed at its limit. (Without the init's time, nothing is judged: the loop's delay
        must not be blamed on the command.)"""
        ex = child._exit
        if ex is None or ex.cmd_ended is None or child.violation is not None:
            return
        ran = ex.cmd_ended - child.requested_at
        if ran > timeout:
            child.violation = Violation("wall_time", timeout, round(ran, 3))
            child.killed = True
            self._note_violation(child)

    async def _watch_disk(self, child: Child) -> None:
        """For a child with a disk budget or a tmpfs size: every DISK_INTERVAL, its written bytes and tmpfs
        use (disk_written, tmp_used: a worker thread), and the kill when over (a `disk` violation). Faster
        than the sampler's round, because a writer fills a disk faster than memory: what it writes in one
        interval is the budget's overshoot. Ends when the child does."""
        while child.running:
            await anyio.sleep(DISK_INTERVAL)
            if not child.running or child.exec_at is None:
                continue
            s = await anyio.to_thread.run_sync(disk_sample, child)
            if child.running and child.violation is None:
                child.apply(self._enforcer.check_disk(child, *s))
                if child.violation is not None:
                    self._note_violation(child)
                    return

    def _on_exec(self, child: Child) -> None:
        """The command is running: count it, say so. Called by the watcher, so that `started` always
        precedes `exited`."""
        assert child.exec_at is not None
        child.spawn_latency_s = child.exec_at - child.requested_at
        self.totals["started"] += 1
        self._emit(Event("started", child, time.monotonic()))

    async def _finish(self, child: Child, slot: _Slot) -> None:
        """After the exit is final: the final sample (exact CPU, peak memory, OOM and pids.max counts), the
        verdict, the slot's release, the totals and the exited event, and then `wait()` wakes. Then, off the
        caller's path: reap the init if it is still exiting (it reported an empty sandbox first), queue
        the cgroup for removal (batched, off the loop), and start building the next sandbox for the
        policy. The supervisor's exit waits for all of it (what the batches left, CgroupManager.close
        removes)."""
        stats = None
        leaf = child.leaf
        try:
            if leaf is not None:
                stats = leaf.stats()
                self._judge_final(child, stats)
            self._judge_disk_final(child)
            await self._observing.settle(child)
            await self._after_run_git(child)
        finally:
            if child._proxy_scope is not None:
                child._proxy_scope.cancel()  # its connections end with it

            self._children.discard(child)
            self._enforcer.forget(child, len(child.rules))
            if self._oom is not None:
                if leaf is not None:
                    leaf.disarm()  # a sampler round still running registers nothing after the discard
                self._oom.discard(child)  # before its leaf, which owns the notifier, is removed
            slot.release(self._limiter)
            child._fold(stats)
            if child.exec_at is not None:  # it ran: a failed start never counted as started
                self._count_exit(child)
            child._done.set()
            if all(getattr(st, "_fd", None) is None for st in (child.stdin, child.stdout, child.stderr)):
                self._handles.discard(child)  # nothing left to close at exit: do not keep the Child
            await child._collect()
            if leaf is not None and self._trash is not None:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._trash.send_nowait(leaf)
            if child._then is not None and self._tg is not None:
                child._then()  # e.g. build the next sandbox for its policy, now that the CPU is free

    def _judge_final(self, child: Child, stats: CgroupStats) -> None:
        """The verdict on the final cgroup sample: a kernel OOM kill ends the child before the sampler sees
        it, and forks refused at pids.max are reported."""
        final = ChildStats(
            stats.memory_bytes, stats.memory_peak_bytes, stats.cpu_seconds, stats.pids, None,
            stats.oom_kills or 0, stats.pids_max_events or 0, time.monotonic(),
        )  # fmt: skip
        was_running_violation = child.violation
        # A kernel OOM kill ends the child before the sampler sees it: the final sample decides.
        child.last_stats = final
        child.apply(self._enforcer.check_final(child, final))
        if child.violation is not None and child.violation is not was_running_violation:
            self._note_violation(child)

    def _judge_disk_final(self, child: Child) -> None:
        """The disk budget against the final count, and SIGXFSZ (only with a disk or fsize limit)."""
        pol = child.policy
        if pol is not None and (pol.resources.disk is not None or pol.resources.fsize is not None):
            # Only with a disk/fsize limit: one /proc read (the init holds every process's write counts by
            # now; while its pidfd is open it is not reaped, so its pid is not reused) and the command's
            # wait status.
            before = child.violation
            unreaped = child._pidfd is not None
            written = io_written(child.pid) if pol.resources.disk is not None and unreaped else None
            child.apply(self._enforcer.check_disk_final(child, written, child._exit_signal()))
            if child.violation is not None and child.violation is not before:
                self._note_violation(child)

    async def _after_run_git(self, child: Child) -> None:
        """The post-run git scan (quarantined files), the protected paths the command created
        (_protectscan), and the protected configs the command tried to change, each said once. Shielded:
        completes even on cancellation."""
        pol = child.policy
        if (
            pol is not None
            and child.exec_at is not None
            and _gitscan.wanted(pol)
            and not self._listings.unchanged_since(pol, child.requested_ns)
        ):
            # What the command left in git repositories under its writable roots that would make the
            # host user's git run code is moved aside, and reported (supervisor/_gitscan.py). A bounded,
            # no-follow walk: off the loop; shielded, so that it completes even on cancellation. (Not
            # when a snapshot of a small tree, checked above on the loop, shows nothing changed: the
            # worker-thread hop cost more than the scan.)
            with anyio.CancelScope(shield=True):
                found = await anyio.to_thread.run_sync(
                    _gitscan.scan, pol, child.requested_ns, self._listings, child.nogit
                )
            child.quarantined = tuple(found)
            # Bounded: a sandbox chooses how many paths there are (one line each flooded the caller's
            # stderr, up to ~100,000 lines a run); `quarantined` keeps them all.
            for path, reason in found[:_QUARANTINE_LINES]:
                log.warning("git: %s: %s", path, reason)
            if len(found) > _QUARANTINE_LINES:
                log.warning(
                    "git: %d more paths moved aside or reported (the result's `quarantined`, --json's, lists "
                    "them all)",
                    len(found) - _QUARANTINE_LINES,
                )
        if child.absent_protected and child.exec_at is not None:
            # A protected path (outside .git) missing when the sandbox was cloned could not be bound
            # read-only: what the command created there is moved aside (supervisor/_protectscan.py). Off
            # the loop, a few lstats per path; shielded like the git scan.
            with anyio.CancelScope(shield=True):
                moved = await anyio.to_thread.run_sync(_protectscan.scan, child.absent_protected)
            child.quarantined += tuple(moved)
            for path, reason in moved[:_QUARANTINE_LINES]:
                log.warning("protected: %s: %s", path, reason)
        for path in child._exit.protected if child._exit is not None else ():
            log.warning(
                "git: %s: read-only in the sandbox (corral protects it): the command's change to it "
                "(git config, remote add, branch -u, submodule add) did not take effect; make it outside "
                "corral",
                path,
            )

    def _count_exit(self, child: Child) -> None:
        """The exit of a child that ran: its denials noted and counted, the totals, the exited event."""
        for denial in child.add_limit_denials():
            self._note_denial(child, denial)
        if child.proxy is not None:  # told as they came (on_denial); their repeats counted below
            for denial in child.proxy.denials:
                child.denials.add(denial)
        for denial in child.denials.items:  # the repeats, folded by the init, counted now
            self.totals[f"denied:{denial.layer}:{denial.operation}"] += denial.count - 1
        if child.denials.dropped > child.denials.dropped_observed:  # the observer's have no known layer
            self.totals["denied:seccomp:syscall"] += child.denials.dropped - child.denials.dropped_observed
        result = child.result()
        self.totals["exited"] += 1
        self.totals[f"exited:{result.outcome}"] += 1
        self._emit(Event("exited", child, time.monotonic(), result=result, violation=result.violation))

    async def _remove_leaves(self, trash: MemoryObjectReceiveStream[Leaf]) -> None:
        """Remove the leaves of reaped children, as many per worker-thread hop as have piled up within
        _TRASH_DELAY of the first: a hop wakes a sleeping worker thread (a futex wake and an interrupt to
        the other CPU, made while this loop holds the GIL), which under load cost ~0.09 ms of the loop's
        time per hop, one hop per child (py-spy --gil); no caller waits for a leaf's removal."""
        async with trash:
            async for leaf in trash:
                await anyio.sleep(_TRASH_DELAY)
                batch = [leaf]
                with contextlib.suppress(anyio.WouldBlock):
                    while True:
                        batch.append(trash.receive_nowait())
                await anyio.to_thread.run_sync(_remove_leaf_batch, batch)

    def _note_denial(self, child: Child, denial: Denial) -> None:
        """A new distinct denial: counted once now (its repeats at the exit) and told to subscribers."""
        self.totals[f"denied:{denial.layer}:{denial.operation}"] += 1
        self._emit(Event("denied", child, time.monotonic(), denial=denial))

    def _note_violation(self, child: Child) -> None:
        v = child.violation
        if v is not None:
            self.totals[f"violation:{v.kind}"] += 1
            self._emit(Event("violation", child, time.monotonic(), violation=v))

    async def _monitor(self) -> None:
        """The one sampler: every `monitor_interval`, one worker-thread hop samples the running children and
        the loop enforces limits on what came back. Every FULL_EVERY-th round samples every child fully
        (fd counts through psutil included); the rounds between only what each child's limits need live
        (supervisor/_monitor.py, `sample_due`)."""
        rounds = 0
        while True:
            await anyio.sleep(self.monitor_interval)
            children = [c for c in self._children if c.running and c.policy is not None]
            if not children:
                continue
            rounds += 1
            if rounds % FULL_EVERY == 1:  # every child, every value (fd counts included)
                samples = await anyio.to_thread.run_sync(sample_all, children, True, self._oom)
                due: Iterable[tuple[Child, ChildStats]] = zip(children, samples, strict=True)
            else:  # only what the children's limits need live
                due = await anyio.to_thread.run_sync(sample_due, children, self._oom)
            for child, s in due:
                if s.open_fds is None and child.last_stats is not None:
                    # fds are counted one round in four: carry the last count between counts.
                    s = s._replace(open_fds=child.last_stats.open_fds)
                before = child.violation
                child.last_stats = s
                child.apply(self._enforcer.check(child, s, child.rules))
                if child.violation is not None and child.violation is not before:
                    self._note_violation(child)

    async def run(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        *,
        policy: Policy | str | None = None,
        input: bytes | None = None,
        stdin: StdioArg | bytes = DEVNULL,
        stdout: StdioArg = PIPE,
        stderr: StdioArg = PIPE,
        name: str | None = None,
        rules: Sequence[Rule] | CommandRules = (),
        env: Mapping[str, str] | None = None,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        approver: Approver | None = None,
    ) -> Result:
        """Run `cmd` to completion and return its Result, with stdout/stderr captured: at most the policy's
        output limit in total (exceeding it kills the child: an `output` violation), else `capture_limit`
        bytes of each stream (the rest is drained and dropped; `*_truncated` says so). Memory stays bounded
        whatever the child writes. `input` (or `stdin` given as bytes, the same) is fed to the command's
        stdin, which is then closed.

        check: raise CommandFailedError (carrying the Result) when the command did not exit 0. The default
        is False, unlike anyio.run_process's True: a sandboxed command failing, or being killed for a
        limit, is the normal data of a tool call (an agent reads the Result), not an error of the caller.

        Raises like `start`; ValueError when both `input` and bytes `stdin` are given. On cancellation the
        child is killed and reaped before the cancellation propagates.
        """
        if isinstance(stdin, bytes | bytearray | memoryview):
            if input is not None:
                raise ValueError("give the command's input once: input= or stdin=bytes, not both")
            input, stdin = bytes(stdin), PIPE
        policy = _resolve_policy(policy)
        child = await self.start(
            cmd,
            policy=policy,
            stdin=PIPE if input is not None else stdin,
            stdout=stdout,
            stderr=stderr,
            name=name,
            rules=rules,
            env=env,
            cwd=cwd,
            approver=approver,
        )
        # A command rule may have chosen another policy for it: its output limit is the one that holds.
        out_limit = (child.policy or policy).resources.output
        keep = min(out_limit, self.capture_limit) if out_limit is not None else self.capture_limit
        captured = await _capture(child, input, keep, out_limit)
        out, out_t = captured.get("stdout", (b"", False))
        err, err_t = captured.get("stderr", (b"", False))
        result = child.result(stdout=out, stderr=err, stdout_truncated=out_t, stderr_truncated=err_t)
        if check and result.exit_code != 0:
            raise CommandFailedError([os.fsdecode(a) for a in cmd], result)
        return result


async def _capture(
    child: Child, input: bytes | None, keep: int, out_limit: int | None
) -> dict[str, tuple[bytes, bool]]:
    """Feed `input` to the child's stdin, drain its stdout/stderr (`keep` bytes of each kept, `out_limit`
    enforced) and wait for its exit: the captured streams by name, with whether each was truncated. Its
    streams are closed afterwards. On any failure or cancellation the child is killed and reaped before
    it propagates."""
    captured: dict[str, tuple[bytes, bool]] = {}
    try:
        async with anyio.create_task_group() as tg:
            if child.stdout is not None:
                tg.start_soon(_drain, child, child.stdout, keep, out_limit, captured, "stdout")
            if child.stderr is not None:
                tg.start_soon(_drain, child, child.stderr, keep, out_limit, captured, "stderr")
            if input is not None and child.stdin is not None:
                tg.start_soon(_feed, child.stdin, input)
            await child.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            child.kill()
            await child.wait()
        raise
    finally:
        # Its streams are drained and closed: the supervisor need not keep the Child to close them at
        # exit (kept, every run's Child stayed in _handles for the supervisor's life).
        child._close_streams()
    return captured


def _check_options(
    max_concurrency: int,
    capture_limit: int,
    cgroups: bool,
    cgroup_delegate: str | None,
    monitor_interval: float,
    prefork: int,
    rules: CommandRules | None,
) -> None:
    """Check Supervisor's arguments: TypeError for one of the wrong type, ValueError for one out of range."""
    _check_int("max_concurrency", max_concurrency, 1)
    if rules is not None and not isinstance(rules, CommandRules):
        raise TypeError(f"rules must be CommandRules (policies.load_rules) or None, not {rules!r}")
    _check_int("capture_limit", capture_limit, 0)
    _check_int("prefork", prefork, 0)
    if (
        isinstance(monitor_interval, bool)
        or not isinstance(monitor_interval, int | float)
        or not math.isfinite(monitor_interval)
        or monitor_interval <= 0
    ):
        raise ValueError(f"monitor_interval must be a number of seconds > 0, not {monitor_interval!r}")
    if not isinstance(cgroups, bool):
        raise TypeError(f"cgroups must be True or False, not {cgroups!r}")
    if cgroup_delegate is not None and not isinstance(cgroup_delegate, str | os.PathLike):
        raise TypeError(f"cgroup_delegate must be a path or None, not {cgroup_delegate!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    """Raise TypeError unless `value` is an int (not a bool), ValueError if it is below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")


def _check_command(cmd: object) -> None:
    """Raise TypeError for a command given as one string (which would run its first letter), ValueError
    for an empty one."""
    if isinstance(cmd, str | bytes | bytearray | os.PathLike):
        raise TypeError(
            f"the command must be a sequence of arguments, not {type(cmd).__name__} {cmd!r}: "
            "use shlex.split(cmd), or ['sh', '-c', cmd] to run it through a shell"
        )
    if not cmd:
        raise ValueError("empty command")


def _check_cwd(cwd: object) -> bytes | None:
    """`cwd` as the init takes it (bytes), None for the workdir. Raises TypeError for a non-path, ValueError
    for an empty one or one with a NUL byte."""
    if cwd is None:
        return None
    if not isinstance(cwd, str | bytes | os.PathLike):
        raise TypeError(f"cwd must be a path, not {type(cwd).__name__}")
    raw = os.fsencode(cwd)
    if not raw or b"\0" in raw:
        raise ValueError(f"cwd must be a non-empty path without NUL bytes, not {cwd!r}")
    return raw


def _resolve_policy(policy: object) -> Policy:
    """A Policy as given, a built-in profile by name (on the current directory), or the default
    (workspace-write on the current directory). Raises TypeError for anything else, PolicyError for an
    unknown profile name."""
    if policy is None:
        return profiles.workspace_write()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return profiles.get(policy)
    raise TypeError(
        f"policy must be a Policy, a profile name ({', '.join(profiles.NAMES)}) or None, "
        f"not {type(policy).__name__}"
    )


def _merged_env(policy: Policy, env: Mapping[str, str]) -> EncodedEnv:
    """The child's environment with `env` merged over the caller's, filtered by the policy."""
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise TypeError("env must be a mapping of str to str")
    merged = filter_environment(policy, {**os.environ, **env})
    return encode_env({os.fsencode(k): os.fsencode(v) for k, v in merged.items()})


def _compile_checked(policy: Policy, caps: KernelCaps, shared: SharedParts | None) -> CompiledPolicy:
    """compile_policy, after checking that the workdir exists (a missing one is the caller's mistake, a
    PolicyError, not a sandbox setup failure). Runs in a worker thread."""
    if policy.workdir is not None and not os.path.isdir(policy.workdir):
        raise PolicyError(
            "workdir", "no such directory: create it first, or give an existing workdir", policy.workdir
        )
    return compile_policy(policy, caps, shared)


def _raise_nofile() -> None:
    """Each child costs the supervisor about eight fds (pidfd, status pipe, output pipes, cgroup files):
    lift the soft RLIMIT_NOFILE to the hard limit, as servers do, so hundreds of children fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _drain(
    child: Child,
    stream: ByteReceiveStream,
    keep: int,
    limit: int | None,
    into: dict[str, tuple[bytes, bool]],
    key: str,
) -> None:
    """Read `stream` to EOF keeping at most `keep` bytes; count every byte against the child's output
    `limit` (stdout and stderr together) and kill it when the total exceeds it."""
    chunks: list[bytes] = []
    kept = 0
    truncated = False
    try:
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            child.count_output(len(data), limit)
            if kept < keep:
                part = data[: keep - kept]
                chunks.append(part)
                kept += len(part)
                truncated = truncated or len(part) < len(data)
            else:
                truncated = True
    finally:
        into[key] = (b"".join(chunks), truncated)
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


#: How long the leaf remover lets removals pile up before one worker-thread hop.
_TRASH_DELAY = 0.02


def _remove_leaf_batch(leaves: list[Leaf]) -> None:
    """Give back each leaf, which its manager keeps for the next child or removes (`Leaf.release`; blocking,
    in a worker thread). Failures are logged, not raised: the children are reaped, and CgroupManager.close or
    the next start removes what is left."""
    for leaf in leaves:
        try:
            leaf.release()
        except Exception as err:
            log.warning("could not remove cgroup leaf %s: %s", leaf.paths, err)


def _slot_fds(*args: StdioArg) -> list[int]:
    """Per stdio slot, the caller's fd (or, for None, the supervisor's own 0/1/2), or -1 for a slot corral
    fills itself (PIPE, DEVNULL, a file object without an fd)."""
    out = []
    for index, arg in enumerate(args):
        if arg is None:
            out.append(index)
        elif isinstance(arg, int):
            out.append(arg if arg >= 0 else -1)
        else:
            try:
                out.append(arg.fileno())
            except (ValueError, OSError):
                out.append(-1)
    return out


def _setup_error(
    err: object, cmd: Sequence[str | bytes | os.PathLike[str]], policy: Policy | None = None
) -> Exception:
    """Translate a failure record from the fork server into the typed exception."""
    if not isinstance(err, dict):
        hint = "the sandbox init died before reporting"
        if policy is not None and policy.resources.memory is not None:
            hint += f" (killed? the memory limit is {policy.resources.memory} bytes)"
        return SandboxSetupError("setup", "spawn", hint=hint)
    code = int(err.get("errno") or 0)
    if err.get("layer") == "exec":
        argv0 = os.fsdecode(os.fspath(cmd[0]))
        if code in (_errno.ENOENT, _errno.ENOTDIR):
            return CommandNotFoundError(argv0, code, _not_found_hint(argv0, policy))
        hint = ""
        if code == _errno.EACCES and policy is not None and policy.filesystem.execute is not None:
            hint = "the policy's execute rule (filesystem.execute) may forbid it"
        return CommandNotExecutableError(argv0, code, hint)
    return SandboxSetupError(
        str(err.get("layer")),
        str(err.get("operation")),
        code,
        err.get("path") if isinstance(err.get("path"), str) else None,
        str(err.get("hint") or ""),
    )


#: execve's ENOENT for a path names the file OR what it needs to start: bash says "required file not found".
_INTERPRETER_HINT = "if the file exists, the interpreter of its #! line (or its ELF loader) was not found"


def _not_found_hint(argv0: str, policy: Policy | None) -> str:
    """Why a command the caller can see may be missing inside: the sandbox's /tmp and /dev/shm are private
    (a venv or a tool under the host's /tmp is not there) unless the policy makes them visible; and, for a
    path, that execve's ENOENT may be about its #! interpreter or ELF loader (said without looking: the
    path may lie in a root the sandbox writes, which the event loop does not touch)."""
    if not argv0.startswith(("/tmp/", "/dev/shm/")) or policy is None or not policy.filesystem.confine:
        return _INTERPRETER_HINT if "/" in argv0 else ""
    top = "/" + argv0.split("/")[1]
    return (
        f"{top} is private inside the sandbox (the host's {top} is not there); make the directory holding "
        "the command visible with --allow-read (policy filesystem.read) or --allow-write"
    )
