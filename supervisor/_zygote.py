"""The fork server: a small single-threaded process, started once per Supervisor, that creates sandboxed
children on request. Standard library only; it runs as `python -I -S` (see _forkserver.BOOT).

Why a fork server: the supervisor is multi-threaded (asyncio, worker threads), and running Python in a child
forked from a multi-threaded process can deadlock on locks held by other threads; starting a fresh interpreter
per child costs 13-18 ms. This process never has a second thread, so its forks may run Python safely, and it
stays small, so forking it is cheap.

Each child is created with a raw clone(2) carrying the namespace flags and CLONE_PARENT, so that the child is
born inside its namespaces and is a child of the supervisor itself: the supervisor reaps it through a pidfd,
and the child's PDEATHSIG fires when the supervisor dies. The child (pid 1 of its pid namespace, called the
sandbox init) confines itself in `_confine`, forks the target, which execs, and then relays the target's exec
result and exit status to the supervisor over the status pipe.

Status pipe records: one byte kind + 4-byte length + marshal payload.
  E  setup or exec failure: {"layer", "operation", "errno", "path", "hint"}
  X  exec succeeded: {"pid": target pid inside the namespace}
  S  the target's wait status: {"status": int}
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import gc
import marshal
import os
import select
import signal
import socket
import struct
import sys

from supervisor.sandbox import (
    _sys,
    capabilities,
    landlock,
    mounts,
    namespaces,
    probe,
    rlimits,
    seccomp,
)

_CLONE_PARENT = 0x00008000
_CLONE_NEWCGROUP = 0x02000000
_SIGCHLD = 17
_CLOSE_RANGE_CLOEXEC = 4
_MAX_FDS = 64

_pythonapi = ctypes.PyDLL(None, use_errno=True)  # PyDLL: keeps the GIL across the clone call
_raw_syscall = _pythonapi.syscall
_raw_syscall.restype = ctypes.c_long


def _clone(flags: int) -> int:
    """fork(2) with namespace flags: stack 0 means the child continues on a copy of our stack."""
    ret: int = _raw_syscall(ctypes.c_long(_sys.nr("clone")), ctypes.c_ulong(flags), None, None, None, None)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return ret


def _record(fd: int, kind: bytes, payload: dict[str, object]) -> None:
    data = marshal.dumps(payload)
    os.write(fd, kind + struct.pack("=I", len(data)) + data)


# ----------------------------------------------------------------------------------------------------------
# The child: confinement, in order.


def _confine(pol: dict[str, object], req: dict[str, object], supervisor_pidfd: int) -> None:
    """Apply every containment step to the sandbox init, in this order. Raises SetupFailure.

    Runs in the cloned child, already inside its new user/pid/net/mount/ipc/uts namespaces, with its id maps
    written and its cgroup placed by the fork server before it was released.
    """
    # 1. Die with the supervisor. PDEATHSIG is set first so that no later step can outlive it; the poll
    #    closes the race where the supervisor died between clone and prctl.
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([supervisor_pidfd], [], [], 0)[0]:
        os._exit(125)
    os.close(supervisor_pidfd)
    # 2. New session: no controlling terminal, so TIOCSTI cannot push keystrokes into the caller's shell.
    os.setsid()
    # 3. Cgroup namespace now, not at clone time: the fork server has moved us into our leaf cgroup, so the
    #    namespace root is the leaf and the child sees nothing of the host's hierarchy.
    ns = pol["ns"]
    if pol["cgroupns"]:
        try:
            _sys.libc_call("unshare", _CLONE_NEWCGROUP)
        except OSError as err:
            raise _sys.SetupFailure("namespaces", "unshare(CLONE_NEWCGROUP)", err.errno or 0) from err
    # 4. Hostname and loopback: need CAP_SYS_ADMIN/CAP_NET_ADMIN in the new namespaces, so before the drop.
    namespaces.apply(ns)  # type: ignore[arg-type]
    # 5. Mounts: need CAP_SYS_ADMIN, and must precede Landlock (a Landlock domain forbids mounting) so that
    #    the Landlock rules refer to the new tmpfs inodes. Ends with chdir(workdir) into the new view.
    workdir = str(req["cwd"])
    if pol["mounts"] is not None:
        mounts.apply(pol["mounts"], workdir)  # type: ignore[arg-type]
    else:
        try:
            os.chdir(workdir)
        except OSError as err:
            raise _sys.SetupFailure("mounts", "chdir(workdir)", err.errno or 0, workdir) from err
    # 6. rlimits only lower limits, which needs no capability, but do it while the process is still ours.
    rlimits.apply(pol["rlimits"])  # type: ignore[arg-type]
    # 7. Capabilities: everything above needed them; nothing below does.
    capabilities.apply(pol["caps"])  # type: ignore[arg-type]
    # 8. no_new_privs: required by Landlock and by unprivileged seccomp; no exec can regain privilege.
    capabilities.set_no_new_privs()
    # 9. Landlock after the mounts it describes and after no_new_privs.
    if pol["landlock"] is not None:
        landlock.apply(pol["landlock"])  # type: ignore[arg-type]
    # 10. seccomp last: its filter denies syscalls the steps above use (mount, unshare, ...).
    if pol["seccomp"] is not None:
        seccomp.apply(pol["seccomp"])  # type: ignore[arg-type]


_target_pid = 0


def _forward(signum: int, _frame: object) -> None:
    # The init is pid 1 of the namespace: signals sent to it would be ignored by a target running as pid 1,
    # so the init catches them and passes them on to the target, which gets ordinary signal semantics.
    if _target_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_target_pid, signum)


_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)


_ALL_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


def _spawn_target(req: dict[str, object], stdio: list[int]) -> int:
    """Start the command as pid 2 with posix_spawn (vfork semantics: no copy of this Python image, and
    exec errors come back synchronously). Its stdio goes to 0/1/2 and the explicitly passed fds to 3, 4,...;
    every other fd is close-on-exec; all signals are reset to default and unblocked (the fork server
    ignores some, and ignored dispositions survive exec). Returns the pid; raises OSError from execve."""
    # Mark every fd close-on-exec, then dup2 the wanted ones into place: dup2 clears the flag on the copy.
    _sys.syscall("close_range", 3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC)
    # Lift every source above the target numbers first, so that no dup2 overwrites a later source (and no
    # higher than needed: RLIMIT_NOFILE, already lowered, caps the fd numbers).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(stdio)) for fd in stdio]
    actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(high)]
    argv: list[bytes] = req["argv"]  # type: ignore[assignment]
    env: dict[bytes, bytes] = req["env"]  # type: ignore[assignment]
    name = argv[0]
    try:
        if b"/" in name:
            return os.posix_spawn(
                name, argv, env, file_actions=actions, setsigdef=_ALL_SIGNALS, setsigmask=[]
            )
        return _spawnp(name, argv, env, actions)
    finally:
        for fd in high:
            os.close(fd)


def _spawnp(
    name: bytes, argv: list[bytes], env: dict[bytes, bytes], actions: list[tuple[int, int, int]]
) -> int:
    """posix_spawn with a PATH search in the child's environment, like execvp(3): EACCES on a file that
    exists is reported over ENOENT elsewhere on PATH."""
    saved: OSError | None = None
    for d in env.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin").split(b":"):
        try:
            return os.posix_spawn(
                os.path.join(d or b".", name),
                argv,
                env,
                file_actions=actions,
                setsigdef=_ALL_SIGNALS,
                setsigmask=[],
            )
        except OSError as e:
            if e.errno not in (2, 20) and saved is None:
                saved = e
    raise saved or FileNotFoundError(2, "No such file or directory")


def _sandbox_init(
    pol: dict[str, object],
    req: dict[str, object],
    stdio: list[int],
    sync_r: int,
    status_w: int,
    supervisor_pidfd: int,
) -> None:
    """Pid 1 of the sandbox. Never returns."""
    global _target_pid
    if os.read(sync_r, 1) != b"g":  # the fork server failed to set us up (maps, cgroup): give up
        os._exit(125)
    os.close(sync_r)
    try:
        _confine(pol, req, supervisor_pidfd)
    except _sys.SetupFailure as failure:
        _record(status_w, b"E", failure.to_dict())
        os._exit(125)
    except OSError as err:
        _record(
            status_w,
            b"E",
            {
                "layer": "setup",
                "operation": str(err),
                "errno": err.errno or 0,
                "path": None,
                "hint": "",
            },
        )
        os._exit(125)
    for sig in _FORWARDED:
        signal.signal(sig, _forward)
    try:
        pid = _spawn_target(req, stdio)
    except OSError as err:
        argv0 = req["argv"][0]  # type: ignore[index]
        _record(
            status_w,
            b"E",
            {
                "layer": "exec",
                "operation": "execve",
                "errno": err.errno or 0,
                "path": os.fsdecode(argv0),
                "hint": "",
            },
        )
        os._exit(127)
    _target_pid = pid
    for fd in stdio:
        os.close(fd)  # so that the caller sees EOF when the target and its children are done
    _record(status_w, b"X", {"pid": pid})
    while True:  # reap orphans reparented to us until the target itself is reaped
        try:
            reaped, status, ru = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if reaped == pid:
            break
    # The target's own usage (with its reaped descendants), not the init's: the init is a copy of the
    # fork server and its RSS would mask a small command's peak.
    _record(
        status_w,
        b"S",
        {"status": status, "cpu": ru.ru_utime + ru.ru_stime, "maxrss": ru.ru_maxrss * 1024},
    )
    os._exit(0)


# ----------------------------------------------------------------------------------------------------------
# The server loop.


def _spawn(
    sock_fd: int,
    req: dict[str, object],
    fds: list[int],
    cache: dict[int, dict[str, object]],
    supervisor_pidfd: int,
) -> tuple[dict[str, object], list[int]]:
    key = req["policy_id"]
    assert isinstance(key, int)
    if "policy" in req:
        cache[key] = req["policy"]  # type: ignore[assignment]
    pol = cache[key]
    ns: dict[str, object] = pol["ns"]  # type: ignore[assignment]
    flags = int(ns["flags"]) & ~_CLONE_NEWCGROUP  # type: ignore[call-overload]
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = _clone(flags | _CLONE_PARENT | _SIGCHLD)
    except OSError as err:
        for fd in (sync_r, sync_w, status_r, status_w):
            os.close(fd)
        failure = _sys.SetupFailure("namespaces", f"clone(flags={flags:#x})", err.errno or 0)
        return {"error": failure.to_dict()}, []
    if pid == 0:
        try:
            os.close(sock_fd)
            os.close(sync_w)
            os.close(status_r)
            _sandbox_init(pol, req, fds, sync_r, status_w, supervisor_pidfd)
        finally:
            os._exit(125)
    os.close(sync_r)
    os.close(status_w)
    pidfd = os.pidfd_open(pid)
    reply: dict[str, object] = {"pid": pid}
    try:
        namespaces.write_id_maps(pid, ns)
        for path in req.get("cgroup_procs", ()):  # type: ignore[attr-defined]
            try:
                with open(path, "w") as f:
                    f.write(str(pid))
            except OSError as err:
                raise _sys.SetupFailure("cgroups", "write cgroup.procs", err.errno or 0, path) from err
        os.write(sync_w, b"g")
    except _sys.SetupFailure as failure:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        reply["error"] = failure.to_dict()
    finally:
        os.close(sync_w)
    return reply, [pidfd, status_r]


def main(sock_fd: int) -> None:
    """Serve spawn requests on the SOCK_SEQPACKET socket `sock_fd` until it closes."""
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    supervisor_pidfd = os.pidfd_open(os.getppid())
    if select.select([supervisor_pidfd], [], [], 0)[0]:
        sys.exit(0)
    # Writing a child's uid_map needs us to be dumpable even after running as another uid.
    _sys.prctl(_sys.PR_SET_DUMPABLE, 1)
    sock = socket.socket(fileno=sock_fd)
    sock.sendall(marshal.dumps(probe.probe_in_fork_server()))
    # Every page a child writes is copied on write. A garbage collection in a child would touch every
    # object header, so there is none: the server allocates little and frees by reference counting, and
    # what exists now is frozen out of the collector's reach.
    gc.disable()
    gc.freeze()
    cache: dict[int, dict[str, object]] = {}
    fd_space = socket.CMSG_SPACE(_MAX_FDS * 4)
    while True:
        msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, fd_space)
        if not msg:
            return
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
                fds.extend(arr)
        out: list[int] = []
        try:
            req = marshal.loads(msg)
            reply, out = _spawn(sock_fd, req, fds, cache, supervisor_pidfd)
        except Exception as exc:
            reply = {
                "error": {
                    "layer": "fork server",
                    "operation": repr(exc),
                    "errno": 0,
                    "path": None,
                    "hint": "this is a corral bug; please report it",
                }
            }
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendmsg(
            [marshal.dumps(reply)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", out))] if out else [],
        )
        for fd in out:
            os.close(fd)
