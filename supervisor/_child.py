"""A running sandboxed child and the Result it leaves."""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import signal as _signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from policies._errors import printable

if TYPE_CHECKING:
    from policies import Policy
    from supervisor._monitor import ChildStats, Rule
    from supervisor.sandbox.cgroups import CgroupStats, Leaf

ViolationKind = Literal["memory", "pids", "wall_time", "cpu_time", "fds", "output", "disk"]


@dataclass(frozen=True, slots=True)
class Violation:
    """Why the supervisor (or the kernel, for memory) killed a child: the limit and what was observed."""

    kind: ViolationKind
    limit: float
    observed: float

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "limit": self.limit, "observed": self.observed}


@dataclass(frozen=True, slots=True)
class Result:
    """How a child ended.

    exit_code: the shell-style status, as `corral run` exits: the command's own code, 128+N when killed by
               signal N, 137 when killed for a violation.
    signal:    the signal that ended the command, or None.
    violation: the limit that got it killed, or None.
    stdout/stderr: captured output (bounded; `*_truncated` says whether bytes were dropped).
    enforced:  the isolation layers that took effect; missing: (layer, reason) pairs skipped by best_effort.
    limit_hits: limits the kernel held without killing the command, with a count: "pids" (forks refused at
               pids.max), "memory_oom" (processes the OOM killer ended), "memory_socket" (cgroup v1: socket
               buffers reached the memory limit).
    quarantined: what the post-run git scan moved out of git's way, as (path, reason) pairs: files the
               command wrote in git repositories under its writable roots that would make the host user's
               git run code (hooks, config settings that run programs, a commondir pointing elsewhere).
    killed:    True when the violation is what ended the command (corral, or the kernel's OOM killer, killed
               it for the limit); False when a violation is only reported (pids.max held it).
    refused_abi: when the command was killed by SIGSYS under the seccomp filter, which kills every syscall
               of a foreign ABI: "i386" or "x32" when the command's own file is such a binary, "i386 or
               x32" when it is a 64-bit one (a descendant, or `int $0x80` in 64-bit code); else None.
    """

    exit_code: int
    signal: int | None
    violation: Violation | None
    duration_s: float
    cpu_s: float
    peak_memory_bytes: int
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    enforced: tuple[str, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()
    pid: int = 0
    limit_hits: dict[str, int] = field(default_factory=dict)
    killed: bool = False
    quarantined: tuple[tuple[str, str], ...] = ()
    refused_abi: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.violation is None

    @property
    def outcome(self) -> Literal["ok", "error", "signal", "violation"]:
        """The bounded label exits are counted by: violation (killed for a limit), signal, error or ok."""
        if self.violation is not None and self.killed:
            return "violation"
        if self.signal is not None:
            return "signal"
        return "ok" if self.exit_code == 0 else "error"

    def to_json(self) -> dict[str, object]:
        """The `corral run --json` record (the CLI contract in DESIGN.md, plus `missing`)."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "violation": self.violation.to_dict() if self.violation else None,
            "duration_s": round(self.duration_s, 6),
            "cpu_s": round(self.cpu_s, 6),
            "peak_memory_bytes": self.peak_memory_bytes,
            "enforced": list(self.enforced),
            "missing": [{"layer": a, "reason": printable(b)} for a, b in self.missing],
            # Every key documented, 0 when nothing was held.
            "limit_hits": {**dict.fromkeys(LIMIT_HIT_KEYS, 0), **self.limit_hits},
            "refused_abi": self.refused_abi,
            "quarantined": [{"path": printable(p), "reason": printable(r)} for p, r in self.quarantined],
        }


@dataclass(slots=True)
class _Exit:
    status: int | None = None  # the target's wait status, from the sandbox init
    init_signal: int | None = None  # set when the sandbox init itself was killed
    cpu_s: float = 0.0
    maxrss: int = 0
    ended: float = 0.0
    cmd_ended: float | None = None  # when the command ended, by the init's report (time.monotonic's clock)
    elf: str | None = None  # the command file's ABI, reported by the init when SIGSYS killed the command


_KINDS = (b"E", b"R", b"X", b"S")
#: The keys `--json`'s limit_hits always carries (README): 0 when the kernel held nothing of that kind.
LIMIT_HIT_KEYS = ("pids", "memory_oom", "memory_socket", "disk_tmpfs")
_MAX_RECORD = 1 << 16
log = logging.getLogger("corral")


class StatusReader:
    """Reads the sandbox init's status pipe: records E (setup/exec failure), R (pre-forked sandbox ready), X
    (exec ok), S (exit status)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._buf = b""

    async def next(self) -> tuple[bytes, dict[str, object]] | None:
        """The next record, or None at EOF (the init is gone)."""
        while True:
            if len(self._buf) >= 5:
                (n,) = struct.unpack("=I", self._buf[1:5])
                if self._buf[:1] not in _KINDS or n > _MAX_RECORD:
                    self._malformed()
                    return None
                if len(self._buf) >= 5 + n:
                    kind, raw = self._buf[:1], self._buf[5 : 5 + n]
                    self._buf = self._buf[5 + n :]
                    try:
                        payload = marshal.loads(raw)
                    except (EOFError, ValueError, TypeError):
                        self._malformed()
                        return None
                    if not isinstance(payload, dict):
                        self._malformed()
                        return None
                    # The init sends a string that is not UTF-8 (a path or name a sandbox chose) as bytes.
                    for key, value in payload.items():
                        if isinstance(value, bytes):
                            payload[key] = value.decode("utf-8", "surrogateescape")
                    return kind, payload
            if self.fd is None:
                return None
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)
                continue
            if not data:
                os.close(self.fd)
                self.fd = None
                if not self._buf:
                    return None
                continue
            self._buf += data

    def _malformed(self) -> None:
        # Only the init writes this pipe, but a record that does not parse is treated as the end of the
        # stream (the child is then judged by its wait status alone) rather than trusted or fatal.
        log.warning("malformed status record from a sandbox init; ignoring the rest")
        self._buf = b""
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
        #: The violation to report: set when corral killed the child for a limit (then `killed` is True and
        #: the exit status is 137) or when the kernel held a limit the child survived (pids.max).
        self.violation: Violation | None = None
        self.killed = False
        self.limit_hits: dict[str, int] = {}
        #: The latest monitoring sample (None before the first one).
        self.last_stats: ChildStats | None = None
        #: The sampler's: what it watches between full rounds (_monitor.watch; None: not decided yet) and
        #: the event counters' contents it saw last.
        self._watch: int | None = None
        self._events_seen: bytes | None = None
        self.leaf: Leaf | None = None
        self.policy: Policy | None = None
        self.rules: tuple[Rule, ...] = ()
        self.output_bytes = 0
        #: Seconds from the start() call to the command running (exporters histogram it).
        self.spawn_latency_s: float | None = None
        #: When the command was reported running (monotonic), None before; when start() was called.
        self.exec_at: float | None = None
        self.requested_at = self.started
        #: When start() was called, by the wall clock (file ctimes' clock), and what the post-run git scan
        #: moved aside: (path, reason) pairs.
        self.requested_ns = time.time_ns()
        self.quarantined: tuple[tuple[str, str], ...] = ()
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

    @property
    def running(self) -> bool:
        """True until the child's exit is final (see `wait`)."""
        return self._exit is None

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
            cpu_s=self._exit.cpu_s,
            peak_memory_bytes=self._exit.maxrss,
            enforced=self.enforced,
            missing=self.missing,
            pid=self.pid,
            limit_hits=dict(self.limit_hits),
            killed=self.killed,
            quarantined=self.quarantined,
            refused_abi=self._refused_abi(sig),
            **extra,  # type: ignore[arg-type]
        )

    def _refused_abi(self, sig: int | None) -> str | None:
        """Result.refused_abi: a SIGSYS death under the seccomp filter, which kills foreign-ABI syscalls."""
        if sig != _signal.SIGSYS or "seccomp" not in self.enforced or self._exit is None:
            return None
        elf = self._exit.elf
        return elf if elf in ("i386", "x32") else "i386 or x32"

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
            if not self._started.is_set():
                self._first = rec
                if kind == b"X":
                    self.exec_at = time.monotonic()
                    if on_exec is not None:
                        on_exec()
                self._started.set()
            if kind == b"S":
                try:
                    ex.status = int(payload["status"])  # type: ignore[call-overload]
                    ex.cpu_s = float(payload["cpu"])  # type: ignore[arg-type]
                    ex.maxrss = int(payload["maxrss"])  # type: ignore[call-overload]
                except (KeyError, TypeError, ValueError):
                    ex.status = None
                ended = payload.get("ended")
                if isinstance(ended, int):
                    ex.cmd_ended = ended / 1e9
                elf = payload.get("elf")
                if isinstance(elf, str | bytes):
                    ex.elf = elf if isinstance(elf, str) else elf.decode(errors="replace")
                if ex.status is not None and payload.get("alone") is True:
                    ex.ended = time.monotonic()
                    self._exit = ex
                    return
        await self._collect(ex)
        self._started.set()

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
