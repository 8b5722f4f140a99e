"""Supervisor side of the fork server: start it, send spawn requests, receive pidfds.

The fork server is the only process the supervisor ever forks, once, with subprocess (which execs at once in
the child, running no Python there). It must be started from the thread that runs the event loop: the sandbox
children's PDEATHSIG is tied to that thread.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import marshal
import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio

from supervisor._errors import SandboxSetupError
from supervisor.sandbox._sys import received_fds, rights

_ROOT = str(Path(__file__).resolve().parent.parent)

# Loads supervisor.* submodules without running supervisor/__init__.py (which imports anyio and the API):
# the fork server stays a small, stdlib-only interpreter, so forking it is cheap.
BOOT = (
    "import sys, types\n"
    "m = types.ModuleType('supervisor'); m.__path__ = [sys.argv[1] + '/supervisor']\n"
    "sys.modules['supervisor'] = m\n"
    "from supervisor._zygote import main\n"
    "main(int(sys.argv[2]))\n"
)

_MAX_FDS = 64


class ForkServer:
    """One fork server process and the socket to it. Not thread-safe; used from one event loop."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._send_lock = anyio.Lock()
        self._replies: collections.deque[asyncio.Future[tuple[bytes, list[tuple[int, int, bytes]]]]] = (
            collections.deque()
        )
        self._reading = False
        self._sent_policies: set[int] = set()  # the ids the fork server keeps, as far as sent
        self._forget: list[int] = []  # ids to tell it to forget, with the next request that leaves
        #: The policy ids the caller still uses (Supervisor._compiled); None: all. A request for another id
        #: carries its policy marked "once": the fork server drops it again after that request.
        self.live: set[int] | None = None
        self._last_len = 0  # the size of the last message made, for EMSGSIZE's message
        self.caps_dict: dict[str, object] = {}

    def start(self) -> None:
        """Start the server and read its probe report (blocking, ~30 ms, once). Raises SandboxSetupError."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOT, _ROOT, str(child.fileno())],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Every sandbox init is a copy of this process: it must hold none of the supervisor's
                # environment (each request carries the child's own, filtered one).
                env={},
                start_new_session=True,  # terminal signals (Ctrl-C) go to the supervisor, which cleans up
            )
        except OSError as err:
            parent.close()
            raise SandboxSetupError(
                "fork server", f"execve({sys.executable})", err.errno or 0, sys.executable
            ) from err
        finally:
            child.close()
        data = parent.recv(1 << 16)
        if not data:
            self._proc.wait()
            parent.close()
            raise SandboxSetupError(
                "fork server",
                "start",
                hint=f"the fork server exited with status {self._proc.returncode} before its probe report",
            )
        self.caps_dict = marshal.loads(data)
        parent.setblocking(False)
        self._sock = parent

    async def _exchange(
        self, request: dict[str, object], policy_id: int, compiled: dict[str, object], fds: list[int]
    ) -> tuple[dict[str, object], list[int]]:
        """Send one request and receive its reply, shielded from cancellation: once sent, the reply may
        carry children that must be reaped. Raises SandboxSetupError when the fork server is gone.

        Requests are pipelined: each is sent at once and its reply awaited on a future that one reader
        callback resolves, in order (the fork server answers in the order it was asked). A lock and a
        wait_readable per request cost the loop more than the rest of the exchange, and kept the fork
        server waiting on this loop between two requests. A request that finds the socket full waits
        for it in turn (so others may overtake it): the message is therefore made at each attempt, with
        the compiled policy until a message with it has gone out (`_send`)."""
        sock = self._sock
        if sock is None:
            raise SandboxSetupError("fork server", "spawn", hint="the supervisor is not running")
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[tuple[bytes, list[tuple[int, int, bytes]]]] = loop.create_future()
        with anyio.CancelScope(shield=True):
            anc = rights(fds)
            self._last_len = 0
            try:
                try:
                    self._send(sock, request, policy_id, compiled, anc)
                except BlockingIOError:  # the socket's buffer is full: wait, in turn
                    async with self._send_lock:
                        while True:
                            try:
                                self._send(sock, request, policy_id, compiled, anc)
                                break
                            except BlockingIOError:
                                await anyio.wait_writable(sock)
            except OSError as err:  # EPIPE, ECONNRESET: the server is gone
                if err.errno == errno.EMSGSIZE:
                    raise SandboxSetupError(
                        "fork server",
                        "sendmsg",
                        err.errno,
                        hint=f"the request ({self._last_len} bytes: the command, its environment and the "
                        "policy) is more than the fork server's socket takes in one message; pass large "
                        "data through a file or stdin",
                    ) from err
                raise SandboxSetupError(
                    "fork server", "sendmsg", err.errno or 0, hint="the fork server died"
                ) from err
            # No await between the send and this: the futures are in the order of the requests.
            self._replies.append(reply)
            if not self._reading:
                loop.add_reader(sock.fileno(), self._on_reply, sock)
                self._reading = True
            msg, ancdata = await reply
        if not msg:
            raise SandboxSetupError("fork server", "recvmsg", hint="the fork server died; see its stderr")
        return marshal.loads(msg), received_fds(ancdata)

    def _on_reply(self, sock: socket.socket) -> None:
        """Reader callback: hand each reply that has arrived to the oldest waiting request; at EOF or on
        an error, an empty reply to every waiting request."""
        while self._replies:
            try:
                msg, ancdata, _f, _a = sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                msg, ancdata = b"", []
            if not msg:  # the server is gone: every waiting request fails
                self._fail_waiting()
                break
            self._replies.popleft().set_result((msg, ancdata))
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._reading = False

    def _fail_waiting(self) -> None:
        """An empty reply, which the requests read as the server's death, to every waiting request."""
        for fut in self._replies:
            fut.set_result((b"", []))
        self._replies.clear()

    def _send(
        self,
        sock: socket.socket,
        request: dict[str, object],
        policy_id: int,
        compiled: dict[str, object],
        anc: list[tuple[int, int, array.array[int]]],
    ) -> None:
        """Send the message for `request` (made now: what the fork server keeps may have changed while it
        waited): with the compiled policy until one carrying it has been sent, marked "once" when the
        caller no longer keeps that policy; with the ids the fork server is to forget first. Raises
        OSError (BlockingIOError: nothing was sent)."""
        request = dict(request, policy_id=policy_id)
        keep = True
        if policy_id not in self._sent_policies:
            request["policy"] = compiled
            if self.live is not None and policy_id not in self.live:
                request["once"] = True
                keep = False
        forget = len(self._forget)
        if forget:
            request["forget"] = self._forget[:forget]
        payload = marshal.dumps(request)
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

    async def spawn(
        self, request: dict[str, object], policy_id: int, compiled: dict[str, object], fds: list[int]
    ) -> tuple[dict[str, object], int | None, int | None]:
        """Send one spawn request; returns (reply, pidfd, status_fd), the fds None when the clone itself
        failed. The compiled policy is sent only the first time. Raises SandboxSetupError when the fork
        server is gone."""
        reply, got = await self._exchange(request, policy_id, compiled, fds)
        if len(got) == 2:
            return reply, got[0], got[1]
        for fd in got:
            os.close(fd)
        return reply, None, None

    async def prefork(
        self, cwd: str, cgroup_procs: list[str], policy_id: int, compiled: dict[str, object]
    ) -> tuple[dict[str, object], tuple[int, int, int] | None]:
        """Ask for a sandbox that confines itself for this policy, workdir and cgroup ahead of its command;
        returns (reply, (pidfd, status_fd, ctl_fd)), None when the clone itself failed. Raises
        SandboxSetupError when the fork server is gone."""
        request: dict[str, object] = {"op": "prefork", "cwd": cwd, "cgroup_procs": cgroup_procs}
        reply, got = await self._exchange(request, policy_id, compiled, [])
        if len(got) == 3:
            return reply, (got[0], got[1], got[2])
        for fd in got:
            os.close(fd)
        return reply, None

    def close(self) -> None:
        """Stop the server (closing the socket ends its loop) and reap it."""
        if self._sock is not None:
            if self._reading:  # replies still awaited: they end empty (the server is going)
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                self._reading = False
                self._fail_waiting()
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
