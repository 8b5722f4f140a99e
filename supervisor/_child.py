"""A running sandboxed child and the Result it leaves."""

from __future__ import annotations

import contextlib
import logging
import os
import signal as _signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from supervisor._denials import DenialLog, limit_denials, seccomp_denial
from supervisor._types import NOTHING, ChildStats, Denial, Result, Rule, Verdict, Violation
from supervisor.forkserver import protocol
from supervisor.forkserver.client import StatusReader

if TYPE_CHECKING:
    from policies import Policy
    from policies._commands import CommandDecision
    from supervisor._proxy import ChildProxy
    from supervisor.sandbox.cgroups import CgroupStats, Leaf


@dataclass(slots=True)
class _Exit:
    status: int | None = None  # the target's wait status, from the sandbox init
    init_signal: int | None = None  # set when the sandbox init itself was killed
    cpu_s: float = 0.0
    maxrss: int = 0
    ended: float = 0.0
    cmd_ended: float | None = None  # when the command ended, by the init's report (time.monotonic's clock)
    elf: str | None = None  # the command file's ABI, reported by the init when SIGSYS killed the command
    protected: tuple[str, ...] = ()  # protected configs the command tried to replace (the init's watch)


log = logging.getLogger("corral")

#: The engine's seam into a Child: the names, private to the API, through which the Supervisor drives a
#: child's lifecycle (its watcher task reads the status records and reaps: `_reap`, `_collect`; `_started`
#: and `_first` tell `start` whether the command runs; `_finish` folds the final sample, `_fold`, judges
#: the exit, `_exit`, `_exit_signal`, `_pidfd`, wakes the waiters, `_done`, and calls `_then`; `_forget`
#: and `_close_streams` end the supervisor's hold on the streams) and through which the sampler keeps its
#: per-child state (`_watch`, `_events_seen`: supervisor/_monitor.py). No other module uses them, and no
#: module uses another's private names except through a seam listed like this one
#: (tests/unit/test_seams.py).
SEAM = frozenset(
    {
        "_reap", "_collect", "_started", "_first", "_fold", "_exit", "_exit_signal", "_pidfd", "_done",
        "_then", "_forget", "_close_streams", "_watch", "_events_seen",
    }
)  # fmt: skip


