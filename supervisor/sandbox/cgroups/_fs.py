"""cgroupfs I/O shared by the leaf and the manager: reads and writes that translate OSError into
SandboxSetupError (`setup_error`, the one place), the directory locks that prove a supervisor alive, and the
kill of a cgroup subtree. Synchronous, blocking (sleeps while retrying): never on the event loop."""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import logging
import os
import re
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor._errors import SandboxSetupError
    from supervisor.sandbox.cgroups._layout import Hierarchy

log = logging.getLogger("corral.cgroups")

NIP_HINT = (
    "cgroup v2's no-internal-processes rule: a cgroup that holds processes cannot enable "
    "controllers for its children. Run corral as the only process of its cgroup (it then moves "
    "itself into a leaf, as nsjail does), e.g. `systemd-run --user --scope -p Delegate=yes "
    "corral ...`, pass delegate= an empty delegated "
    "cgroup, or set best_effort to run without cgroup limits"
)


def errno_hint(code: int, operation: str) -> str:
    if code in (_errno.EACCES, _errno.EPERM):
        return (
            f"uid {os.geteuid()} may not do this: run as root, or use a delegated cgroup (cgroup "
            "v2: start under `systemd-run --user --scope -p Delegate=yes`; cgroup v1: have root "
            "mkdir and chown a "
            "directory in each hierarchy and pass it as delegate=), or set best_effort"
        )
    if code == _errno.EROFS:
        return (
            "cgroupfs is mounted read-only (a container without its own writable cgroup tree?): "
            "run the container with a private cgroup namespace and a writable /sys/fs/cgroup, or "
            "set best_effort"
        )
    if code == _errno.EBUSY and "subtree_control" in operation:
        return NIP_HINT
    if code == _errno.EBUSY:
        return "processes are still in the cgroup: kill() it and reap the child first"
    if code == _errno.ENOENT:
        return (
            "the interface file is missing: the controller is not enabled in the parent's "
            "cgroup.subtree_control (v2) or not compiled into this kernel"
        )
    if code == _errno.ENOSPC:
        return "cgroup.max.descendants or cgroup.max.depth of an ancestor is reached"
    if code == _errno.EINVAL:
        return "the kernel rejected the value"
    if code == _errno.EOPNOTSUPP:
        return "this cgroup's type does not allow the operation (a threaded cgroup?)"
    return ""


def setup_error(err: OSError, operation: str, path: str | None, hint: str | None = None) -> SandboxSetupError:
    """The one place OSError becomes SandboxSetupError(layer="cgroups"); callers `raise ... from
    err`."""
    from supervisor._errors import SandboxSetupError

    code = err.errno or 0
    return SandboxSetupError(
        "cgroups", operation, code, path, errno_hint(code, operation) if hint is None else hint
    )


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def write_or_raise(path: str, data: str) -> None:
    try:
        write(path, data)
    except OSError as err:
        raise setup_error(err, f"write {data!r} to {os.path.basename(path)}", path) from err


def mkdir(path: str, exist_ok: bool = False) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not exist_ok:
            raise
    except OSError as err:
        raise setup_error(err, f"mkdir {os.path.basename(path)}", path) from err


