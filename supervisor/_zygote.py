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

A pre-forked sandbox (op "prefork") does all of that ahead of its request, for a given policy, workdir and
cgroup, and then waits on a socket for the command alone; the supervisor hands it the command directly (see
supervisor/_prefork.py, which also decides when such a sandbox may still serve a request).

Status pipe records: one byte kind + 4-byte length + marshal payload.
  E  setup or exec failure: {"layer", "operation", "errno", "path", "hint"}
  R  (pre-forked sandbox) confined and waiting for its command: {}
  X  exec succeeded: {"pid": target pid inside the namespace}
  S  the target's wait status: {"status", "cpu", "maxrss", "alone"}; alone: every other process of the
     sandbox is gone (the init killed and reaped them), so the result is final before the init exits
"""

from __future__ import annotations

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

    Runs in the cloned child, already inside its new user/pid/net/mount/ipc/uts namespaces with its id maps
    written and placed in its cgroup. `req` needs only "cwd": a pre-forked sandbox runs all of this before
    its command is known (the path-dependent steps 6 onward included; the supervisor checks at the request
    that the paths they looked at are unchanged, else the request takes a sandbox built on the spot).
    """
    # 0. Into the cgroup leaf first, so that everything the sandbox does is charged and limited there; the
    #    command inherits it. (A v1 migration can wait out an RCU grace period: done here it delays only
    #    this sandbox, not the fork server.)
    _place(req.get("cgroup_procs", []))  # type: ignore[arg-type]
    # 1. Die with the supervisor. PDEATHSIG is set first so that no later step can outlive it; the poll
    #    closes the race where the supervisor died between clone and prctl.
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([supervisor_pidfd], [], [], 0)[0]:
        os._exit(125)
    os.close(supervisor_pidfd)
    # 2. New session: no controlling terminal, so TIOCSTI cannot push keystrokes into the caller's shell.
    os.setsid()
    # 3. The mount, network, ipc and uts namespaces (see namespaces.py for why here, not at clone), the
    #    hostname and loopback: need CAP_SYS_ADMIN/CAP_NET_ADMIN in the new user namespace, so before the
    #    drop.
    namespaces.apply(pol["ns"])  # type: ignore[arg-type]
    #    Paths under /tmp, /run or /dev that the request needs are opened (O_PATH), in the new mount
    #    namespace, before step 4 replaces those; step 6 binds them back.
    keep = mounts.keep_visible(pol["mounts"], str(req["cwd"])) if pol["mounts"] is not None else []  # type: ignore[arg-type]
    # 4. The path-independent part of the filesystem view (read-only host tree, tmpfs over /run, minimal
    #    /dev, private /tmp, fresh /proc): needs CAP_SYS_ADMIN and must precede Landlock, which forbids
    #    mounting and whose rules must see the new tmpfs inodes.
    if pol["mounts"] is not None:
        mounts.apply_base(pol["mounts"])  # type: ignore[arg-type]
    # 5. Cgroup namespace now, not at clone time: the fork server has moved us into our leaf cgroup, so the
    #    namespace root is the leaf and the child sees nothing of the host's hierarchy.
    if pol["cgroupns"]:
        try:
            _sys.libc_call("unshare", _CLONE_NEWCGROUP)
        except OSError as err:
            raise _sys.SetupFailure("namespaces", "unshare(CLONE_NEWCGROUP)", err.errno or 0) from err
    # 6. The path-dependent mounts, which depend on what exists now (a .git/hooks made since the last
    #    sandbox must be protected): writable roots, protected paths, denied paths; then chdir(workdir)
    #    into the new view.
    workdir = str(req["cwd"])
    if pol["mounts"] is not None:
        mounts.apply_paths(pol["mounts"], workdir, keep)  # type: ignore[arg-type]
    else:
        try:
            os.chdir(workdir)
        except OSError as err:
            raise _sys.SetupFailure("mounts", "chdir(workdir)", err.errno or 0, workdir) from err
    # 7. rlimits only lower limits, which needs no capability, but do it while the process is still ours.
    rlimits.apply(pol["rlimits"])  # type: ignore[arg-type]
    # 8. Capabilities (bounding, ambient, effective, permitted, inheritable; securebits): everything above
    #    needed them; nothing below does.
    capabilities.apply(pol["caps"])  # type: ignore[arg-type]
    # 9. no_new_privs: required by Landlock and by unprivileged seccomp; no exec can regain privilege.
    capabilities.set_no_new_privs()
    # 10. Landlock after the mounts it describes and after no_new_privs.
    if pol["landlock"] is not None:
        landlock.apply(pol["landlock"])  # type: ignore[arg-type]
    # 11. seccomp last: its filter denies syscalls the steps above use (mount, unshare, ...).
    if pol["seccomp"] is not None:
        seccomp.apply(pol["seccomp"])  # type: ignore[arg-type]