class Child:
    """A running sandboxed command. Created by `Supervisor.start`.

    `pid` is the host pid of the sandbox's init (pid 1 of its pid namespace); the command itself runs as its
    child. Signals go through a pidfd, never a bare pid. `stdin`/`stdout`/`stderr` are anyio byte streams when
    the corresponding argument was PIPE.
    """

    def __init__(
        self,
        pid: int,
        pidfd: int,
        status: StatusReader,
        *,
        name: str | None,
        profile: str,
        enforced: tuple[str, ...],
        missing: tuple[tuple[str, str], ...],
        stdin: ByteSendStream | None,
        stdout: ByteReceiveStream | None,
        stderr: ByteReceiveStream | None,
    ) -> None:
        self.pid = pid
        self.name = name
        self.profile = profile
        self.enforced = enforced
        self.missing = missing
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.started = time.monotonic()
        #: The latest monitoring sample (None before the first one).
        self.last_stats: ChildStats | None = None
        self._init_findings()
        self.leaf: Leaf | None = None
        self.policy: Policy | None = None
        self.rules: tuple[Rule, ...] = ()
        #: What the command rules decided for this command (None when no rules were in use).
        self.decision: CommandDecision | None = None
        #: Seconds from the start() call to the command running (exporters histogram it).
        self.spawn_latency_s: float | None = None
        #: When the command was reported running (monotonic), None before; when start() was called.
        self.exec_at: float | None = None
        self.requested_at = self.started
        #: When start() was called, by the wall clock (file ctimes' clock), and what the post-run git scan
        #: moved aside: (path, reason) pairs.
        self.requested_ns = time.time_ns()
        self.quarantined: tuple[tuple[str, str], ...] = ()
        #: The protected paths missing when its sandbox was cloned, as (root, relative path): checked after
        #: the run (supervisor/_protectscan.py).
        self.absent_protected: tuple[tuple[str, str], ...] = ()
        #: The writable roots without a `.git` when its view was built: the git scan trusts nothing in a
        #: top `.git` it finds there (nothing of it was bound read-only for the run).
        self.nogit: tuple[str, ...] = ()
        #: Network mode "proxy": the child's proxy (its counters and refusals), and the scope its serving
        #: task runs in (cancelled when the child is done).
        self.proxy: ChildProxy | None = None
        self._proxy_scope: anyio.CancelScope | None = None
        self._pidfd: int | None = pidfd
        self._status = status
        self._exit: _Exit | None = None
        self._done = anyio.Event()
        self._started = anyio.Event()
        self._first: tuple[bytes, dict[str, object]] | None = None
        #: Called by the supervisor once the child is done.
        self._then: Callable[[], None] | None = None
        #: Called with this child once its streams are closed (the supervisor stops tracking them).
        self._forget: Callable[[Child], None] | None = None
        #: How `stats()` samples this child (the supervisor's sampler, `_monitor.sample`), blocking.
        self._sample: Callable[[Child, bool], ChildStats] | None = None

    def _init_findings(self) -> None:
        """What monitoring finds about the child (besides its latest sample) and what its sandbox is refused,
        all empty at first."""
        #: The violation to report: set when corral killed the child for a limit (then `killed` is True and
        #: the exit status is 137) or when the kernel held a limit the child survived (pids.max).
        self.violation: Violation | None = None
        self.killed = False
        self.limit_hits: dict[str, int] = {}
        #: The sampler's: what it watches between full rounds (_monitor.watch; None: not decided yet) and
        #: the event counters' contents it saw last.
        self._watch: int | None = None
        self._events_seen: bytes | None = None
        self.output_bytes = 0
        #: What the sandbox was refused (bounded), the layers whose refusals cannot be seen, the syscall
        #: names of its seccomp filter by number (None: its refusals are not reported), and who is told of
        #: each new denial as it comes (the supervisor's `denied` event).
        self.denials = DenialLog()
        self.unobservable: tuple[tuple[str, str], ...] = ()
        self.syscall_names: dict[int, str] | None = None
        self.on_denial: Callable[[Denial], None] | None = None

    @property
    def running(self) -> bool:
        """True until the child's exit is final (see `wait`)."""
        return self._exit is None

    async def stats(self) -> ChildStats | None:
        """The usage of the child's whole tree now (ChildStats: memory, peak, CPU, pids, open fds when the
        policy limits them), sampled in a worker thread (cgroup files, else psutil); once the child has
        exited, its last periodic sample (`last_stats`; None if it never had one). Never raises for a
        vanished process or file (the field is None). On cancellation the worker's read completes and its
        sample is dropped."""
        if not self.running or self._sample is None:
            return self.last_stats
        return await anyio.to_thread.run_sync(self._sample, self, True)

    @property
    def returncode(self) -> int | None:
        """The shell-style exit status once the child has been reaped, else None."""
        return None if self._exit is None else self._result_code()[0]

    def send_signal(self, sig: int) -> None:
        """Signal the command (the init forwards TERM, INT, HUP, QUIT, USR1, USR2, WINCH, CONT to it;
        SIGKILL ends the whole sandbox). A no-op once the child has exited."""
        if self._pidfd is not None and self._exit is None:
            with contextlib.suppress(ProcessLookupError):
                _signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        """SIGKILL the sandbox init: the kernel then kills every process in its pid namespace. (The
        supervisor also kills the child's cgroup before removing it, which catches a sandbox without a pid
        namespace.)"""
        if self._exit is None and self._pidfd is not None and "pid_ns" not in self.enforced:
            # No pid namespace (best_effort): the init's death takes nothing with it. The command runs in
            # the init's session and process group, whose id is the init's pid, which cannot be reused
            # while the init is our unreaped child.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, _signal.SIGKILL)
        self.send_signal(_signal.SIGKILL)

    def count_output(self, n: int, limit: int | None) -> int:
        """Count `n` more bytes of stdout+stderr against the output `limit` (killing the child for an
        output violation past it); returns how many of those bytes were still within the limit."""
        room = n if limit is None else max(0, min(n, limit - self.output_bytes))
        self.output_bytes += n
        if limit is not None and self.output_bytes > limit:
            self.kill_for(Violation("output", limit, self.output_bytes))
        return room

    def kill_for(self, violation: Violation) -> None:
        """Kill the child for a limit violation, which its Result will report (exit status 137). The first
        violation wins."""
        if self._exit is None and not self.killed:
            self.violation = violation
            self.killed = True
            self.kill()

    def apply(self, verdict: Verdict) -> None:
        """Carry out the Enforcer's verdict (see Verdict for the order)."""
        if verdict is NOTHING:
            return
        self.limit_hits.update(verdict.limit_hits)
        if verdict.report is not None and self.violation is None:
            self.violation = verdict.report
        if verdict.kill is not None:
            self.kill_for(verdict.kill)
        if verdict.ended is not None:
            self.violation = verdict.ended
            self.killed = True

    async def aclose(self) -> None:
        """Close the streams the caller has not closed, then wait for the child to exit, as anyio's
        `Process.aclose` does (it does not kill a running child: `kill()` or `terminate()` first for that).
        On cancellation while waiting, the child is killed and reaped before the cancellation propagates.
        Idempotent; `async with child:` calls it on leaving the block."""
        self._close_streams()
        try:
            await self.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                self.kill()
                await self.wait()
            raise

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def terminate(self, grace: float = 5.0) -> Result:
        """SIGTERM the command, wait up to `grace` seconds, then kill. Returns the Result."""
        self.send_signal(_signal.SIGTERM)
        with anyio.move_on_after(grace):
            return await self.wait()
        self.kill()
        return await self.wait()

    async def wait(self) -> Result:
        """Wait until the child's exit is final and return its Result (without captured output:
        `Supervisor.run` captures). Final: the command and everything it left behind have been killed and
        reaped (the sandbox's init vouches for that as pid 1 of its namespace), or, without a pid
        namespace, the init itself has been reaped. The init may still be exiting for a moment; the
        supervisor reaps it and removes the cgroup right after. Cancelling the wait does not kill the
        child."""
        await self._done.wait()
        return self.result()

    def result(self, **extra: object) -> Result:
        """The Result of a reaped child. Raises RuntimeError if it is still running."""
        if self._exit is None:
            msg = "child is still running"
            raise RuntimeError(msg)
        code, sig = self._result_code()
        return Result(
            exit_code=code,
            signal=sig,
            violation=self.violation,
            duration_s=self._exit.ended - self.requested_at,  # from the request, as the timeout
            cpu_s=self._cpu_seconds(),
            peak_memory_bytes=self._peak_memory(),
            enforced=self.enforced,
            missing=self.missing,
            pid=self.pid,
            limit_hits=dict(self.limit_hits),
            killed=self.killed,
            quarantined=self.quarantined,
            refused_abi=self._refused_abi(sig),
            network=self.proxy.stats.to_dict() if self.proxy is not None else None,
            denials=tuple(self.denials.items),
            denials_dropped=self.denials.dropped,
            denials_unobservable=self.unobservable,
            decision=self.decision,
            protected_writes=self._exit.protected,
            **extra,  # type: ignore[arg-type]
        )

    def _peak_memory(self) -> int:
        """Result.peak_memory_bytes: the exit record's (the cgroup's peak; without one, rusage's) raised to
        what sampling saw (`_at_least`)."""
        assert self._exit is not None
        stats = self.last_stats
        seen = (stats.memory_peak_bytes, stats.memory_bytes) if stats is not None else ()
        return int(self._at_least(self._exit.maxrss, seen, "memory"))

    def _cpu_seconds(self) -> float:
        """Result.cpu_s: the exit record's (the cgroup's; without one, rusage's) raised to what sampling saw
        (`_at_least`)."""
        assert self._exit is not None
        stats = self.last_stats
        return self._at_least(self._exit.cpu_s, (stats.cpu_seconds,) if stats is not None else (), "cpu_time")

    def _at_least(self, exact: float, sampled: tuple[float | None, ...], kind: str) -> float:
        """`exact` (the exit record's figure) raised to the values sampling saw and to the observed value of
        a `kind` violation. Without a cgroup a tree killed whole (a limit enforced by sampling) leaves only
        the init's own rusage, far below what got it killed: never report less than was seen."""
        value = max((exact, *(v for v in sampled if v is not None)))
        if self.violation is not None and self.violation.kind == kind:
            value = max(value, self.violation.observed)
        return value

    def _refused_abi(self, sig: int | None) -> str | None:
        """Result.refused_abi: a SIGSYS death under the seccomp filter, which kills foreign-ABI syscalls."""
        if sig != _signal.SIGSYS or "seccomp" not in self.enforced or self._exit is None:
            return None
        elf = self._exit.elf
        if elf in ("i386", "x32"):
            return elf
        profile = self.policy.syscalls.profile if self.policy is not None else None
        if profile is not None and (
            profile.default == "kill_process" or any(r.action == "kill_process" for r in profile.rules)
        ):
            return None  # a 64-bit program under a profile that kills: most likely that profile's verdict
        return "i386 or x32"

    def _exit_signal(self) -> int | None:
        """The signal that ended the command itself (its wait status from the init), or None."""
        ex = self._exit
        if ex is None or ex.status is None or not os.WIFSIGNALED(ex.status):
            return None
        return os.WTERMSIG(ex.status)

    def _result_code(self) -> tuple[int, int | None]:
        ex = self._exit
        assert ex is not None
        if ex.status is not None:
            if os.WIFSIGNALED(ex.status):
                sig = os.WTERMSIG(ex.status)
                code, signal = 128 + sig, sig
            else:
                code, signal = os.WEXITSTATUS(ex.status), None
        else:
            sig = ex.init_signal or _signal.SIGKILL
            code, signal = 128 + sig, sig
        if self.killed:
            code = 137
        return code, signal

    async def _reap(self, on_exec: Callable[[], None] | None = None) -> None:
        """Read the status pipe until the command's exit is final, then mark the child exited. `on_exec`
        is called when the command is reported running. Final means: an S record saying the sandbox is
        empty (the init then exits on its own and `_collect` reaps it later), or else the status pipe's
        EOF and the init reaped through its pidfd. Called by the watcher task; on cancellation the caller
        kills first and re-enters under a shield."""
        ex = _Exit()
        while True:
            rec = await self._status.next()
            if rec is None:
                break
            kind, payload = rec
            if kind == protocol.DENIED:
                self._denied(payload)
                continue
            if not self._started.is_set():
                self._first = rec
                if kind == protocol.EXEC:
                    self.exec_at = time.monotonic()
                    if on_exec is not None:
                        on_exec()
                self._started.set()
            if kind == protocol.EXIT:
                record = protocol.exit_record(payload)
                ex.status = None if record is None else record["status"]
                if record is None:
                    continue
                if self.syscall_names is not None:
                    if "dcounts" in record:
                        self.denials.seccomp_counts(record["dcounts"], record.get("ddropped", 0))
                    else:  # the kernel refused the init a listener: the errno filter alone enforced
                        why = "the kernel refused the sandbox init a seccomp listener (EBUSY: an outer one?)"
                        self.unobservable = (("seccomp", why), *self.unobservable)
                ex.cpu_s, ex.maxrss = record["cpu"], record["maxrss"]
                if "ended" in record:
                    ex.cmd_ended = record["ended"] / 1e9
                if "elf" in record:
                    ex.elf = record["elf"]
                if "protected" in record:
                    ex.protected = tuple(record["protected"])
                if record["alone"]:
                    ex.ended = time.monotonic()
                    self._exit = ex
                    return
        await self._collect(ex)
        self._started.set()

    def _denied(self, payload: dict[str, object]) -> None:
        """A D record: a distinct seccomp refusal, recorded and told (only where reports were asked for:
        a record from a sandbox whose filter does not notify is not the init's)."""
        if self.syscall_names is None:
            return
        try:
            denial = seccomp_denial(payload, self.syscall_names, self.policy)
        except Exception:  # a report must never stop the watcher: the child's exit still has to be read
            log.exception("denial report from a sandbox init not understood; ignored")
            denial = None
        if self.denials.add_seccomp(denial) and denial is not None and self.on_denial is not None:
            self.on_denial(denial)

    def add_limit_denials(self) -> list[Denial]:
        """The limits' refusals the supervisor saw itself (pids.max, SIGXFSZ), added once the exit is known;
        returns the new ones."""
        found = limit_denials(self.policy, self.limit_hits, self._exit_signal())
        return [d for d in found if self.denials.add(d)]

    async def _collect(self, ex: _Exit | None = None) -> None:
        """Reap the init (at once when it is gone, else once its pidfd says so); with `ex`, its wait status
        completes the exit record."""
        if self._pidfd is None:
            return
        # The pid cannot have been reused, since only we can reap it. After an S record the init is usually
        # gone by now: reap it without a wait on its pidfd (that wait cost the loop more than the reap).
        pid, wstatus, rusage = os.wait4(self.pid, os.WNOHANG)  # noqa: ASYNC222
        while pid == 0:
            # Until it is really reaped: a readiness report can be spurious (trio's epoll keeps a disarmed
            # registration of a closed fd whose file the fork server still holds, and a later fd of the same
            # number is reported ready), and taking it for the exit left the init a zombie for good.
            await anyio.wait_readable(self._pidfd)
            pid, wstatus, rusage = os.wait4(self.pid, os.WNOHANG)  # noqa: ASYNC222
        os.close(self._pidfd)
        self._pidfd = None
        self._status.close()
        if ex is None:
            return
        ex.ended = time.monotonic()
        if os.WIFSIGNALED(wstatus):
            ex.init_signal = os.WTERMSIG(wstatus)
        if ex.status is None:  # killed before it could report: the init's own tally is all there is
            ex.cpu_s = rusage.ru_utime + rusage.ru_stime
            ex.maxrss = rusage.ru_maxrss * 1024
        self._exit = ex

    def _close_streams(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if self._forget is not None:
            forget, self._forget = self._forget, None
            forget(self)

    def _fold(self, stats: CgroupStats | None) -> None:
        """Fold the cgroup's final sample into the exit record (whole-tree CPU and true peak memory, which
        rusage cannot give: its maxrss counts the pre-exec image)."""
        ex = self._exit
        assert ex is not None
        if stats is not None:
            if stats.cpu_seconds is not None:
                ex.cpu_s = stats.cpu_seconds
            if stats.memory_peak_bytes is not None:
                ex.maxrss = stats.memory_peak_bytes
