"""The child's filesystem view, built in its private mount namespace.

- the whole host tree is remounted read-only (defence in depth under Landlock: a write that Landlock would
  miss still meets a read-only mount), then each writable root is bind-mounted writable over itself;
- protected paths inside writable roots (.git/hooks, .git/config) are bind-mounted read-only over themselves:
  Landlock can only grant, never subtract, so a read-only mount is what keeps them read-only. A mount point
  cannot be renamed or unlinked (EBUSY), and .git itself is made a mount point so it cannot be swapped out;
- private tmpfs on /tmp and /dev/shm, a tmpfs over /run (and a real /var/run) so no host unix socket (the
  docker.sock class) is reachable by path;
- a minimal /dev (null, zero, full, random, urandom, tty, a private devpts, /dev/fd links);
- a fresh /proc for the new pid namespace, with /proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus
  read-only (as bubblewrap does);
- denied paths hidden under an empty read-only tmpfs (directories) or /dev/null (files).

Unlike the other mechanism modules, `apply` comes in two phases, `apply_base` (what does not depend on the
state of the policy's paths) and `apply_paths` (what does), with `keep_visible` opening beforehand what the
base phase would otherwise hide. A pre-forked sandbox runs both before its command is known; `fingerprint`
is what the supervisor checks at the request to know that the paths they looked at are unchanged.
"""

from __future__ import annotations

import ctypes
import os
import stat
from typing import TYPE_CHECKING

from supervisor.sandbox import _sys

if TYPE_CHECKING:
    from policies import Policy

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")


