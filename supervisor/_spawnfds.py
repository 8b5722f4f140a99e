"""The fds of one spawn, and who owns each (Supervisor._spawn's one fd owner)."""

from __future__ import annotations

import os
import socket
import subprocess
from types import TracebackType
from typing import IO

from supervisor._errors import SandboxSetupError
from supervisor._stdio_files import StdioFiles
from supervisor._streams import FdReceiveStream, FdSendStream
from supervisor.forkserver.protocol import SpawnRequest
from supervisor.sandbox._ops import INLINE_COMMAND_MAX

StdioArg = int | IO[bytes] | None
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


class SpawnFds:
    """Every fd a spawn sends, and the ownership of each, as a context manager.

    `fds`: the list sent with the request (or handed to a pre-forked sandbox): the command's stdin, stdout,
    stderr, the caller's pass_fds, and a large command's memfd last. Three kinds are in it:
      - the caller's (its own fds, pass_fds): never closed here;
      - the supervisor's /dev/null: shared by every child, never closed here;
      - the child's ends of new pipes and the command's memfd: corral's, closed when the block is left,
        whatever happened (once sent, the receiver holds its own copies; unsent, nobody needs them);
      - the files given as stdio opened again out of the command's reach for metadata (StdioFiles:
        supervisor/_stdio_files.py): kept, with what is to be put back when the child ends, until
        `take_stdio_files()` hands them over; settled when the block is left otherwise.
    Our ends of the new pipes (stdin's write end, stdout's and stderr's read ends) are corral's until
    `streams()` hands them to the Child's streams; if the block is left before that (by an error or a
    cancellation), they are closed with the rest. So is our end of the proxy channel (network mode
    "proxy": the init sends the proxy's listening socket on it) unless `take_proxy_channel` took it.

    Raises SandboxSetupError (the supervisor's EMFILE/ENFILE) from `add_stdio` and `add_command`.
    """

    def __init__(self, devnull: int, stdio_files: StdioFiles | None = None) -> None:
        self.fds: list[int] = []
        self._devnull = devnull
        self._stdio_files = stdio_files  # ours, until take_stdio_files()
        self._sent: list[int] = []  # ours, closed on leaving the block
        self._kept: list[int | None] = [None, None, None]  # ours, until streams()
        self._proxy: socket.socket | None = None  # ours, until take_proxy_channel()

    def __enter__(self) -> SpawnFds:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sent, self._sent = self._sent, []
        for fd in sent:
            os.close(fd)
        kept, self._kept = self._kept, [None, None, None]
        for end in kept:
            if end is not None:
                os.close(end)
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.close()
        files, self._stdio_files = self._stdio_files, None
        if files is not None:
            files.close()

    def add_stdio(self, stdin: StdioArg, stdout: StdioArg, stderr: StdioArg, pass_fds: list[int]) -> None:
        """The command's fds 0, 1, 2 (a new pipe for PIPE, /dev/null for DEVNULL, the caller's own fd for
        an fd or a file, the supervisor's own 0/1/2 for None), then `pass_fds` as 3, 4, ... Given this
        spawn's StdioFiles (made for the three slots and `pass_fds`), each slot it reopened gets its new
        fd."""
        try:
            for index, arg in enumerate((stdin, stdout, stderr)):
                self.fds.append(self._stdio(index, arg))
        except OSError as err:
            raise _fd_error(err) from err
        self.fds.extend(pass_fds)
        if self._stdio_files is not None:  # the files given as stdio and pass_fds, opened again (StdioShield)
            self.fds[:] = [
                new if new >= 0 else fd for new, fd in zip(self._stdio_files.fds, self.fds, strict=True)
            ]

    def take_stdio_files(self) -> StdioFiles | None:
        """This spawn's StdioFiles (None when no slot was a caller's fd), which the caller owns from now
        on: `settle()` them when the child has ended, then close their `take_trees()`."""
        files, self._stdio_files = self._stdio_files, None
        return files

    def _stdio(self, index: int, arg: StdioArg) -> int:
        if arg is None:
            return index
        if arg == PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            child_end, our_end = (r, w) if index == 0 else (w, r)
            self._sent.append(child_end)
            self._kept[index] = our_end
            return child_end
        if arg == DEVNULL:
            return self._devnull
        if isinstance(arg, int):
            return arg
        return arg.fileno()

    def add_command(self, request: SpawnRequest, command: bytes) -> None:
        """The command into `request`: inline, or, too large for one socket message, in a memfd sent last."""
        if len(command) <= INLINE_COMMAND_MAX:
            request["cmd"] = command
            return
        request["cmd_fd"] = True
        try:
            fd = os.memfd_create("corral-command", os.MFD_CLOEXEC)
            self._sent.append(fd)
            view = memoryview(command)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as err:
            raise _fd_error(err) from err
        self.fds.append(fd)

    def add_proxy_channel(self, request: SpawnRequest) -> None:
        """A socket pair on which the init sends the proxy's listening socket (made in the sandbox's network
        namespace): its end goes with the fds, before a command memfd, which must stay the last fd, and
        `request["proxy_fd"]` says where."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proxy = ours
        self._sent.append(theirs.detach())
        at = len(self.fds) - 1 if request.get("cmd_fd") else len(self.fds)
        self.fds.insert(at, self._sent[-1])
        request["proxy_fd"] = at

    def take_proxy_channel(self) -> socket.socket | None:
        """Our end of the proxy channel (None when none was made), which the caller owns from now on."""
        proxy, self._proxy = self._proxy, None
        return proxy

    def streams(self) -> tuple[FdSendStream | None, FdReceiveStream | None, FdReceiveStream | None]:
        """Our ends of the new pipes as the Child's stdin, stdout and stderr streams (None where the slot
        had no PIPE), which own them from now on."""
        stdin, stdout, stderr = self._kept
        self._kept = [None, None, None]
        return (
            FdSendStream(stdin) if stdin is not None else None,
            FdReceiveStream(stdout) if stdout is not None else None,
            FdReceiveStream(stderr) if stderr is not None else None,
        )


def _fd_error(err: OSError) -> SandboxSetupError:
    """An fd the supervisor could not make for a child (EMFILE, ENFILE), as the typed error."""
    return SandboxSetupError(
        "supervisor",
        "make the child's stdio (pipe2, memfd_create)",
        err.errno or 0,
        hint="the supervisor is out of file descriptors: raise RLIMIT_NOFILE (ulimit -n; corral lifts the "
        "soft limit to the hard one at start) or lower max_concurrency",
    )
