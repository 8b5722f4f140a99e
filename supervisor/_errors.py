"""Errors raised by the supervisor. All derive from `policies.CorralError`.

OSError is translated into these in one place per layer, always with ``raise ... from err``. Every
message is one printable, bounded line (`printable`, applied by `CorralError.__str__`): paths and command
names in it may have been chosen by a sandbox.
"""

from __future__ import annotations

import errno as _errno
import os

from policies import CorralError
from policies._errors import printable

__all__ = [
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "SandboxSetupError",
    "SpawnError",
    "SupervisorClosedError",
    "printable",
]

#: Longest rendering of a path or command name inside a message.
MAX_NAME = 400


def _errname(code: int) -> str:
    return _errno.errorcode.get(code, str(code)) if code else ""


class SandboxSetupError(CorralError):
    """A containment layer the policy asks for could not be applied; the child did not run.

    layer: the mechanism (namespaces, mounts, landlock, seccomp, capabilities, rlimits, cgroups, ...);
    operation: the syscall or step; path: the file involved, if any; errno: the error number (0 if none);
    hint: what to do about it (for example set best_effort, or enable a sysctl).

    The third and fourth positional arguments may come in either order, errno then path or (as the design
    notes write the fields: `SandboxSetupError(layer, operation, path, errno)`) path then errno: a path is
    a string, an errno an int. Raises TypeError for any other types there.
    """

    def __init__(
        self,
        layer: str,
        operation: str,
        errno: int | str = 0,
        path: str | int | None = None,
        hint: str = "",
    ) -> None:
        if isinstance(errno, str) and (path is None or isinstance(path, int)):
            errno, path = path or 0, errno  # (layer, operation, path[, errno])
        if not isinstance(errno, int) or not (path is None or isinstance(path, str)):
            msg = f"SandboxSetupError: errno must be an int and path a str (got {errno!r}, {path!r})"
            raise TypeError(msg)
        self.layer = layer
        self.operation = operation
        self.errno = errno
        self.path = path
        self.hint = hint
        parts = [f"{layer}: {operation} failed"]
        if errno:
            parts.append(f": {_errname(errno)} ({os.strerror(errno)})")
        if path:
            parts.append(f" on {printable(path, MAX_NAME)}")
        if hint:
            parts.append(f"; {hint}")
        super().__init__("".join(parts))


class SpawnError(CorralError):
    """The command itself could not be started (setup succeeded). `exit_code` is 126 or 127 per the CLI
    contract; `errno` is the execve error."""

    exit_code = 126

    def __init__(self, argv0: str, errno: int, detail: str = "") -> None:
        self.argv0 = argv0
        self.errno = errno
        msg = f"{printable(argv0, MAX_NAME)}: {os.strerror(errno)} ({_errname(errno)})"
        super().__init__(msg + (f"; {detail}" if detail else ""))


class CommandNotFoundError(SpawnError):
    """execve found no such file on PATH (exit status 127)."""

    exit_code = 127


class CommandNotExecutableError(SpawnError):
    """The file exists but cannot be executed: permissions, format, or the policy's execute rule (126)."""

    exit_code = 126


class SupervisorClosedError(CorralError):
    """The supervisor is not running (used outside `async with`, or after it closed)."""


class CommandFailedError(CorralError):
    """`run(..., check=True)`: the command exited non-zero (or was killed). `result` is its full Result
    (exit code, violation, captured output); `cmd` the argv as given."""

    def __init__(self, cmd: list[str], result: object) -> None:
        self.cmd = cmd
        self.result = result
        code = getattr(result, "exit_code", None)
        violation = getattr(result, "violation", None)
        why = f"killed for a {violation.kind} violation" if violation is not None else f"exit status {code}"
        super().__init__(f"{cmd[0] if cmd else '?'}: {why}")


class SupervisorRunningError(CorralError, RuntimeError):
    """The Supervisor was entered again while its block is still running."""
