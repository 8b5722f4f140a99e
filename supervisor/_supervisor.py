"""The Supervisor: many sandboxed children in one anyio task group."""

from __future__ import annotations

import errno as _errno
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO

import anyio
from anyio.abc import TaskGroup

from policies import Policy, filter_environment, profiles
from supervisor._child import Child, Result, StatusReader, Violation
from supervisor._errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxSetupError,
    SupervisorClosedError,
)
from supervisor._forkserver import ForkServer
from supervisor._plan import CompiledPolicy, compile_policy
from supervisor._streams import FdReceiveStream, FdSendStream
from supervisor.sandbox.probe import KernelCaps

log = logging.getLogger("corral")

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
StdioArg = int | IO[bytes] | None

#: Bytes of each output stream kept by `run` when the policy sets no output limit.
DEFAULT_CAPTURE = 1 << 20


class _Slot:
    """A concurrency slot held on behalf of one child, released exactly once."""

    __slots__ = ("released",)

    def __init__(self) -> None:
        self.released = False

    def release(self, limiter: anyio.CapacityLimiter) -> None:
        if not self.released:
            self.released = True
            limiter.release_on_behalf_of(self)


class Supervisor:
    """Supervises sandboxed children. Use as ``async with Supervisor() as sup:``.

    Leaving the block, normally, by an error or by cancellation, kills every child still running (the
    whole pid namespace of each) and reaps it before returning. `max_concurrency` bounds the children alive
    at once; further `start`/`run` calls wait their turn in FIFO order.
    """

    def __init__(self, max_concurrency: int = 64, *, capture_limit: int = DEFAULT_CAPTURE) -> None:
        self.max_concurrency = max_concurrency
        self.capture_limit = capture_limit
        self._forkserver: ForkServer | None = None
        self._tg: TaskGroup | None = None
        self._caps: KernelCaps | None = None
        self._compiled: dict[Policy, CompiledPolicy] = {}
        self._children: set[Child] = set()
        self._limiter = anyio.CapacityLimiter(max_concurrency)

    @property
    def caps(self) -> KernelCaps:
        """What this kernel offers, as probed by the fork server at start."""
        if self._caps is None:
            raise SupervisorClosedError("the supervisor is not running")  # noqa: EM101
        return self._caps

    @property
    def children(self) -> frozenset[Child]:
        """The children alive now."""
        return frozenset(self._children)

    async def __aenter__(self) -> Supervisor:
        fs = ForkServer()
        # Started from this (the event loop's) thread: the children's PDEATHSIG is tied to it.
        fs.start()
        self._forkserver = fs
        self._caps = KernelCaps.from_dict(fs.caps_dict)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            # Kill first: the watcher tasks then reap every child while the task group exits.
            for child in list(self._children):
                child.kill()
            assert self._tg is not None
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
            if self._forkserver is not None:
                self._forkserver.close()
                self._forkserver = None

    def compile(self, policy: Policy) -> CompiledPolicy:
        """Compile (and cache) `policy` for this kernel. Raises SandboxSetupError (fail closed)."""
        compiled = self._compiled.get(policy)
        if compiled is None:
            compiled = compile_policy(policy, self.caps)
            self._compiled[policy] = compiled
        return compiled

    async def start(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        *,
        policy: Policy | None = None,
        stdin: StdioArg = DEVNULL,
        stdout: StdioArg = PIPE,
        stderr: StdioArg = PIPE,
        name: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Child:
        """Start `cmd` confined by `policy` (default: workspace-write on the current directory).

        stdin/stdout/stderr: PIPE (a stream on the Child), DEVNULL, None (inherit the supervisor's), or an
        open file/fd. `pass_fds` are passed on as fds 3, 4, ... Waits for a concurrency slot first.
        Raises SandboxSetupError when a layer cannot be applied (the command did not run),
        CommandNotFoundError (127) or CommandNotExecutableError (126). On cancellation while starting, the
        child is killed and reaped.
        """
        if self._tg is None or self._forkserver is None:
            raise SupervisorClosedError("the supervisor is not running")  # noqa: EM101
        if not cmd:
            raise ValueError("empty command")  # noqa: EM101
        policy = policy or profiles.workspace_write()
        compiled = self._compiled.get(policy)
        if compiled is None:  # first use: pyseccomp compiles off the event loop
            compiled = await anyio.to_thread.run_sync(self.compile, policy)
        # The slot belongs to the child, not to this task: the watcher task releases it after reaping.
        slot = _Slot()
        await self._limiter.acquire_on_behalf_of(slot)
        try:
            return await self._spawn(cmd, policy, compiled, stdin, stdout, stderr, name, pass_fds, slot)
        except BaseException:
            slot.release(self._limiter)  # unless the watcher of a failed child already did
            raise

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
    ) -> Child:
        assert self._forkserver is not None
        assert self._tg is not None
        env = filter_environment(policy, os.environ)
        request: dict[str, object] = {
            "argv": [os.fsencode(a) for a in cmd],
            "env": {os.fsencode(k): os.fsencode(v) for k, v in env.items()},
            "cwd": policy.workdir or os.getcwd(),
            "cgroup_procs": [],
            "pass_fds": len(pass_fds),
        }
        ours: list[int] = []  # child-side fds we opened, closed once sent
        mine: list[int | None] = [None, None, None]  # our ends of pipes
        fds: list[int] = []
        try:
            for i, arg in enumerate((stdin, stdout, stderr)):
                fds.append(_child_fd(i, arg, ours, mine))
            fds.extend(pass_fds)
            reply, pidfd, status_fd = await self._forkserver.spawn(
                request, compiled.policy_id, compiled.payload, fds
            )
        except BaseException:
            for fd in mine:
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in ours:
                os.close(fd)
        if pidfd is None or status_fd is None:
            for fd in mine:
                if fd is not None:
                    os.close(fd)
            raise _setup_error(reply.get("error"), cmd)
        child = Child(
            int(reply["pid"]),  # type: ignore[call-overload]
            pidfd,
            StatusReader(status_fd),
            name=name,
            profile=policy.profile,
            enforced=compiled.enforced,
            missing=compiled.missing,
            stdin=FdSendStream(mine[0]) if mine[0] is not None else None,
            stdout=FdReceiveStream(mine[1]) if mine[1] is not None else None,
            stderr=FdReceiveStream(mine[2]) if mine[2] is not None else None,
        )
        self._children.add(child)
        self._tg.start_soon(self._watch, child, slot)
        if "error" in reply:  # the fork server could not finish setting it up and killed it
            await child.wait()
            raise _setup_error(reply["error"], cmd)
        # The watcher's first record says whether the command is running (X) or why not (E).
        try:
            await child._started.wait()
        except BaseException:
            child.kill()  # the watcher reaps it
            raise
        first = child._first
        if first is None or first[0] != b"X":
            await child.wait()
            raise _setup_error(first[1] if first else None, cmd)
        return child

    async def _watch(self, child: Child, slot: _Slot) -> None:
        """Reap `child`. On cancellation (the supervisor is closing), kill it first; always reap."""
        try:
            await child._reap()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                child.kill()
                await child._reap()
            raise
        finally:
            self._children.discard(child)
            slot.release(self._limiter)

    async def run(
        self,
        cmd: Sequence[str | bytes | os.PathLike[str]],
        *,
        policy: Policy | None = None,
        input: bytes | None = None,
        stdin: StdioArg = DEVNULL,
        stdout: StdioArg = PIPE,
        stderr: StdioArg = PIPE,
        name: str | None = None,
    ) -> Result:
        """Run `cmd` to completion and return its Result, with stdout/stderr captured (bounded by the
        policy's output limit, else `capture_limit` bytes each; the rest is drained and dropped).

        The policy's wall-clock timeout kills the whole sandbox and is reported as a wall_time violation.
        Raises like `start`. On cancellation the child is killed and reaped before the cancellation
        propagates.
        """
        policy = policy or profiles.workspace_write()
        child = await self.start(
            cmd,
            policy=policy,
            stdin=PIPE if input is not None else stdin,
            stdout=stdout,
            stderr=stderr,
            name=name,
        )
        limit = policy.resources.output or self.capture_limit
        captured: dict[str, tuple[bytes, bool]] = {}
        timeout = policy.resources.timeout
        try:
            async with anyio.create_task_group() as tg:
                if child.stdout is not None:
                    tg.start_soon(_drain, child.stdout, limit, captured, "stdout")
                if child.stderr is not None:
                    tg.start_soon(_drain, child.stderr, limit, captured, "stderr")
                if input is not None and child.stdin is not None:
                    tg.start_soon(_feed, child.stdin, input)
                with anyio.move_on_after(timeout) as scope:
                    await child.wait()
                if scope.cancelled_caught and timeout is not None:
                    elapsed = time.monotonic() - child.started
                    child.violation = Violation("wall_time", timeout, round(elapsed, 3))
                    child.kill()
                    await child.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                child.kill()
                await child.wait()
            raise
        out, out_t = captured.get("stdout", (b"", False))
        err, err_t = captured.get("stderr", (b"", False))
        return child.result(stdout=out, stderr=err, stdout_truncated=out_t, stderr_truncated=err_t)