def prepare(policy: Policy, ns: dict[str, object]) -> dict[str, object] | None:
    """Plan the mount operations. Returns None when there is no mount namespace (the caller records the
    missing layer). Paths are normalised here; existence is checked in the child at spawn time, because the
    tree can change between spawns (a `git init` creates .git/hooks)."""
    if not ns["flags"] or not (int(ns["flags"]) & 0x00020000):  # type: ignore[call-overload]
        return None
    fs = policy.filesystem
    return {
        "confine": fs.confine,
        "private_tmp": fs.private_tmp or fs.confine,
        "proc": bool(int(ns["flags"]) & 0x20000000),  # type: ignore[call-overload]
        "private_net": bool(ns["net"]),
        "write": [os.path.normpath(p) for p in fs.write] if fs.confine else [],
        "read": [os.path.normpath(p) for p in fs.read if p != "/"] if fs.confine else [],
        "deny": [os.path.normpath(p) for p in fs.deny] if fs.confine else [],
        "protected": list(fs.protected) if fs.confine else [],
        # mount_ns itself is namespaces' to report.
        "enforced": ["readonly_root", "private_tmp", "hidden_run", "minimal_dev"] if fs.confine else [],
    }


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    try:
        _sys.libc_call(
            "mount",
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
    except OSError as err:
        what = fstype or ("bind" if flags & MS_BIND else "remount")
        raise _sys.SetupFailure("mounts", f"mount({what}, flags={flags:#x})", err.errno or 0, target) from err


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _setattr(path: str, set_: int, clr: int, recursive: bool) -> None:
    attr = _MountAttr(set_, clr, 0, 0)
    try:
        _sys.syscall(
            "mount_setattr",
            -100,  # AT_FDCWD
            path.encode(),
            AT_RECURSIVE if recursive else 0,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        )
    except OSError as err:
        raise _sys.SetupFailure("mounts", "mount_setattr(MOUNT_ATTR_RDONLY)", err.errno or 0, path) from err


def _bind(path: str, readonly: bool) -> None:
    _mount(path, path, None, MS_BIND | MS_REC)
    if readonly:
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    else:
        # The bind inherits the read-only flag we put on the whole tree; clear it on this root only.
        _setattr(path, 0, MOUNT_ATTR_RDONLY, recursive=False)


def _tmpfs(target: str, mode: str, readonly: bool = False) -> None:
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    _mount("tmpfs", target, "tmpfs", flags, f"mode={mode},size=50%")


_HIDDEN = ("/tmp", "/run", "/var/run", "/dev")

#: Denied paths already hidden in this sandbox's mount namespace (by apply_base, before apply_paths).
_hidden: set[str] = set()


def _under_hidden(path: str) -> bool:
    return any(path == h or path.startswith(h + "/") for h in _HIDDEN)


def _open_path(path: str) -> int | None:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _sys.SetupFailure("mounts", "open(O_PATH)", err.errno or 0, path) from err


def reusable(prepared: dict[str, object] | None, workdir: str) -> bool:
    """Whether a sandbox whose base view (`apply_base`) was built before the request can serve it: only when
    nothing the request needs lies under a path the base view replaces (those must be opened first)."""
    if prepared is None:
        return True
    paths = [*prepared["write"], *prepared["read"], workdir]  # type: ignore[misc]
    return not any(_under_hidden(p) for p in paths)


def fingerprint(prepared: dict[str, object] | None, workdir: str) -> tuple[object, ...]:
    """Everything the view built by `apply_base` + `apply_paths` depends on, as seen from the host now: the
    identity (device, inode, type) or absence of the workdir, every writable and readable root, every
    protected path and its top directory under each writable root (after git expansion: core.hooksPath,
    submodule git dirs), and every denied path. A sandbox built ahead of its request serves it only while
    the fingerprint taken around its build still holds at the request (see supervisor/_prefork.py); any
    difference (a `git init`, a new credential file, a replaced root) sends the request down the path that
    builds its view at request time. Never raises."""
    out: list[object] = [_identity(workdir)]
    if prepared is None:
        return tuple(out)
    write: list[str] = prepared["write"]  # type: ignore[assignment]
    for root in [*write, *prepared["read"]]:  # type: ignore[misc]
        out.append((root, _identity(root)))
    if prepared["confine"]:
        for root in write:
            try:
                expanded = _expand_git(root, prepared["protected"])  # type: ignore[arg-type]
            except OSError as err:  # unreadable .git/config or modules: a distinct state of its own
                expanded = [f"error {err.errno}"]
            for rel in expanded:
                path = os.path.join(root, rel)
                top = os.path.join(root, rel.split("/", 1)[0])
                out.append((path, _identity(path), _identity(top)))
        out += [(path, _identity(path)) for path in prepared["deny"]]  # type: ignore[attr-defined]
    return tuple(out)


def _identity(path: str) -> tuple[int, int, int] | int:
    """(st_dev, st_ino, st_mode) of `path` without following a final symlink, or the errno of lstat."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return err.errno or -1
    return st.st_dev, st.st_ino, st.st_mode


def keep_visible(prepared: dict[str, object], workdir: str) -> list[tuple[str, int, bool]]:
    """Open (O_PATH) the writable roots, readable roots and workdir that lie under a path the base view
    replaces (/tmp, /run, /dev), before it does: `apply_paths` binds them back on top. Raises SetupFailure."""
    keep: list[tuple[str, int, bool]] = []  # (path, O_PATH fd, writable)
    write: list[str] = prepared["write"]  # type: ignore[assignment]
    read: list[str] = prepared["read"]  # type: ignore[assignment]
    for path, writable in [*((p, True) for p in write), *((p, False) for p in read), (workdir, False)]:
        if _under_hidden(path) and not any(k[0] == path for k in keep):
            fd = _open_path(path)
            if fd is not None:
                keep.append((path, fd, writable))
    return keep


def apply_base(prepared: dict[str, object]) -> None:
    """Child side, phase 1 (pid 1 of the new pid namespace, inside the new mount and user namespaces, with
    full capabilities there): the part of the view that does not depend on the state of the policy's paths:
    private propagation, the read-only host tree, tmpfs over /run, a minimal /dev, private /tmp and
    /dev/shm, a fresh /proc. Raises SetupFailure."""
    confine = bool(prepared["confine"])
    # Nothing we mount may propagate back to the host's mount namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if confine:
        _setattr("/", MOUNT_ATTR_RDONLY, 0, recursive=True)
        _hide_sockets()
        _dev()
        if prepared["private_net"] and os.path.isdir("/sys/class/net"):
            _net_class()
    if prepared["private_tmp"]:
        _tmpfs("/tmp", "1777")
        if not confine and os.path.isdir("/dev/shm"):
            _tmpfs("/dev/shm", "1777")
    if prepared["proc"]:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for name in _PROC_READONLY:
            path = f"/proc/{name}"
            if os.path.exists(path):
                _bind(path, readonly=True)
    if confine:
        # Hide what is denied and exists now (the credential stores are a few dozen paths); apply_paths
        # hides whatever has appeared since.
        for path in prepared["deny"]:  # type: ignore[attr-defined]
            if _deny(path):
                _hidden.add(path)


def apply_paths(prepared: dict[str, object], workdir: str, keep: list[tuple[str, int, bool]]) -> None:
    """Child side, phase 2: the part that depends on what exists now. Writable roots bound
    writable over the read-only tree, protected paths in them bound read-only, `keep` (from keep_visible)
    bound back over the replaced /tmp, /run or /dev, denied paths hidden; then chdir(workdir), so the cwd
    sees the new view. Raises SetupFailure naming the mount and the path."""
    confine = bool(prepared["confine"])
    write: list[str] = prepared["write"]  # type: ignore[assignment]
    if confine:
        for root in write:
            if not _under_hidden(root) and os.path.exists(root):
                _bind(root, readonly=False)
                _protect(root, prepared["protected"])  # type: ignore[arg-type]
    for path, fd, writable in keep:
        _rebind(path, fd, writable and confine)
        if writable and confine:
            _protect(path, prepared["protected"])  # type: ignore[arg-type]
    if confine:
        for path in prepared["deny"]:  # type: ignore[attr-defined]
            if path not in _hidden:
                _deny(path)
    try:
        os.chdir(workdir)
    except OSError as err:
        raise _sys.SetupFailure("mounts", "chdir(workdir)", err.errno or 0, workdir) from err


def _rebind(path: str, fd: int, writable: bool) -> None:
    """Bind the host object behind `fd` back at `path` on top of the sandbox's replacement mount."""
    try:
        if not os.path.exists(path):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(path, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as err:
        raise _sys.SetupFailure("mounts", "mkdir(mount point)", err.errno or 0, path) from err
    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    os.close(fd)
    if writable:
        _setattr(path, 0, MOUNT_ATTR_RDONLY, recursive=False)
    else:
        _setattr(path, MOUNT_ATTR_RDONLY, 0, recursive=True)


def _protect(root: str, protected: list[str]) -> None:
    """Read-only binds for the protected paths under writable `root`.

    Each protected path's top directory (.git) first becomes a writable mount point of its own, so it cannot
    be renamed away and replaced by a directory with fresh hooks. For git specifically: a missing
    .git/hooks is created (empty) so that it can be protected, each submodule's git dir under
    .git/modules gets the same protection, and a .git that is a file (a linked worktree or a submodule
    checkout: it points git at another directory) is itself bound read-only.
    """
    tops: set[str] = set()
    for rel in _expand_git(root, protected):
        path = os.path.join(root, rel)
        top = os.path.join(root, rel.split("/", 1)[0])
        if "/" in rel and os.path.isfile(top) and not os.path.islink(top):
            if top not in tops:  # .git is a gitdir pointer: freeze the pointer
                _bind(top, readonly=True)
                tops.add(top)
            continue
        if rel.endswith(".git/hooks") and not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
            try:
                os.mkdir(path, 0o755)
            except OSError as err:
                raise _sys.SetupFailure(
                    "mounts", "mkdir(.git/hooks to protect it)", err.errno or 0, path
                ) from err
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise _sys.SetupFailure("mounts", "lstat(protected path)", err.errno or 0, path) from err
        if stat.S_ISLNK(st.st_mode):
            # A bind mount would follow the link and protect its target, not this name: refuse.
            raise _sys.SetupFailure(
                "mounts", "protect path", 40, path, "a protected path is a symlink; remove it or unprotect it"
            )
        if "/" in rel and top not in tops and os.path.isdir(top) and not os.path.islink(top):
            _bind(top, readonly=False)
            tops.add(top)
        _bind(path, readonly=True)


def _configured_hooks_path(root: str) -> str | None:
    """core.hooksPath from the repository's own .git/config, relative to `root`, when it points inside it
    (husky's .husky): git runs the hooks from there, so it is protected like .git/hooks."""
    try:
        with open(os.path.join(root, ".git", "config"), errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]").strip().lower()
        elif section == "core" and "=" in line and line.split("=", 1)[0].strip().lower() == "hookspath":
            value = line.split("=", 1)[1].strip().strip('"')
            target = os.path.normpath(os.path.join(root, os.path.expanduser(value)))
            if target.startswith(root.rstrip("/") + "/"):
                return os.path.relpath(target, root)
    return None


def _expand_git(root: str, protected: list[str]) -> list[str]:
    """`protected`, plus the configured core.hooksPath inside the root, plus hooks and config of every
    submodule git dir (.git/modules/**) for each protected entry under .git/."""
    out = list(protected)
    if not any(p.startswith(".git/") for p in protected):
        return out
    hooks_path = _configured_hooks_path(root)
    if hooks_path is not None:
        out.append(hooks_path)
    leaves = [p.split("/", 1)[1] for p in protected if p.startswith(".git/")]
    stack = [".git/modules"]
    while stack:
        rel = stack.pop()
        try:
            names = sorted(os.listdir(os.path.join(root, rel)))
        except OSError:
            continue
        for name in names:
            sub = f"{rel}/{name}"
            if os.path.isfile(os.path.join(root, sub, "HEAD")):  # a git dir
                out += [f"{sub}/{leaf}" for leaf in leaves]
                stack.append(f"{sub}/modules")
            elif os.path.isdir(os.path.join(root, sub)) and sub.count("/") < 12:
                stack.append(sub)  # submodule names may contain slashes
    return out


def _hide_sockets() -> None:
    """tmpfs over /run and host /tmp so no host unix socket is reachable by path."""
    _tmpfs("/run", "0755")
    if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
        _tmpfs("/var/run", "0755")


def _dev() -> None:
    """A fresh /dev with only harmless nodes. Runs after _hide_sockets: the host /dev is parked on the
    private /run while the node binds are made, then detached."""
    os.mkdir("/run/.corral-hostdev", 0o700)
    _mount("/dev", "/run/.corral-hostdev", None, MS_BIND | MS_REC)
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for name in _DEV_NODES:
        path = f"/dev/{name}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        _mount(f"/run/.corral-hostdev/{name}", path, None, MS_BIND)
    for name, target in _DEV_LINKS:
        os.symlink(target, f"/dev/{name}")
    for d in ("pts", "shm"):
        os.mkdir(f"/dev/{d}", 0o755)
    _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    _tmpfs("/dev/shm", "1777")
    # Drop the helper view of the host /dev again.
    try:
        _sys.libc_call("umount2", b"/run/.corral-hostdev", 2)  # MNT_DETACH
        os.rmdir("/run/.corral-hostdev")
    except OSError as err:
        raise _sys.SetupFailure("mounts", "umount2(host /dev helper)", err.errno or 0) from err


def _net_class() -> None:
    """/sys is the host's sysfs, whose net class lists the host's interfaces (names, MACs, traffic counters)
    even in a private network namespace. A sysfs mounted now belongs to the new network namespace: its
    class/net (only lo) is bound over the host's; where sysfs cannot be mounted, an empty one hides it."""
    tmp = "/run/.corral-sys"
    os.mkdir(tmp, 0o700)
    try:
        _mount("sysfs", tmp, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except _sys.SetupFailure:
        os.rmdir(tmp)
        _tmpfs("/sys/class/net", "0555", readonly=True)
        return
    _mount(f"{tmp}/class/net", "/sys/class/net", None, MS_BIND)
    _mount(None, "/sys/class/net", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        _sys.libc_call("umount2", tmp.encode(), 2)  # MNT_DETACH
        os.rmdir(tmp)
    except OSError as err:
        raise _sys.SetupFailure("mounts", "umount2(sysfs helper)", err.errno or 0, tmp) from err


def _deny(path: str) -> bool:
    """Hide `path` if it exists; returns whether it did."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # Missing, or unreachable for this uid (an ordinary user's sandbox and /root/.ssh): the command
        # cannot reach it either, so there is nothing to hide.
        return False
    except OSError as err:
        raise _sys.SetupFailure("mounts", "lstat(deny path)", err.errno or 0, path) from err
    if stat.S_ISDIR(st.st_mode):
        _tmpfs(path, "0000", readonly=True)
    else:
        _mount("/dev/null", path, None, MS_BIND)
        _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return True