def _failure_record(status_w: int, err: BaseException) -> None:
    if isinstance(err, _sys.SetupFailure):
        _record(status_w, b"E", err.to_dict())
    else:
        errno = getattr(err, "errno", 0) or 0
        _record(
            status_w,
            b"E",
            {"layer": "setup", "operation": repr(err), "errno": errno, "path": None, "hint": ""},
        )


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


def _name_self() -> None:
    """Show as corral-init, not python, in ps, top and perf (the supervisor and fork server are python)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write("corral-init")


def _sandbox_init(
    pol: dict[str, object],
    req: dict[str, object],
    stdio: list[int],
    sync_r: int,
    status_w: int,
    supervisor_pidfd: int,
) -> None:
    """Pid 1 of a sandbox made for one request. Never returns."""
    if os.read(sync_r, 1) != b"g":  # the fork server failed to write our id maps: give up
        os._exit(125)
    os.close(sync_r)
    _name_self()
    try:
        _confine(pol, req, supervisor_pidfd)
    except Exception as err:  # anything that escapes must still be reported
        _failure_record(status_w, err)
        os._exit(125)
    _run_target(req, stdio, status_w)


def _stub_init(
    pol: dict[str, object],
    cwd: str,
    procs: list[str],
    sync_r: int,
    status_w: int,
    ctl: socket.socket,
    supervisor_pidfd: int,
) -> None:
    """Pid 1 of a pre-forked sandbox: every containment step now, for the workdir `cwd` and the cgroup
    whose cgroup.procs files are `procs`; then an R record, then wait for the request (argv, env, stdio)
    on `ctl` (EOF: discarded, exit) and run it. Never returns."""
    if os.read(sync_r, 1) != b"g":
        os._exit(125)
    os.close(sync_r)
    _name_self()
    try:
        _confine(pol, {"cwd": cwd, "cgroup_procs": procs}, supervisor_pidfd)
    except Exception as err:  # anything that escapes must still be reported
        _failure_record(status_w, err)
        os._exit(125)
    _record(status_w, b"R", {})
    req, stdio = _recv(ctl)
    ctl.close()
    if req is None:
        os._exit(0)
    _run_target(req, stdio, status_w)


def _run_target(req: dict[str, object], stdio: list[int], status_w: int) -> None:
    """Start the command, relay its exec result, reap until it exits, relay its status. Never returns."""
    global _target_pid
    # Not dumpable: the command, same uid and same Landlock domain, must not ptrace the init or read its
    # /proc/1/mem and /proc/1/environ (a copy of the fork server's memory). The fork server's uid_map
    # write, which needed the opposite, is long done.
    _sys.prctl(_sys.PR_SET_DUMPABLE, 0)
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
    # The command is done; as pid 1 of the namespace, end whatever it left behind (a double-forked
    # daemon) and reap it all before reporting, so that the report itself says the sandbox is empty:
    # the supervisor can then return the result without waiting for this process to exit and its
    # namespaces to be torn down.
    alone = os.getpid() == 1
    if alone:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                os.wait4(-1, 0)
            except ChildProcessError:
                break
    # The target's own usage (with its reaped descendants), not the init's: the init is a copy of the
    # fork server and its RSS would mask a small command's peak.
    cpu = ru.ru_utime + ru.ru_stime
    _record(status_w, b"S", {"status": status, "cpu": cpu, "maxrss": ru.ru_maxrss * 1024, "alone": alone})
    os._exit(0)


# ----------------------------------------------------------------------------------------------------------
# The server loop.


def _recv(sock: socket.socket) -> tuple[dict[str, object] | None, list[int]]:
    """One marshal message and the fds sent with it; (None, []) at EOF."""
    msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(_MAX_FDS * 4))
    fds = _sys.received_fds(ancdata)
    if not msg:
        for fd in fds:
            os.close(fd)
        return None, []
    return marshal.loads(msg), fds


def _send(sock: socket.socket, payload: dict[str, object], fds: list[int]) -> None:
    sock.sendmsg([marshal.dumps(payload)], _sys.rights(fds))


class _Server:
    """The request loop's state: the compiled policies, by id."""

    def __init__(self, supervisor_pidfd: int) -> None:
        self.supervisor_pidfd = supervisor_pidfd
        self.policies: dict[int, dict[str, object]] = {}

    def _policy(self, req: dict[str, object]) -> dict[str, object]:
        key = req["policy_id"]
        assert isinstance(key, int)
        if "policy" in req:
            self.policies[key] = req["policy"]  # type: ignore[assignment]
        return self.policies[key]

    def _clone(self, pol: dict[str, object], keep: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """clone the init; returns (pid, sync_r, sync_w, status_r, status_w) in the parent, or pid 0 in the
        child, where every fd above 2 is closed but the sync and status ends, the supervisor's pidfd and
        `keep`: the init holds nothing of the server's (another child's pipe end held here would keep that
        child's output from ever reaching EOF). Raises SetupFailure."""
        flags = namespaces.clone_flags(pol["ns"])  # type: ignore[arg-type]
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _clone(flags | _CLONE_PARENT | _SIGCHLD)
        except OSError as err:
            for fd in (sync_r, sync_w, status_r, status_w):
                os.close(fd)
            raise _sys.SetupFailure("namespaces", f"clone(flags={flags:#x})", err.errno or 0) from err
        if pid == 0:
            _close_all_but({sync_r, status_w, self.supervisor_pidfd, *keep})
        return pid, sync_r, sync_w, status_r, status_w

    def _release(self, pid: int, pidfd: int, ns: dict[str, object], sync_w: int) -> None:
        """Write the id maps, then let the init go. Raises SetupFailure (the init is killed first)."""
        try:
            namespaces.write_id_maps(pid, ns)
            os.write(sync_w, b"g")
        except _sys.SetupFailure:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            raise
        finally:
            os.close(sync_w)

    def spawn(self, req: dict[str, object], fds: list[int]) -> tuple[dict[str, object], list[int]]:
        """A sandbox for this request, set up from scratch. Reply fds: [pidfd, status_r]."""
        pol = self._policy(req)
        try:
            pid, sync_r, sync_w, status_r, status_w = self._clone(pol, tuple(fds))
        except _sys.SetupFailure as failure:
            return {"error": failure.to_dict()}, []
        if pid == 0:
            try:
                _sandbox_init(pol, req, fds, sync_r, status_w, self.supervisor_pidfd)
            finally:
                os._exit(125)
        return self._finish_clone(pid, pol, sync_r, sync_w, status_w, [status_r])

    def prefork(self, req: dict[str, object]) -> tuple[dict[str, object], list[int]]:
        """A sandbox that confines itself fully for the policy, workdir and cgroup of `req` and then waits
        for its command on a socket. Reply fds: [pidfd, status_r, the socket's supervisor end]."""
        pol = self._policy(req)
        procs: list[str] = req.get("cgroup_procs", [])  # type: ignore[assignment]
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, sync_r, sync_w, status_r, status_w = self._clone(pol, (ctl_child.fileno(),))
        except _sys.SetupFailure as failure:
            ctl_parent.close()
            ctl_child.close()
            return {"error": failure.to_dict()}, []
        if pid == 0:
            try:
                _stub_init(pol, str(req["cwd"]), procs, sync_r, status_w, ctl_child, self.supervisor_pidfd)
            finally:
                os._exit(125)
        ctl_child.close()
        reply, out = self._finish_clone(pid, pol, sync_r, sync_w, status_w, [status_r])
        out.append(ctl_parent.detach())
        return reply, out

    def _finish_clone(
        self,
        pid: int,
        pol: dict[str, object],
        sync_r: int,
        sync_w: int,
        status_w: int,
        out: list[int],
    ) -> tuple[dict[str, object], list[int]]:
        """Parent side after the clone: write the init's id maps and let it go."""
        os.close(sync_r)
        os.close(status_w)
        pidfd = os.pidfd_open(pid)
        reply: dict[str, object] = {"pid": pid}
        try:
            self._release(pid, pidfd, pol["ns"], sync_w)  # type: ignore[arg-type]
        except _sys.SetupFailure as failure:
            reply["error"] = failure.to_dict()
        return reply, [pidfd, *out]


def _close_all_but(keep: set[int]) -> None:
    """Close every fd above 2 except `keep` (close_range(2) over the gaps)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _place(procs: list[str]) -> None:
    """Move this process into its cgroup (writing 0 to one cgroup.procs per hierarchy moves the writer)."""
    for path in procs:
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as err:
            raise _sys.SetupFailure("cgroups", "write cgroup.procs", err.errno or 0, path) from err


def main(sock_fd: int) -> None:
    """Serve requests on the SOCK_SEQPACKET socket `sock_fd` until it closes.

    Requests (marshal dicts; the compiled policy is sent with the first request naming its policy_id):
      spawn:   {argv, env, cwd, cgroup_procs, policy_id[, policy]} with the stdio (+ passed) fds;
               reply {"pid"[, "error"]} with fds [pidfd, status_r] (none when the clone itself failed).
      prefork: {"op": "prefork", cwd, cgroup_procs, policy_id[, policy]}; reply {"pid"[, "error"]} with
               fds [pidfd, status_r, ctl]: the sandbox confines itself, writes an R record and takes its
               command (argv, env, stdio fds) on ctl.
    """
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
    server = _Server(supervisor_pidfd)
    while True:
        req, fds = _recv(sock)
        if req is None:
            return
        out: list[int] = []
        try:
            if req.get("op") == "prefork":
                reply, out = server.prefork(req)
            else:
                reply, out = server.spawn(req, fds)
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
        _send(sock, reply, out)
        for fd in out:
            os.close(fd)