async def _drain(
    stream: FdReceiveStream | object, limit: int, into: dict[str, tuple[bytes, bool]], key: str
) -> None:
    """Read `stream` to EOF keeping at most `limit` bytes; memory stays bounded whatever the child writes."""
    assert isinstance(stream, FdReceiveStream)
    chunks: list[bytes] = []
    kept = 0
    truncated = False
    try:
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            if kept < limit:
                part = data[: limit - kept]
                chunks.append(part)
                kept += len(part)
                truncated = truncated or len(part) < len(data)
            else:
                truncated = True
    finally:
        into[key] = (b"".join(chunks), truncated)
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _feed(stream: FdSendStream | object, data: bytes) -> None:
    assert isinstance(stream, FdSendStream)
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def _child_fd(index: int, arg: StdioArg, ours: list[int], mine: list[int | None]) -> int:
    """The fd to hand the child for stdio slot `index`, opening pipes or /dev/null as asked."""
    if arg is None:
        return index
    if arg == PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        child_end, our_end = (r, w) if index == 0 else (w, r)
        ours.append(child_end)
        mine[index] = our_end
        return child_end
    if arg == DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        ours.append(fd)
        return fd
    if isinstance(arg, int):
        return arg
    return arg.fileno()


def _setup_error(err: object, cmd: Sequence[str | bytes | os.PathLike[str]]) -> Exception:
    """Translate a failure record from the fork server into the typed exception."""
    if not isinstance(err, dict):
        return SandboxSetupError("setup", "spawn", hint="the sandbox init died before reporting")
    code = int(err.get("errno") or 0)
    if err.get("layer") == "exec":
        argv0 = os.fsdecode(os.fspath(cmd[0]))
        if code in (_errno.ENOENT, _errno.ENOTDIR):
            return CommandNotFoundError(argv0, code)
        hint = "the policy's execute rule may forbid it" if code == _errno.EACCES else ""
        return CommandNotExecutableError(argv0, code, hint)
    return SandboxSetupError(
        str(err.get("layer")),
        str(err.get("operation")),
        code,
        err.get("path") if isinstance(err.get("path"), str) else None,
        str(err.get("hint") or ""),
    )
