"""Raw syscalls through ctypes, shared by the mechanism modules and the probe. Standard library only (runs in
the fork server)."""

from __future__ import annotations

import array
import ctypes
import os
import platform
import select
import socket
from typing import TypedDict

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

MACHINE = platform.machine()

# Syscall numbers differ per architecture; the ones corral issues itself through `syscall` (the probe) or
# names in a filter self-check (seccomp). x86_64 and aarch64 (generic table).
_NR: dict[str, dict[str, int]] = {
    "x86_64": {"landlock_create_ruleset": 444, "seccomp": 317, "capget": 125, "getpid": 39},
    "aarch64": {"landlock_create_ruleset": 444, "seccomp": 277, "capget": 90, "getpid": 172},
}


class FailureRecord(TypedDict):
    """A SetupFailure's fields, as they cross the process boundary (supervisor/forkserver/protocol.py: a
    reply's error, the status record E), and as SandboxSetupError carries them to the caller."""

    layer: str
    operation: str
    errno: int
    path: str | None
    hint: str


class SetupFailure(Exception):
    """A containment step failed (in the sandbox init, or already while the fork server planned it). Plain
    fields so it crosses the status pipe as builtins.

    layer: the mechanism (``namespaces``, ``mounts``, ``landlock``, ``seccomp``, ``capabilities``,
    ``rlimits``, ``cgroups``, ``exec``...); operation: the syscall with its key arguments; path: the file
    involved, if any; errno: the error number (0 when not an OS error); hint: what to do about it.
    """

    def __init__(
        self, layer: str, operation: str, errno: int = 0, path: str | None = None, hint: str = ""
    ) -> None:
        super().__init__(layer, operation, errno, path, hint)
        self.layer = layer
        self.operation = operation
        self.errno = errno
        self.path = path
        self.hint = hint

    def to_dict(self) -> FailureRecord:
        return {
            "layer": self.layer,
            "operation": self.operation,
            "errno": self.errno,
            "path": self.path,
            "hint": self.hint,
        }


def nr(name: str) -> int:
    """The syscall number of `name` on this machine. Raises OSError(ENOSYS) on an unknown architecture."""
    try:
        return _NR[MACHINE][name]
    except KeyError:
        raise OSError(38, f"corral does not know syscall {name} on {MACHINE}") from None


def syscall(name: str, *args: object) -> int:
    """Issue syscall `name`; returns its result or raises OSError with the errno."""
    ret: int = _syscall(ctypes.c_long(nr(name)), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def raw_syscall(number: int) -> int:
    """syscall(`number`) without arguments, for a number no name stands for (an x32 call: the number with
    the x32 bit set). Raises OSError with the errno."""
    ret: int = _syscall(ctypes.c_long(number))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {number:#x}: {os.strerror(err)}")
    return ret


def libc_call(func: str, *args: object) -> int:
    """Call a libc function that returns -1 and sets errno on failure; raises OSError."""
    ret: int = getattr(_libc, func)(*args)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{func}: {os.strerror(err)}")
    return ret


_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); raises OSError. Prebound argtypes: the capability drop calls it ~40 times per spawn."""
    ret: int = _prctl(option, arg2, arg3, arg4, arg5)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return ret


def readable(fd: int) -> bool:
    """Whether `fd` polls readable now (a pidfd: its process has exited). poll(2), not select(2): select
    fails (ValueError) for fd numbers of 1024 and up, which a supervisor with ~130 children reaches.
    Raises OSError."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def rights(fds: list[int]) -> list[tuple[int, int, array.array[int]]]:
    """The sendmsg() ancillary list passing `fds` (SCM_RIGHTS); empty for no fds. Every sender of fds uses
    it: the supervisor to the fork server and to a pre-forked sandbox, the fork server back."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of the SCM_RIGHTS messages in a recvmsg() ancillary list (both ends of the fork server's
    socket use it)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


# prctl options used by several modules (the sandbox init's own are in _cinit.c)
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
