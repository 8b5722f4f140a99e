"""Supervisor side of the fork server: start it, send spawn requests, receive pidfds, read the status
records of the sandboxes it starts (the messages are protocol.py's).

The fork server is the only process the supervisor ever forks, once, with subprocess (which execs at once in
the child, running no Python there). It must be started from the thread that runs the event loop: the sandbox
children's PDEATHSIG is tied to that thread.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import logging
import marshal
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from supervisor import _interpreter
from supervisor._errors import SandboxSetupError
from supervisor.forkserver import protocol
from supervisor.forkserver.protocol import (
    CompiledPayload,
    PreforkRequest,
    ProbeReport,
    Record,
    Reply,
    Request,
    SpawnRequest,
)
from supervisor.sandbox._sys import received_fds, rights

log = logging.getLogger("corral")

#: The tree's root, which the fork server puts first on its sys.path (protocol.BOOT).
ROOT = str(Path(__file__).resolve().parents[2])

#: Restart policy (docs/architecture.md, "Faults"): a fork server that dies is started again for the next
#: request, at once after its first death, then after 0.1, 0.2, 0.4, ... s (at most 2 s) while deaths keep
#: coming within RESTART_WINDOW seconds of each other; past MAX_RESTARTS deaths within the window, requests
#: fail with SandboxSetupError until the window has passed (a server that keeps dying has a cause a restart
#: will not fix).
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0

#: A reply as received: the message, its ancillary data, its flags.
Received = tuple[bytes, list[tuple[int, int, bytes]], int]


class _Pending:
    """A reply to come, for backends other than asyncio (trio): what an asyncio future gives (done,
    set_result), on anyio Events. On asyncio the client uses the loop's own futures and reader callback,
    which cost the loop least (docs/architecture.md, "Backends"). Its waiter is woken when the reply is
    there, or by `nudge` when it is to read the socket itself (`ForkServer._wait_reply`)."""

    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Received | None = None

    def done(self) -> bool:
        return self._value is not None

    def set_result(self, value: Received) -> None:
        self._value = value
        self._event.set()

    def nudge(self) -> None:
        """Wake the waiter without a reply: nobody reads the socket any more, and it is to."""
        self._event.set()

    async def wait(self) -> None:
        """Until the reply is there or the waiter is nudged."""
        await self._event.wait()
        if self._value is None:
            self._event = anyio.Event()


_Waiter = asyncio.Future[Received] | _Pending


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another anyio backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ForkServer:
    """The fork server process and the socket to it, replaced when it dies. Not thread-safe; used from one
    event loop, whose thread must be the one that created the Supervisor (PDEATHSIG).

    reply_timeout: seconds requests may wait while the server answers none of them; past it the server is
    taken for hung (SIGSTOPped, or stuck), killed, and replaced; its waiting requests fail (`watchdog`,
    which the Supervisor runs).
    start_soon: the supervisor's task group's start_soon, for the tasks that reap a dead server and the
    init it may have cloned without replying (set by the Supervisor; without it, close() reaps them).
    """

    reply_timeout = 10.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._slot: mmap.mmap | None = None
        self._send_lock = anyio.Lock()
        self._restart_lock = anyio.Lock()
        self._replies: collections.deque[_Waiter] = collections.deque()
        #: The asyncio loop (its futures and reader callback serve the replies), or None on trio (an
        #: anyio Event per reply and a reader task in the supervisor's task group).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False  # asyncio: the reader callback is on; trio: the reader task was started
        #: trio: who reads the socket now (one task at a time may wait on an fd there): the reader task
        #: (its token), a request waiting for its reply (its _Pending), or nobody (None).
        self._reader: object | None = None
        self._sent_policies: set[int] = set()  # the ids the fork server keeps, as far as sent
        self._forget: list[int] = []  # ids to tell it to forget, with the next request that leaves
        #: The policy ids the caller still uses (Supervisor._compiled); None: all. A request for another id
        #: carries its policy marked "once": the fork server drops it again after that request.
        self.live: set[int] | None = None
        #: Called with a new server's pid whenever one starts again (the denial observer registers it
        #: before the server makes any sandbox: supervisor/_observing.py).
        self.on_restart: Callable[[int], None] | None = None
        self._last_len = 0  # the size of the last message made, for EMSGSIZE's message
        self._answered = 0  # replies read from the current process
        self._progress_at = 0.0  # when the current process last answered (or was given work while idle)
        self._killed_hung = False
        self._deaths: collections.deque[float] = collections.deque()
        self._dead: list[tuple[subprocess.Popen[bytes], mmap.mmap | None, int]] = []  # not yet reaped
        self._closed = False
        self.caps_dict: ProbeReport = {}
        self._start_soon: Callable[..., object] | None = None
        #: Times the server was started again after a death (exporters and tests read it).
        self.restarts = 0

    @property
    def start_soon(self) -> Callable[..., object] | None:
        return self._start_soon

    @start_soon.setter
    def start_soon(self, start_soon: Callable[..., object] | None) -> None:
        """The supervisor's task group is there: on trio the socket's reader task can start now."""
        self._start_soon = start_soon
        if self._sock is not None and not self._reading:
            self._watch(self._sock)

    def _watch(self, sock: socket.socket) -> None:
        """Have `_on_reply` called whenever the socket is readable: a reader callback on asyncio, a task
        on trio (started once the supervisor's task group exists)."""
        if self._loop is not None:
            self._loop.add_reader(sock.fileno(), self._on_reply, sock)
            self._reading = True
        elif self._start_soon is not None:
            self._start_soon(self._read_task, sock)
            self._reading = True

    def _unwatch(self, sock: socket.socket) -> None:
        """Stop reading `sock` (about to be closed)."""
        if self._loop is not None:
            if self._reading:
                self._reading = False
                self._loop.remove_reader(sock.fileno())
            return
        self._reading = False
        self._reader = None
        with contextlib.suppress(RuntimeError):
            anyio.notify_closing(sock)  # whoever waits on it wakes with ClosedResourceError

    async def _read_task(self, sock: socket.socket) -> None:
        """The reader on backends without reader callbacks (trio): `_on_reply` at each readability, so
        that an idle server's death is seen at once. A task of the supervisor's group, so it ends when
        that group is cancelled, while requests sent under a shield (a pre-fork build, a caller's spawn)
        may still wait for their replies, or be sent only afterwards: a request whose reply is not there
        reads the socket itself whenever nobody else does (`_wait_reply`), so no reply depends on this
        task outliving them."""
        if self._reader is not None or sock is not self._sock:
            return
        token = self._reader = object()
        try:
            while sock is self._sock:
                try:
                    await anyio.wait_readable(sock)
                except (anyio.ClosedResourceError, OSError):
                    return
                self._on_reply(sock)
        finally:
            if self._reader is token:
                self._reader = None
                self._hand_over()

    def _hand_over(self) -> None:
        """Nobody reads the socket now: the oldest waiting request is to (trio)."""
        if self._replies:
            waiter = self._replies[0]
            if isinstance(waiter, _Pending):
                waiter.nudge()

    async def _wait_reply(self, sock: socket.socket, reply: _Pending) -> Received:
        """The reply to a request sent on `sock` (trio). The reader task hands it out; when nobody reads
        the socket (the reader task has ended with the supervisor's task group, or has not started),
        the waiting request reads it itself, one at a time, and hands out every reply that arrives; the
        next waiting one takes over when it has its own. While reading it also does the watchdog's work
        (which ends with the group too): past reply_timeout without a reply, the server is killed, then
        given up on. Called under the request's shield."""
        while not reply.done():
            if self._reader is not None or sock is not self._sock:
                if sock is not self._sock:  # replaced: _lost failed every request it had
                    reply.set_result((b"", [], 0))
                    break
                await reply.wait()
                continue
            self._reader = reply
            try:
                wait = self._progress_at + self.reply_timeout - time.monotonic()
                with anyio.move_on_after(max(wait, 0.0) + 0.05) as waited:
                    try:
                        await anyio.wait_readable(sock)
                    except (anyio.ClosedResourceError, OSError):
                        # Closed by _lost or close(), which failed this request; anything else is the
                        # socket's failure.
                        if sock is self._sock:
                            self._lost("the fork server's socket failed")
                        continue
                    self._on_reply(sock)
                if waited.cancelled_caught:
                    self._check_hung()
            finally:
                if self._reader is reply:
                    self._reader = None
                    self._hand_over()
        assert reply._value is not None
        return reply._value

    def start(self) -> None:
        """Start the server and read its probe report (blocking, ~30 ms, once). Raises SandboxSetupError."""
        self._loop = _asyncio_loop()
        proc, parent, slot = self._launch()
        data = parent.recv(protocol.MAX_REPLY)
        if not data:
            proc.wait()
            parent.close()
            slot.close()
            raise SandboxSetupError(
                "fork server",
                "start",
                hint=f"the fork server exited with status {proc.returncode} before its probe report",
            )
        self.caps_dict = marshal.loads(data)  # protocol.ProbeReport
        self._running(proc, parent, slot)

    def _launch(self) -> tuple[subprocess.Popen[bytes], socket.socket, mmap.mmap]:
        """A new server process, its socket, and the slot shared with it. Raises SandboxSetupError."""
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as err:  # EMFILE
            raise SandboxSetupError("fork server", "socketpair", err.errno or 0) from err
        slot_fd = -1
        try:
            slot_fd = os.memfd_create("corral-fork-slot", os.MFD_CLOEXEC)
            os.ftruncate(slot_fd, mmap.PAGESIZE)
            slot = mmap.mmap(slot_fd, mmap.PAGESIZE)
            # The interpreter pinned at import (supervisor/_interpreter.py), not `sys.executable` by its path:
            # a virtualenv's, in a directory a sandbox may write, would be what a command put there.
            argv0, python, keep = _interpreter.python()
            proc = subprocess.Popen(
                [argv0, "-I", "-S", "-c", protocol.BOOT, ROOT, str(child.fileno()), str(slot_fd)],
                executable=python,
                pass_fds=[child.fileno(), slot_fd, *keep],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Every sandbox init is a copy of this process: it must hold none of the supervisor's
                # environment (each request carries the child's own, filtered one). One diagnostic only:
                # CORRAL_SHARED_OVERLAYS, which the server takes out of its environment at once.
                env=_server_env(),
                start_new_session=True,  # terminal signals (Ctrl-C) go to the supervisor, which cleans up
            )
        except OSError as err:
            parent.close()
            if err.errno in (errno.EMFILE, errno.ENFILE):
                raise SandboxSetupError(
                    "fork server",
                    "start (memfd_create, pipe2, execve)",
                    err.errno,
                    hint="the supervisor is out of file descriptors: raise RLIMIT_NOFILE (ulimit -n)",
                ) from err
            raise SandboxSetupError(
                "fork server", f"execve({sys.executable})", err.errno or 0, sys.executable
            ) from err
        finally:
            child.close()
            if slot_fd >= 0:
                os.close(slot_fd)
        return proc, parent, slot

    @property
    def server_pid(self) -> int | None:
        """The fork server's pid (None before it started or after it ended)."""
        return self._proc.pid if self._proc is not None else None

    def _running(self, proc: subprocess.Popen[bytes], sock: socket.socket, slot: mmap.mmap) -> None:
        sock.setblocking(False)
        self._proc, self._sock, self._slot = proc, sock, slot
        self._answered = 0
        self._killed_hung = False
        self._sent_policies.clear()  # a new server knows no policy yet
        self._forget.clear()
        # Read all the time, not only while replies are awaited: the socket is readable only with a reply
        # or at EOF, so an idle server's death is noticed at once (and its orphan reaped).
        self._watch(sock)
        if self.on_restart is not None:
            self.on_restart(proc.pid)

    async def _ensure_running(self) -> None:
        """Start a server again if the last one died, after the back-off; raises SandboxSetupError past
        the restart limit or when the start fails."""
        if self._sock is not None:
            return
        async with self._restart_lock:
            if self._sock is not None:
                return
            if self._closed:
                raise SandboxSetupError("fork server", "spawn", hint="the supervisor is not running")
            now = time.monotonic()
            while self._deaths and now - self._deaths[0] > RESTART_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) > MAX_RESTARTS:
                raise SandboxSetupError(
                    "fork server",
                    "restart",
                    hint=f"it died {len(self._deaths)} times within {RESTART_WINDOW:.0f} s and is not "
                    f"started again for {RESTART_WINDOW - (now - self._deaths[0]):.0f} s; see its stderr",
                )
            if len(self._deaths) > 1:
                await anyio.sleep(min(2.0, 0.1 * 2 ** (len(self._deaths) - 2)))
            with anyio.CancelScope(shield=True):
                proc, sock, slot = self._launch()
                data = b""
                with anyio.move_on_after(10):
                    await anyio.wait_readable(sock)
                    with contextlib.suppress(OSError):
                        data = sock.recv(protocol.MAX_REPLY)
                if not data:
                    sock.close()
                    self._deaths.append(time.monotonic())
                    self._dead.append((proc, slot, -1))
                    proc.kill()
                    self._reap_dead_soon()
                    raise SandboxSetupError(
                        "fork server", "restart", hint="the new fork server did not start"
                    )
                self._running(proc, sock, slot)
                self.restarts += 1
                log.warning("fork server restarted (%d deaths in the last minute)", len(self._deaths))

    async def _exchange(
        self, request: Request, policy_id: int, compiled: CompiledPayload, fds: list[int]
    ) -> tuple[Reply, list[int], bool]:
        """Send one request and receive its reply: (reply, fds, whether fds were dropped: MSG_CTRUNC).
        Shielded from cancellation once sent: the reply may carry children that must be reaped. Raises
        SandboxSetupError when the server dies (or hangs past reply_timeout) with the request in flight;
        a request that could not be delivered to a dead server goes to its replacement.

        Requests are pipelined: each is sent at once and its reply awaited on a future that one reader
        callback resolves, in order (the fork server answers in the order it was asked). A lock and a
        wait_readable per request cost the loop more than the rest of the exchange, and kept the fork
        server waiting on this loop between two requests. A request that finds the socket full waits
        for it in turn (so others may overtake it): the message is therefore made at each attempt, with
        the compiled policy until a message with it has gone out (`_send`)."""
        loop = self._loop
        for attempt in range(2):
            await self._ensure_running()
            sock = self._sock
            if sock is None:
                continue
            reply: _Waiter = loop.create_future() if loop is not None else _Pending()
            with anyio.CancelScope(shield=True):
                anc = rights(fds)
                self._last_len = 0
                try:
                    try:
                        self._send(sock, request, policy_id, compiled, anc)
                    except BlockingIOError:  # the socket's buffer is full: wait, in turn
                        async with self._send_lock:
                            await self._send_when_writable(sock, request, policy_id, compiled, anc)
                except OSError as err:  # EPIPE, ECONNRESET: the server is gone
                    self._undelivered(err, sock, attempt)
                    continue  # not delivered: the next server takes it
                # No await between the send and this: the futures are in the order of the requests.
                if not self._replies:
                    self._progress_at = time.monotonic()
                self._replies.append(reply)
                # Resolved by _on_reply, or _lost (watchdog).
                if isinstance(reply, _Pending):
                    msg, ancdata, flags = await self._wait_reply(sock, reply)
                else:
                    msg, ancdata, flags = await reply
            if not msg:
                raise SandboxSetupError(
                    "fork server",
                    "recvmsg",
                    hint="the fork server died (or hung) with this request in flight; it is started again "
                    "for the next one (see its stderr)",
                )
            return protocol.decode_reply(msg), received_fds(ancdata), bool(flags & socket.MSG_CTRUNC)
        raise SandboxSetupError("fork server", "sendmsg", errno.EPIPE, hint="the fork server died")

    def _undelivered(self, err: OSError, sock: socket.socket, attempt: int) -> None:
        """A request could not be sent on `sock` (`err`): raise SandboxSetupError when it is too large for
        one message (EMSGSIZE) or was already the second attempt; else note the server's death (when
        `sock` is still the current server's) and return, for the next server to take the request."""
        if err.errno == errno.EMSGSIZE:
            raise SandboxSetupError(
                "fork server",
                "sendmsg",
                err.errno,
                hint=f"the request ({self._last_len} bytes: the command, its environment and "
                "the policy) is more than the fork server's socket takes in one message; pass "
                "large data through a file or stdin",
            ) from err
        if sock is self._sock:
            self._on_reply(sock)  # reads what it answered, then its EOF: replaced
            self._lost("the fork server died")
        if attempt != 0:
            raise SandboxSetupError(
                "fork server", "sendmsg", err.errno or 0, hint="the fork server died"
            ) from err

    async def _send_when_writable(
        self,
        sock: socket.socket,
        request: Request,
        policy_id: int,
        compiled: CompiledPayload,
        anc: list[tuple[int, int, array.array[int]]],
    ) -> None:
        """Send once the socket has room. Raises OSError (EPIPE once the server is replaced: the wait is
        cut into short ones, since a closed fd never turns writable; on trio, closing it wakes the wait
        with ClosedResourceError, which is the same death)."""
        while True:
            if sock is not self._sock:
                raise BrokenPipeError(errno.EPIPE, "the fork server died")
            try:
                self._send(sock, request, policy_id, compiled, anc)
                return
            except BlockingIOError:
                with anyio.move_on_after(0.1):
                    try:
                        await anyio.wait_writable(sock)
                    except anyio.ClosedResourceError as err:
                        raise BrokenPipeError(errno.EPIPE, "the fork server died") from err

    async def watchdog(self) -> None:
        """Notice a hung server (SIGSTOPped, or stuck): run in the supervisor's task group for its life.
        When requests wait and the server has answered none of them for reply_timeout, it is SIGKILLed
        (its EOF then fails the requests in flight, and the next request starts a new server); if even
        that brings no EOF within reply_timeout, the requests fail anyway. One timer for all requests,
        not one per request: the spawn path pays nothing for it."""
        while not self._closed:
            await anyio.sleep(min(self.reply_timeout / 4, 1.0))
            self._check_hung()

    def _check_hung(self) -> None:
        """The watchdog's check: past reply_timeout without a reply while requests wait, kill the server;
        the next time, give up on it."""
        if not self._replies or self._sock is None:
            return
        if time.monotonic() - self._progress_at < self.reply_timeout:
            return
        if not self._killed_hung and self._proc is not None:
            log.warning("fork server answered nothing for %.1f s: killing it", self.reply_timeout)
            self._killed_hung = True
            self._progress_at = time.monotonic()
            self._proc.kill()
        else:  # killed, yet no EOF: something else holds its socket
            self._lost("the fork server hung")

    def _on_reply(self, sock: socket.socket) -> None:
        """Reader callback: hand each reply that has arrived to the oldest waiting request; at EOF (the
        server is gone) fail every waiting request and have the server replaced."""
        while sock is self._sock:
            try:
                msg, ancdata, flags, _a = sock.recvmsg(
                    protocol.MAX_REPLY, socket.CMSG_SPACE(protocol.MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except ConnectionResetError:
                # The server died with requests unread: the kernel reports that once, ahead of the replies
                # still queued, which the next reads return (each names a sandbox to keep track of).
                continue
            except OSError:
                msg, ancdata, flags = b"", [], 0
            if not msg:
                self._lost("the fork server died")
                return
            self._answered += 1
            self._progress_at = time.monotonic()
            if not self._replies:  # nothing asked for it: never happens, but close what it carries
                for fd in received_fds(ancdata):
                    os.close(fd)
                continue
            fut = self._replies.popleft()
            fut.set_result((msg, ancdata, flags))

    def _lost(self, why: str) -> None:
        """The server is gone: fail the requests still waiting, and have it and the init it may have
        cloned for the request it was working on reaped. The next request starts a new server."""
        sock = self._sock
        if sock is None:
            return
        log.warning("%s; %d request(s) in flight fail", why, len(self._replies))
        self._unwatch(sock)
        self._fail_waiting()
        sock.close()
        self._sock = None
        if not self._closed:
            self._deaths.append(time.monotonic())
        if self._proc is not None:
            self._dead.append((self._proc, self._slot, self._answered))
            self._proc.kill()  # no-op if dead; a server that closed its socket is of no use alive
        self._proc = None
        self._slot = None
        self._reap_dead_soon()

    def _reap_dead_soon(self) -> None:
        if self.start_soon is not None and self._dead:
            dead, self._dead = self._dead, []
            for entry in dead:
                self.start_soon(_reap_dead_server, *entry)

    def _fail_waiting(self) -> None:
        """An empty reply, which the requests read as the server's death, to every waiting request."""
        for fut in self._replies:
            if not fut.done():
                fut.set_result((b"", [], 0))
        self._replies.clear()

    def _send(
        self,
        sock: socket.socket,
        request: Request,
        policy_id: int,
        compiled: CompiledPayload,
        anc: list[tuple[int, int, array.array[int]]],
    ) -> None:
        """Send the message for `request` (made now: what the fork server keeps may have changed while it
        waited): with the compiled policy until one carrying it has been sent, marked "once" when the
        caller no longer keeps that policy; with the ids the fork server is to forget first. Raises
        OSError (BlockingIOError: nothing was sent)."""
        request = request.copy()
        request["policy_id"] = policy_id
        keep = True
        if policy_id not in self._sent_policies:
            request["policy"] = compiled
            if self.live is not None and policy_id not in self.live:
                request["once"] = True
                keep = False
        forget = len(self._forget)
        if forget:
            request["forget"] = self._forget[:forget]
        payload = protocol.encode(request)
        self._last_len = len(payload)
        sock.sendmsg([payload], anc)
        if keep:
            self._sent_policies.add(policy_id)
        del self._forget[:forget]

    def forget(self, policy_id: int) -> None:
        """The caller no longer keeps this policy: the fork server drops it (its compiled policy and
        cached plan segments) before the next request it gets. A later request naming it sends it
        again."""
        if policy_id in self._sent_policies:
            self._sent_policies.discard(policy_id)
            self._forget.append(policy_id)

    async def _received(self, reply: Reply, got: list[int], truncated: bool, want: int) -> bool:
        """Whether the reply carries its `want` fds. If not, the sandbox it names (if any) is killed and
        reaped here and every fd received closed; raises SandboxSetupError when fds were dropped in
        flight (MSG_CTRUNC: the supervisor had no fd free for them)."""
        if not truncated and len(got) == want:
            return True
        for fd in got:
            os.close(fd)
        pid = reply.get("pid")
        if isinstance(pid, int) and pid > 0:
            # Our child (CLONE_PARENT) and not reaped, so the pid is still its own: as pid 1 of its pid
            # namespace, its death takes the sandbox with it (the caller kills the cgroup too).
            await kill_and_reap(pid)
        if truncated:
            raise SandboxSetupError(
                "supervisor",
                "recvmsg(SCM_RIGHTS) of the fork server's reply",
                errno.EMFILE,
                hint="no fd was free in the supervisor for the new sandbox's pidfd and status pipe, which "
                "was killed; raise RLIMIT_NOFILE (ulimit -n) or lower max_concurrency",
            )
        return False

    async def spawn(
        self, request: SpawnRequest, policy_id: int, compiled: CompiledPayload, fds: list[int]
    ) -> tuple[Reply, int | None, int | None]:
        """Send one spawn request; returns (reply, pidfd, status_fd), the fds None when no sandbox was
        started (or the one started was killed and reaped: the reply's error says why). The compiled
        policy is sent only the first time. Raises SandboxSetupError when the fork server is gone or
        the reply's fds were dropped."""
        reply, got, truncated = await self._exchange(request, policy_id, compiled, fds)
        if await self._received(reply, got, truncated, protocol.SPAWN_REPLY_FDS):
            return reply, got[0], got[1]
        return reply, None, None

    async def prefork(
        self,
        cwd: str,
        cgroup_procs: list[str],
        policy_id: int,
        compiled: CompiledPayload,
        view: bytes | None = None,
    ) -> tuple[Reply, tuple[int, int, int] | None]:
        """Ask for a sandbox that confines itself for this policy, workdir and cgroup ahead of its command;
        returns (reply, (pidfd, status_fd, ctl_fd)), None when no sandbox was started (or it was killed
        and reaped). `view`: the digest of the fingerprint the caller took before and checks the sandbox
        against (PreforkRequest). Raises SandboxSetupError when the fork server is gone."""
        request: PreforkRequest = {
            "op": "prefork",
            "cwd": cwd,
            "cgroup_procs": cgroup_procs,
            "policy_id": policy_id,
        }
        if view is not None:
            request["view"] = view
        reply, got, truncated = await self._exchange(request, policy_id, compiled, [])
        if await self._received(reply, got, truncated, protocol.PREFORK_REPLY_FDS):
            return reply, (got[0], got[1], got[2])
        return reply, None

    def close(self) -> None:
        """Stop the server (closing the socket ends its loop) and reap it, and whatever dead servers and
        orphaned inits are not reaped yet (blocking: at the supervisor's exit)."""
        self._closed = True
        if self._sock is not None:
            self._unwatch(self._sock)
            self._fail_waiting()  # replies still awaited end empty (the server is going)
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._dead.append((self._proc, self._slot, -1))
            self._proc = None
            self._slot = None
        dead, self._dead = self._dead, []
        for proc, slot, answered in dead:
            proc.kill()
            proc.wait()
            orphan = _orphan(slot, answered)
            if orphan:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(orphan, 0)


def _orphan(slot: mmap.mmap | None, answered: int) -> int:
    """The init a dead server cloned for the request it never answered, or 0. The slot holds the pid of
    its last clone (stored by the kernel before the init ran) and the number of the request it was for;
    every request before `answered` + 1 was answered, its init known. Closes the slot."""
    if slot is None:
        return 0
    pid, number = protocol.SLOT.unpack_from(slot, 0)
    slot.close()
    return pid if pid > 0 and answered >= 0 and number == answered + 1 else 0


async def _reap_dead_server(proc: subprocess.Popen[bytes], slot: mmap.mmap | None, answered: int) -> None:
    """Reap a dead (killed) fork server; then kill and reap the init it cloned without answering for it.
    The slot is read only once the server is reaped: it can clone nothing after that."""
    with anyio.CancelScope(shield=True):
        delay = 0.001
        while proc.poll() is None:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
        orphan = _orphan(slot, answered)
        if orphan:
            log.warning("killing sandbox init %d, cloned by a fork server that died before replying", orphan)
            await kill_and_reap(orphan)


async def kill_and_reap(pid: int) -> None:
    """SIGKILL our child `pid` (a sandbox init nobody else knows: never reaped, so the pid is still its
    own) and reap it, polling with WNOHANG: it needs no fd, so it works when none is free, and never
    blocks the loop. Shielded: the child is reaped even if the caller is cancelled."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        delay = 0.001
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never waits
            except ChildProcessError:
                return
            if done:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)


class StatusReader:
    """Reads a sandbox init's status pipe: its records (protocol.py, "Status records") in order."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._buf = b""

    async def next(self) -> Record | None:
        """The next record, or None at EOF (the init is gone) or after a malformed one. Cancellation:
        nothing is lost (a record half read stays buffered)."""
        while True:
            try:
                split = protocol.split_record(self._buf)
            except protocol.Malformed:
                self._malformed()
                return None
            if split is not None:
                record, self._buf = split
                return record
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


def _server_env() -> dict[str, str]:
    """The fork server's environment: empty but for CORRAL_SHARED_OVERLAYS, when it is a number of seconds
    (server._shared_overlays)."""
    value = os.environ.get("CORRAL_SHARED_OVERLAYS", "")
    try:
        float(value)
    except ValueError:
        return {}
    return {"CORRAL_SHARED_OVERLAYS": value}