def read_pids(cgroup_dir: str) -> list[int]:
    try:
        return [int(x) for x in read(os.path.join(cgroup_dir, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def subtree_dirs(top: str) -> list[str]:
    """`top` and every cgroup below it, deepest first (rmdir order)."""
    if not os.path.isdir(top):
        return []
    out = [root for root, _dirs, _files in os.walk(top, topdown=False)]
    return out


def subtree_pids(dirs: list[str]) -> set[int]:
    pids: set[int] = set()
    for top in dirs:
        for d in subtree_dirs(top):
            pids.update(read_pids(d))
    return pids


def proc_stat(proc_root: str, pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of `pid`, or None when there is no such process."""
    try:
        data = read(os.path.join(proc_root, str(pid), "stat"))
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def owner_alive(pid: int, start: int | None, proc_root: str = "/proc") -> bool:
    """Whether the supervisor that named a cgroup `<prefix>-<pid>[-<start>]` still runs: `pid`
    exists, is not a zombie, and (when the name carries it) started at `start`, so a reused pid does
    not keep garbage alive."""
    st = proc_stat(proc_root, pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    return start is None or st[1] == start


def stale_name_re(prefix: str) -> re.Pattern[str]:
    """Matches the names corral gives its parent cgroups (and v2 self leaves) for `prefix`: `lock` is set
    for names whose owner holds their lock (today's), None for the earlier, pid-judged format."""
    tail = (
        r"-(?P<pid>[0-9]+)(?:-(?P<start>[0-9]+))?"
        r"(?:-l(?P<lock>[0-9a-f]{8})|(?:\.(?P<inst>[0-9]+))?)(?P<self>\.self)?"
    )
    return re.compile(re.escape(prefix) + tail)


#: Locks on the `.self` cgroups this process moved itself into: held for the life of the process (it stays
#: there after its manager closes), so that no other supervisor takes it for a dead one's.
SELF_LOCKS: list[int] = []


def try_lock(path: str) -> int | None:
    """An fd of the directory `path` holding flock(LOCK_EX), or None when another open file holds the lock
    (its owner is alive). Raises OSError when it cannot be opened (gone, EACCES: then nothing is proven)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def mkdir_locked(path: str, timeout: float = 5.0) -> int:
    """Create the directory `path` (or take it over if it exists unlocked) and hold its lock: returns the
    fd. A starting supervisor may take the lock of the directory between the mkdir and the flock (it
    then removes it, being empty and unlocked): so the lock is taken without waiting, retried while held,
    and the directory made again when the one locked is no longer the one at `path`. Raises
    SandboxSetupError."""
    deadline = time.monotonic() + timeout
    while True:
        mkdir(path, exist_ok=True)
        try:
            fd = try_lock(path)
        except FileNotFoundError:
            continue  # removed by a sweeper between the two: make it again
        except OSError as err:
            raise setup_error(err, "open+flock cgroup", path) from err
        if fd is not None:
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            continue
        if time.monotonic() >= deadline:  # a sweeper holds it no longer than an empty cgroup's removal
            busy = OSError(_errno.EWOULDBLOCK, "locked by another process")
            raise setup_error(busy, "flock cgroup", path)
        time.sleep(0.002)


def rmdir_retry(path: str, deadline: float) -> None:
    """rmdir, retrying on EBUSY until `deadline` while killed tasks finish exiting. Raises
    OSError."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != _errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.002)


def signal_all(pids: set[int]) -> None:
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def v1_freeze(freezer_dir: str, timeout: float) -> bool:
    """Write FROZEN and wait until the group reads FROZEN (tasks in uninterruptible sleep can delay
    it). Returns whether it froze in time; the caller kills and thaws either way."""
    write(os.path.join(freezer_dir, "freezer.state"), "FROZEN")
    deadline = time.monotonic() + timeout
    while True:
        if read(os.path.join(freezer_dir, "freezer.state")).strip() == "FROZEN":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def kill_places(places: list[tuple[Hierarchy, str]], timeout: float) -> bool:
    """SIGKILL every process in the given cgroup subtrees, the same group seen through each
    hierarchy.

    v2: cgroup.kill (kernel >= 5.14) kills the subtree atomically, forks included. v1: freeze,
    SIGKILL every pid listed (frozen tasks cannot fork or exit, so the list is complete and no pid
    is reused under us), thaw. Without either, SIGKILL rounds until empty. Waits up to `timeout` for
    the subtree to empty (killed tasks leave cgroup.procs when they exit, before they are reaped);
    returns whether it did. Raises OSError.
    """
    dirs = [d for _h, d in places if os.path.isdir(d)]
    if not dirs:
        return True
    pids = subtree_pids(dirs)
    if os.getpid() in pids:
        # Freezing or cgroup.kill would hit the caller itself; only signal the others.
        log.warning("cgroups: %s holds this process; signalling the others only", dirs)
        signal_all(pids)
        return False
    killed = False
    for h, d in places:
        if h.version == 2 and os.path.exists(os.path.join(d, "cgroup.kill")):
            write(os.path.join(d, "cgroup.kill"), "1")
            killed = True
    if not killed:
        freezers = [
            d for h, d in places if h.version == 1 and "freezer" in h.controllers and os.path.isdir(d)
        ]
        try:
            for d in freezers:
                if not v1_freeze(d, min(timeout, 1.0)):
                    log.warning("cgroups: %s did not reach FROZEN in time; killing anyway", d)
            signal_all(subtree_pids(dirs))
        finally:
            for d in freezers:
                with contextlib.suppress(FileNotFoundError):
                    write(os.path.join(d, "freezer.state"), "THAWED")
    deadline = time.monotonic() + timeout
    while True:
        left = subtree_pids(dirs)
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        signal_all(left)  # stragglers: forked between the freeze-less list and the signal
        time.sleep(0.002)
