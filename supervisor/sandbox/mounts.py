"""The child's filesystem view, built in its private mount namespace.

- the whole host tree is remounted read-only (defence in depth under Landlock: a write that Landlock would
  miss still meets a read-only mount), then each writable root is bind-mounted writable over itself;
- protected paths inside writable roots (.git/hooks, .git/config) are bind-mounted read-only over themselves:
  Landlock can only grant, never subtract, so a read-only mount is what keeps them read-only. A mount point
  cannot be renamed or unlinked (EBUSY), and .git itself is made a mount point so it cannot be swapped out;
- private tmpfs on /tmp and /dev/shm, an empty /run (and a real /var/run) so no host unix socket (the
  docker.sock class) is reachable by path;
- a minimal /dev (null, zero, full, random, urandom, tty, a private devpts, /dev/fd links);
- a fresh /proc for the new pid namespace, with /proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus
  read-only (as bubblewrap does);
- denied paths hidden under an empty read-only mode-0 directory (directories) or /dev/null (files), as the
  objects their names lead to now; each directory between a writable root and a denied path is made a mount
  point, so that no sandbox can rename the hidden object out from under its cover for the next one
  (`_pin_ancestors`); a denied file with hard links the policy does not all hide is refused
  (`_links_outside`); the read-only directory holding a denied file is shown through an overlay of its own
  (`overlay_roots`), so that the host replacing the file during the run (a rename over it) does not detach
  the hiding mount, with a whiteout for each denied name there that is missing (`_whiteouts`);
- every path of the policy (roots, the workdir, denied and protected paths) is opened by the init without
  following any symlink, and its mount made from that fd (OP_MOUNT_AT): a link a sandbox planted for the next
  one (`build -> /etc`) is refused, never followed.
- /sys/fs/cgroup replaced by the sandbox's own cgroup view (`emit_cgroup_view`): a read-only directory
  holding, per hierarchy the sandbox's leaf is in, that hierarchy mounted afresh inside the sandbox's cgroup
  namespace, whose root is the leaf (read-only too); nothing of the host's tree or of other sandboxes.

Unlike the other mechanism modules, `apply` comes in two phases, `apply_base` (what does not depend on the
state of the policy's paths) and `apply_paths` (what does), with `keep_visible` opening beforehand what the
base phase would otherwise hide. A pre-forked sandbox runs both before its command is known; `fingerprint`
is what the supervisor checks at the request to know that the paths they looked at are unchanged.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NotRequired, TypedDict

from supervisor.sandbox import _absent, _cinit, _gitconfig, _hostfs, _sys

if TYPE_CHECKING:
    from policies import Policy
    from supervisor.sandbox import namespaces
    from supervisor.sandbox._ops import Plan

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
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
_MNT_DETACH = 2
_SLOTS = _cinit.SLOTS  # the init's O_PATH slots

_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
_PROC_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


class Prepared(TypedDict):
    """What `prepare` decides (builtins only: it crosses to the fork server with marshal)."""

    confine: bool
    private_tmp: bool
    tmp_size: str
    proc: bool
    private_net: bool
    write: list[str]
    read: list[str]
    deny: list[str]
    protected: list[str]
    enforced: list[str]
    # A root caller's policy that hides the credential stores: hide those of the workdir's owner too
    # (`owner_secrets`), whom the sandbox runs as.
    owner_secrets: NotRequired[bool]


def prepare(policy: Policy, ns: namespaces.Prepared) -> Prepared | None:
    """Plan the mount operations. Returns None when there is no mount namespace (the caller records the
    missing layer). Paths are normalised here, with the symlinks resolved that no sandbox could have planted
    (policies._validate.resolve_trusted); existence is checked when a sandbox's view is planned
    (`emit_base`, `emit_paths`), because the tree can change between spawns (a `git init` creates
    .git/hooks)."""
    if not ns["flags"] or not (ns["flags"] & 0x00020000):
        return None
    from policies import profiles
    from policies._validate import resolve_trusted

    fs = policy.filesystem
    return {
        "confine": fs.confine,
        "private_tmp": fs.private_tmp or fs.confine,
        # Each of the private /tmp and /dev/shm (resources.tmp_size; the kernel's default is half of RAM).
        "tmp_size": str(policy.resources.tmp_size) if policy.resources.tmp_size is not None else "50%",
        "proc": bool(ns["flags"] & 0x20000000),
        "private_net": bool(ns["net"]),
        # Symlinks no sandbox could have made are resolved now, once; the init follows none (_bind).
        # Without confinement these only keep roots under the private /tmp visible (keep_visible), as the
        # host has them: the workdir and each --allow-write there stay writable in full-access.
        "write": [resolve_trusted(p) for p in fs.write],
        "read": [resolve_trusted(p) for p in fs.read if p != "/"],
        "deny": [os.path.normpath(p) for p in fs.deny] if fs.confine else [],
        "protected": list(fs.protected) if fs.confine else [],
        # A root caller's sandbox runs as its workdir's owner (namespaces.owner_maps), who can read the
        # credential stores of their own home: a policy that hides root's and $HOME's hides theirs too.
        "owner_secrets": bool(
            fs.confine and os.geteuid() == 0 and set(profiles.credential_paths("/root")) <= set(fs.deny)
        ),
        # mount_ns itself is namespaces' to report.
        "enforced": ["readonly_root", "private_tmp", "hidden_run", "minimal_dev"] if fs.confine else [],
    }


def _mount(
    plan: Plan, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> int:
    what = fstype or ("bind" if flags & MS_BIND else "remount")
    operation = f"mount({what}, flags={flags:#x})"
    return plan.add(
        _cinit.OP_MOUNT, "mounts", operation, a=(flags,), s=(src, target, fstype, data), path=target
    )


def _setattr(plan: Plan, path: str, set_: int, clr: int, recursive: bool) -> None:
    plan.add(
        _cinit.OP_SETATTR,
        "mounts",
        "mount_setattr(MOUNT_ATTR_RDONLY)",
        a=(set_, clr, AT_RECURSIVE if recursive else 0),
        s=(path,),
        path=path,
    )


#: What OP_MOUNT_AT mounts on its checked target: a bind of the target itself, of a source, or a tmpfs.
_AT_SELF, _AT_SOURCE, _AT_TMPFS, _AT_SCAFFOLD = 0, 1, 2, 3
_AT_SUBMOUNTS, _AT_ATTRS_ALL = 1, 2  # copy what is mounted below; change the attributes of all of it
_AT_LINK = 4  # the target may itself be a symlink: opened O_NOFOLLOW, the link bound over itself (a pin)
_RO_ATTRS = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV

#: The init reports ELOOP when a path of the view is, or passes through, a symlink.
_LINK_HINT: dict[int | str, str] = {
    errno.ELOOP: (
        "this path is, or passes through, a symlink that was not there (or not trusted) when the policy "
        "was made: a sandbox that could write there may have planted it, so corral does not follow it. "
        "Remove the link, or name the real directory in the policy"
    ),
    "*": "",
}


def _bind(plan: Plan, path: str, readonly: bool) -> None:
    """Bind `path` over itself (with what is mounted below it), read-only or writable. The init opens it
    without following symlinks and mounts from that fd (OP_MOUNT_AT): a link planted in a writable root
    since the policy was made is refused, never followed."""
    if readonly:
        what, set_, clr, how = "read-only", _RO_ATTRS, 0, _AT_SUBMOUNTS | _AT_ATTRS_ALL
    else:
        # The bind inherits the read-only flag we put on the whole tree; clear it on this root only.
        what, set_, clr, how = "writable", 0, MOUNT_ATTR_RDONLY, _AT_SUBMOUNTS
    plan.add(
        _cinit.OP_MOUNT_AT,
        "mounts",
        f"bind {what} (open_tree + move_mount)",
        a=(_AT_SELF, set_, clr, how),
        s=(path,),
        path=path,
        hint=_LINK_HINT,
    )


def _tmpfs(plan: Plan, target: str, mode: str, readonly: bool = False, size: str = "50%") -> int:
    flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    return _mount(plan, "tmpfs", target, "tmpfs", flags, f"mode={mode},size={size}")


def _op(
    plan: Plan, code: int, operation: str, path: str, *, a: tuple[int, ...] = (), s: tuple[str, ...] = ()
) -> int:
    return plan.add(code, "mounts", operation, a=a, s=s or (path,), path=path)


_HIDDEN = ("/tmp", "/run", "/var/run", "/dev")


def _under_hidden(path: str) -> bool:
    return any(path == h or path.startswith(h + "/") for h in _HIDDEN)


def _under(path: str, tops: Sequence[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def _replaced(path: str, overlays: Sequence[str]) -> bool:
    """Whether the base view covers `path` (under /tmp, /run, /dev, or an overlay of `overlay_roots`), so
    that a root there is bound back from the host's tree (`keep_visible`)."""
    return _under_hidden(path) or _under(path, overlays)


#: Overlay lower directories are a colon-separated list of comma-separated options: no such character.
_OVERLAY_UNSAFE = frozenset(":,\\\n")


def overlay_roots(prepared: Prepared | None, workdir: str) -> list[str]:
    """The directories that the sandbox's view shows through an overlay of their own (`emit_base`), so that
    a denied file in them stays hidden when the HOST replaces it during the run.

    Why: a hiding mount sits on a dentry, and the kernel detaches every mount on a dentry that is renamed
    over or removed, in every mount namespace; an editor, `passwd` or `git credential-store` renaming a
    new file over a denied one made it readable to every sandbox already running. An overlay (the host
    directory as its top lower layer over the scaffold's empty directory; read-only, no upper) is a
    superblock of its own: the sandbox's lookups below it go through the overlay's dentries, which the
    host's renames in the real directory neither rename nor invalidate (on local filesystems: no
    d_revalidate), so the hiding mounts made on them hold for the whole run, race-free.

    Chosen: the parent of each denied regular file that exists and that the caller can read (what the host
    rewrites; an unreadable one, /etc/shadow for an ordinary user, is rewritten unreadable too), keeping
    only the topmost of nested ones (the hiding mounts deeper down are on overlay dentries too). Left out
    (hidden by name as before): a parent inside or equal to a writable root (an overlay without an upper
    layer is read-only), one with a host mount below it (the overlay would not show it: Docker's bind of
    /etc/hosts), one under /tmp, /run, /dev, /proc or /sys, `/` itself, and a path with a character the
    overlay options cannot carry; and all of them when the roots and `workdir` below them would not fit
    the init's slots (`keep_visible`). Never raises (a path it cannot look at is left out)."""
    if prepared is None or not prepared["confine"]:
        return []
    write: list[str] = prepared["write"]
    found: list[str] = []
    for target in _deny_targets_quiet(prepared):
        parent = os.path.dirname(target)
        if parent in found or parent == "/" or _under_hidden(parent) or _under(parent, ("/proc", "/sys")):
            continue
        if _under(parent, write) or _OVERLAY_UNSAFE.intersection(parent):
            continue
        try:
            st = os.lstat(target)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(target, os.R_OK):
            found.append(parent)
    if not found:
        return []
    tops = [p for p in found if not any(p != q and _under(p, (q,)) for q in found)]
    points = _host_mount_points()
    chosen = sorted(p for p in tops if not any(m != p and _under(m, (p,)) for m in points))
    try:
        keep_visible(prepared, workdir, chosen)
    except _sys.SetupFailure:
        return []
    return chosen


def _deny_targets_quiet(prepared: Prepared) -> list[str]:
    """`_deny_targets`, or none when it refuses (the build reports that itself)."""
    try:
        return _deny_targets(prepared)
    except _sys.SetupFailure:
        return []


def _host_mount_points() -> list[str]:
    """The mount points of this process's mount namespace (/proc/self/mountinfo, octal escapes decoded);
    `/` alone when it cannot be read (every candidate then has a mount below it: no overlay)."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return ["/"]
    out: list[str] = []
    for line in data.splitlines():
        fields = line.split(b" ", 5)
        if len(fields) > 4:
            raw = fields[4]
            if b"\\" in raw:
                raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
            out.append(os.fsdecode(raw))
    return out


def fingerprint(prepared: Prepared | None, workdir: str) -> tuple[object, ...]:
    """`fingerprint_groups(prepared, workdir)`'s fingerprint."""
    return fingerprint_groups(prepared, workdir)[0]


def fingerprint_groups(
    prepared: Prepared | None, workdir: str
) -> tuple[tuple[object, ...], tuple[_absent.Group, ...]]:
    """Everything the view built by `emit_base` + `emit_paths` depends on, as seen from the host now: the
    identity (device, inode, type and owner, from lstat) or the lstat errno of the workdir, the host paths
    the base view tests, every writable and readable root, every protected path and its top directory under
    each writable root (after git expansion: core.hooksPath, submodule git dirs), and every denied path. A
    sandbox built ahead of its request serves it only while the fingerprint taken around its build still
    holds at the request (see supervisor/forkserver/prefork.py, and the fork server's view cache in
    forkserver/server.py); any difference (a `git init`, a new credential file, a replaced root) sends the
    request down the path that builds its view at request time. A missing path is not lstat'ed while the
    nearest directory above it is as it was when it was found missing (supervisor/sandbox/_absent.py): its
    record is ENOENT's all the same; those directories come second (each checked now, for the Recheck).
    Never raises."""
    paths = [workdir]
    write: list[str] = []
    notes: list[str] = []
    if prepared is not None:
        if prepared["confine"]:
            paths += _BASE_PATHS
        write = prepared["write"]
        paths += write
        paths += prepared["read"]
        if prepared["confine"]:
            for root in write:
                try:
                    expanded = _git_paths(root, prepared["protected"])
                except (OSError, _sys.SetupFailure) as err:
                    # Unreadable or refused .git/config or modules: a distinct state of its own (the
                    # build on the spot reports it).
                    notes.append(f"{root}: error {err.errno} {getattr(err, 'path', '')}")
                    continue
                for rel in expanded:
                    paths += (os.path.join(root, rel), os.path.join(root, rel.split("/", 1)[0]))
            paths += prepared["deny"]
            paths += owner_secrets(prepared, workdir)
    # Which paths were looked at (git expansion can change the list) and what each was.
    idents, groups = _absent.identities(paths, tuple(write))
    return (tuple(paths), idents, tuple(notes)), groups


def digest(fingerprint: tuple[object, ...]) -> bytes:
    """A fingerprint in 16 bytes (BLAKE2b of its paths, identities and notes), the same in every process: a
    pre-forked sandbox's request carries it to the fork server (PreforkRequest's `view`)."""
    paths, idents, notes = fingerprint
    assert isinstance(paths, tuple)
    assert isinstance(idents, bytes)
    assert isinstance(notes, tuple)
    h = _paths_hash(paths).copy()
    h.update(b"\1" + idents + b"\1")
    h.update("\0".join(map(str, notes)).encode("utf-8", "surrogateescape"))
    return h.digest()


@functools.lru_cache(maxsize=64)
def _paths_hash(paths: tuple[object, ...]) -> hashlib.blake2b:
    """`digest`'s hash of a fingerprint's paths alone (the same list every time for a policy and workdir);
    copied, never updated."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\0".join(map(str, paths)).encode("utf-8", "surrogateescape"))
    return h


def owner_secrets(prepared: Prepared, workdir: str) -> list[str]:
    """The credential stores (`profiles.credential_paths`) in the home directory of `workdir`'s owner, when
    `prepared` asks for them (a root caller's policy hiding the credential stores) and the owner is not
    root: the account the sandbox will run as (namespaces.owner_maps), whose own `~/.ssh`, `~/.netrc` and
    cloud credentials it could otherwise read, since the caller's $HOME under sudo is /root. Looked up
    with lstat (the init refuses a workdir through a symlink anyway) and the password database. Never
    raises."""
    if not prepared.get("owner_secrets"):
        return []
    try:
        st = os.lstat(workdir)
    except OSError:
        return []
    if st.st_uid == 0 or not stat.S_ISDIR(st.st_mode):
        return []
    return list(_home_secrets(st.st_uid))


@functools.lru_cache(maxsize=64)
def _home_secrets(uid: int) -> tuple[str, ...]:
    """credential_paths of `uid`'s home directory from the password database (cached: one lookup per
    account in the fork server's life); none for an account without one."""
    from policies import profiles

    try:
        home = os.path.normpath(pwd.getpwuid(uid).pw_dir)
    except (KeyError, OSError, ValueError):
        return ()
    if not os.path.isabs(home) or home == "/":
        return ()
    return tuple(p for p in profiles.credential_paths(home) if p.startswith(home + "/"))


def with_owner_secrets(prepared: Prepared | None, workdir: str) -> Prepared | None:
    """`prepared` with `owner_secrets(prepared, workdir)` added to its denied paths (itself when none)."""
    if prepared is None:
        return None
    extra = [p for p in owner_secrets(prepared, workdir) if p not in prepared["deny"]]
    if not extra:
        return prepared
    return {**prepared, "deny": [*prepared["deny"], *extra]}


def _git_paths(root: str, protected: list[str]) -> list[str]:
    """_expand_git for a root given by path (empty when the root is missing). Raises as _expand_git."""
    rootfd = _open_root(root)
    if rootfd is None:
        return list(protected)
    try:
        return _expand_git(root, protected, rootfd)
    finally:
        os.close(rootfd)


#: Host paths whose presence or type `emit_base` tests.
_BASE_PATHS = ("/var/run", "/sys/class/net", "/dev/shm", *(f"/proc/{name}" for name in _PROC_READONLY))


def keep_visible(
    prepared: Prepared, workdir: str, overlays: Sequence[str] = ()
) -> list[tuple[str, bool, bool]]:
    """The writable roots, readable roots and workdir that lie under a path the base view replaces (/tmp,
    /run, /dev, and the `overlays` from `overlay_roots`) and exist now: (path, writable, is a directory).
    `emit_keep` opens them in the sandbox's new mount namespace before the base view hides them, and
    `emit_paths` binds them back on top. Raises SetupFailure when one cannot be looked up."""
    keep: list[tuple[str, bool, bool]] = []
    write: list[str] = prepared["write"]
    read: list[str] = prepared["read"]
    for path, writable in [*((p, True) for p in write), *((p, False) for p in read), (workdir, False)]:
        if _replaced(path, overlays) and not any(k[0] == path for k in keep):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as err:
                raise _sys.SetupFailure("mounts", "stat(kept path)", err.errno or 0, path) from err
            keep.append((path, writable, stat.S_ISDIR(st.st_mode)))
    if len(keep) > _SLOTS:
        raise _sys.SetupFailure(
            "mounts", "keep paths visible", 7, hint=f"at most {_SLOTS} roots under /tmp, /run or /dev"
        )
    return keep


def console_path(fd: int) -> str | None:
    """The host path of the pty `fd` (its slave) when it is one of the host's devpts nodes (/dev/pts/N),
    for `emit_console`; None otherwise (the command still gets the terminal, unnamed)."""
    try:
        path = os.ttyname(fd)
    except OSError:
        return None
    rest = path.removeprefix("/dev/pts/")
    return path if rest != path and rest.isdigit() else None


def emit_console(path: str, slot: int, plan: Plan) -> None:
    """Open (O_PATH) the command's terminal `path` (from console_path) into the init's `slot`, in the new
    mount namespace and before `emit_base` replaces /dev (a bind's source must be in the caller's mount
    namespace; the fd the command gets is the host namespace's); `emit_paths` binds it at /dev/console."""
    _op(plan, _cinit.OP_OPEN_PATH, "open(O_PATH, the command's terminal)", path, a=(slot,))


def emit_keep(keep: list[tuple[str, bool, bool]], plan: Plan) -> None:
    """Open (O_PATH) each kept path into a slot of the init, in its new mount namespace (a bind's source
    must be in the caller's namespace) and before `emit_base` replaces what holds them."""
    for slot, (path, _writable, _is_dir) in enumerate(keep):
        plan.add(
            _cinit.OP_OPEN_PATH, "mounts", "open(O_PATH)", a=(slot,), s=(path,), path=path, hint=_LINK_HINT
        )


#: `emit_base`'s `share`: given an overlaid directory and its layers (`overlay_layers`), the fd of a
#: detached overlay of them that the init inherits (a plan keep fd), or None.
Share = Callable[[str, str], "int | None"]


def emit_base(
    prepared: Prepared,
    plan: Plan,
    pooled_net: bool = False,
    overlays: Sequence[str] = (),
    share: Share | None = None,
) -> None:
    """Phase 1 (in pid 1 of the new pid namespace, inside the new mount and user namespaces, with full
    capabilities there): the part of the view that does not depend on the state of the policy's paths:
    private propagation, the read-only host tree, an empty /run, a minimal /dev, private /tmp and
    /dev/shm, a fresh /proc, and the denied paths that exist now (outside /tmp, /run and /dev, which the
    base view replaces). What exists is looked up here, in the fork server, whose view of the host is the
    one the sandbox starts from. `pooled_net`: the network namespace is one of the fork server's pool
    (namespaces.emit), whose sysfs the init binds from the plan's slot. `overlays` (from `overlay_roots`):
    each shown through an overlay of its own, right after the scaffold, before anything is mounted below
    it (a root below one is bound back from the host's tree in `emit_paths`); with `share`, a copy of the
    fork server's detached overlay of the same layers where it has one (`_overlay`). Raises SetupFailure
    (an unreadable denied path)."""
    confine = bool(prepared["confine"])
    # Nothing we mount may propagate back to the host's mount namespace.
    _mount(plan, None, "/", None, MS_REC | MS_PRIVATE)
    if confine:
        # nosuid too (and every bind made later is cloned from this tree, so it inherits it): set-id bits
        # and file capabilities are ignored at exec. no_new_privs already makes them grant nothing, but a
        # binary with effective file capabilities (ping: cap_net_raw=ep) was then refused (EPERM) under a
        # root caller, whose sandbox maps host uid 0; now it runs, unprivileged, as under bubblewrap.
        _setattr(plan, "/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, recursive=True)
        _scaffold(plan)
        for top in overlays:
            _overlay(plan, top, _deny_targets(prepared), share)
        _hide_sockets(plan)
        _etc_files(plan, frozenset(_deny_targets(prepared)))
        _dev(plan, str(prepared.get("tmp_size", "50%")))
        if prepared["private_net"] and os.path.isdir("/sys/class/net"):
            _net_class(plan, pooled_net)
    if prepared["private_tmp"]:
        size = str(prepared.get("tmp_size", "50%"))
        _tmpfs(plan, "/tmp", "1777", size=size)  # (under `confine`: over the scaffold's root)
        if not confine and os.path.isdir("/dev/shm"):
            _tmpfs(plan, "/dev/shm", "1777", size=size)
    if prepared["proc"]:
        _mount(plan, "proc", "/proc", "proc", _PROC_FLAGS)
        for name in _PROC_READONLY:
            path = f"/proc/{name}"
            if os.path.exists(path):
                # By path (two syscalls, not _bind's six): the new proc's own entries, which nothing in
                # the sandbox can have replaced by a link, and with no mount below them.
                _mount(plan, path, path, None, MS_BIND)
                _mount(plan, None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _PROC_FLAGS)
    if confine:
        # Before the writable roots are bound: their recursive binds carry these mounts along.
        # Those inside a root bound back over an overlay are hidden after it (`emit_paths`).
        denied = _deny_targets(prepared)
        kept = _kept_roots(prepared, overlays)
        for path in denied:
            if not _under_hidden(path) and not _under(path, kept):
                _deny(plan, path, denied)


def emit_paths(
    prepared: Prepared,
    workdir: str,
    keep: list[tuple[str, bool, bool]],
    plan: Plan,
    cgroup_view: tuple[CgroupViewEntry, ...] = (),
    console_slot: int = -1,
    overlays: Sequence[str] = (),
) -> None:
    """Phase 2: the part that depends on what exists now. Writable roots bound writable over the
    read-only tree, protected paths in them bound read-only, `keep` (from keep_visible) bound back over
    the replaced /tmp, /run or /dev, denied paths inside those hidden; the sandbox's cgroup view
    (`emit_cgroup_view`: in the cgroup namespace, which the caller entered, and over anything bound under
    /sys/fs/cgroup); the command's terminal (a pty made for it, opened into `console_slot` by
    `emit_console`) at /dev/console; then chdir(workdir), so the cwd sees the new view. Raises
    SetupFailure (a protected path that is a symlink, a .git/hooks that cannot be created); a failure in
    the init names the mount and the path."""
    confine = bool(prepared["confine"])
    write: list[str] = prepared["write"]
    denied = _deny_targets(prepared) if confine else []
    chains = _link_chains(prepared["deny"]) if confine else []
    if confine:
        for root in write:
            # lexists: a root that became a symlink goes to the init, which refuses it (_bind).
            if not _replaced(root, overlays) and os.path.lexists(root):
                _bind(plan, root, readonly=False)
                _pin_ancestors(plan, root, denied, chains)
                _protect(plan, root, prepared["protected"])
    for slot, (path, writable, is_dir) in enumerate(keep):
        # Unconfined (full-access): as writable as on the host, the workdir too.
        _rebind(plan, path, slot, is_dir, writable if confine else None)
        if writable and confine:
            _pin_ancestors(plan, path, denied, chains)
            _protect(plan, path, prepared["protected"])
    if confine:
        # A denied path under /tmp, /run or /dev exists in the sandbox only inside what `keep` bound back;
        # one inside a root bound back over an overlay is hidden there, on the host's tree.
        kept = [k[0] for k in keep]
        for path in denied:
            if _replaced(path, overlays) and _under(path, kept):
                _deny(plan, path, denied)
    emit_cgroup_view(prepared, cgroup_view, plan)
    if confine:
        plan.add(_cinit.OP_CLOSE, "mounts", "close(the scaffold)", a=(0, _SCAFFOLD + 1), path="/tmp")
    if console_slot >= 0:
        # The pty comes from the host's devpts, which the sandbox's private /dev does not show: bound at
        # /dev/console, ttyname(3) finds it there (same device and inode), so `tty` names it.
        _op(plan, _cinit.OP_CREAT, "creat(console mount point)", "/dev/console", a=(0o600,))
        plan.add(
            _cinit.OP_MOUNT,
            "mounts",
            "mount(bind, the command's terminal)",
            a=(MS_BIND, console_slot + 1),
            s=(None, "/dev/console"),
            path="/dev/console",
        )
        plan.add(_cinit.OP_CLOSE, "mounts", "close(O_PATH fd)", a=(0, console_slot + 1), path="/dev/console")
    plan.add(_cinit.OP_CHDIR, "mounts", "chdir(workdir)", s=(workdir,), path=workdir, hint=_LINK_HINT)


def _rebind(plan: Plan, path: str, slot: int, is_dir: bool, writable: bool | None) -> None:
    """Bind the host object opened into `slot` (emit_keep) back at `path` on top of the sandbox's
    replacement mount (made first, with its parents, when the replacement lacks it): writable, read-only
    (with everything beneath), or with None as the host has it."""
    _op(plan, _cinit.OP_ENSURE, "mkdir(mount point)", path, a=(int(is_dir),))
    plan.add(
        _cinit.OP_MOUNT,
        "mounts",
        "mount(bind, kept path)",
        a=(MS_BIND | MS_REC, slot + 1),
        s=(None, path),
        path=path,
    )
    plan.add(_cinit.OP_CLOSE, "mounts", "close(O_PATH fd)", a=(0, slot + 1), path=path)
    if writable:
        _setattr(plan, path, 0, MOUNT_ATTR_RDONLY, recursive=False)
    elif writable is not None:
        _setattr(plan, path, MOUNT_ATTR_RDONLY, 0, recursive=True)


def _protect(plan: Plan, root: str, protected: list[str]) -> None:
    """Read-only binds for the protected paths under writable `root`.

    Each protected path's top directory (.git) first becomes a writable mount point of its own, so it cannot
    be renamed away and replaced by a directory with fresh hooks. For git specifically: a missing
    .git/hooks is created (empty, here, before the sandbox starts) so that it can be protected, each
    submodule's git dir under .git/modules gets the same protection, and a .git that is a file (a linked
    worktree or a submodule checkout: it points git at another directory) is itself bound read-only.

    Everything under `root` is looked at without following symlinks (_hostfs): the root may hold what an
    earlier sandbox planted. Raises SetupFailure (_hostfs.Unsafe: a symlink on the way, which the bind would
    follow; something odd under .git, named so that the user can remove it).
    """
    tops: set[str] = set()
    rootfd = _open_root(root)
    if rootfd is None:
        return
    own = set(_own_protected(protected))
    try:
        if any(p.startswith(".git/") for p in protected) and _hostfs.lstat_beneath(rootfd, ".git") is None:
            plan.nogit.append(root)
        for rel in _expand_git(root, protected, rootfd):
            path = os.path.join(root, rel)
            top_rel = rel.split("/", 1)[0]
            top = os.path.join(root, top_rel)
            top_st = _hostfs.lstat_beneath(rootfd, top_rel)
            if top_st is not None and stat.S_ISLNK(top_st.st_mode):
                # A bind mount would follow the link and protect its target, not this name: refuse.
                raise _hostfs.Unsafe(
                    "lstat(protected path)", top, "a symlink (git and a bind would follow it)"
                )
            if "/" in rel and top_st is not None and stat.S_ISREG(top_st.st_mode):
                if top not in tops:  # .git is a gitdir pointer: freeze the pointer
                    _bind(plan, top, readonly=True)
                    tops.add(top)
                continue
            if rel.endswith(".git/hooks"):
                try:
                    _hostfs.mkdir_beneath(rootfd, rel, path)
                except OSError as err:
                    raise _sys.SetupFailure(
                        "mounts", "mkdir(.git/hooks to protect it)", err.errno or 0, path
                    ) from err
            try:
                st = _hostfs.lstat_beneath(rootfd, rel)
            except OSError as err:
                raise _sys.SetupFailure("mounts", "lstat(protected path)", err.errno or 0, path) from err
            if st is None:
                if rel in own:  # cannot be bound: what the command makes there is moved aside after the run
                    plan.absent.append((root, rel))
                continue
            if stat.S_ISLNK(st.st_mode):
                # A bind mount would follow the link and protect its target, not this name: refuse.
                raise _hostfs.Unsafe(
                    "lstat(protected path)", path, "a symlink (git and a bind would follow it)"
                )
            if "/" in rel and top not in tops and top_st is not None and stat.S_ISDIR(top_st.st_mode):
                _bind(plan, top, readonly=False)
                tops.add(top)
            if not rel.startswith(".git/"):
                # Every directory between the top and a protected path of the policy's own: a sandbox could
                # otherwise rename one (`mv tools/bin tools/bin2`: a directory holding a mount point may be
                # renamed) and make the path anew, unprotected. (Under .git, the git scan checks after the
                # run what a renamed submodule git dir left.)
                parts = rel.split("/")[:-1]
                for i in range(2, len(parts) + 1):
                    middle = os.path.join(root, *parts[:i])
                    if middle not in tops:
                        _bind(plan, middle, readonly=False)
                        tops.add(middle)
            _bind(plan, path, readonly=True)
            if stat.S_ISREG(st.st_mode) and os.path.basename(rel) == "config":
                _watch_config(plan, path)
    finally:
        os.close(rootfd)


def _own_protected(protected: Sequence[str]) -> list[str]:
    """The protected paths outside `.git` (the git scan covers those: supervisor/_gitscan.py)."""
    return [p for p in protected if p != ".git" and not p.startswith(".git/")]


def _watch_config(plan: Plan, path: str) -> None:
    """Have the init note the command's attempts to replace the read-only git config `path` (git's
    `config.lock` created beside it), so that the Result can name what was refused (`Result.protected`):
    `git config`, `git remote add`, `git branch -u` and `git submodule add` inside fail on it with git's own
    EBUSY message, or report success without effect. A report, not a layer: a failure is skipped."""
    i = plan.add(_cinit.OP_WATCH, "mounts", "inotify_add_watch(protected config)", s=(path,), path=path)
    plan.land(i)


def _open_root(root: str) -> int | None:
    """An O_PATH fd of the writable root, or None when it is missing (nothing to protect in it)."""
    try:
        return _hostfs.open_root(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise _sys.SetupFailure("mounts", "open(writable root, O_PATH)", err.errno or 0, root) from err


def _configured_hooks_path(root: str, rootfd: int) -> str | None:
    """core.hooksPath from the repository's own .git/config, relative to `root`, when it points inside it
    (husky's .husky): git runs the hooks from there, so it is protected like .git/hooks. The config is read
    bounded, non-blocking and without following symlinks. Raises _hostfs.Unsafe (.git/config is a FIFO, a
    socket, a device, a symlink, or larger than 1 MiB). What a config gave is kept while its identity
    (device, inode, size, mtime, ctime) holds: a sandbox could plant a 1 MiB one (~0.4 s to parse, for every
    spawn in that workdir, in the fork server that serves every tenant one spawn at a time)."""
    try:
        st = _hostfs.lstat_beneath(rootfd, ".git/config")
    except OSError:
        st = None
    key = None
    if st is not None and stat.S_ISREG(st.st_mode):
        key = (root, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _hooks_paths:
            return _hooks_paths[key]
        if st.st_ctime_ns >= time.time_ns() - _IDENTITY_MARGIN_NS:
            key = None  # changed within the clock's tick: a rewrite now could keep every field as it is
    data = _hostfs.read_file(rootfd, ".git/config", os.path.join(root, ".git", "config"))
    found = None if data is None else _hooks_path_in(root, data)
    if key is not None:
        if len(_hooks_paths) >= 256:
            _hooks_paths.clear()
        _hooks_paths[key] = found
    return found


#: _configured_hooks_path's results, by the identity of the config they were read from.
_hooks_paths: dict[tuple[object, ...], str | None] = {}
#: A file whose ctime is this close to now may still change without moving its ctime (coarse clock ticks).
_IDENTITY_MARGIN_NS = 10_000_000


def _hooks_path_in(root: str, data: bytes) -> str | None:
    """core.hooksPath in the git config `data`, relative to `root`, when it points inside it."""
    try:
        entries = _gitconfig.parse(data)  # as git reads it: comments, quotes, escapes, continuations
    except _gitconfig.ConfigSyntaxError:
        return None  # git refuses the file, and runs no hook from it
    values = [v for k, v in entries if k == "core.hookspath" and v is not None]
    if not values:
        return None
    value = values[-1].decode("utf-8", errors="surrogateescape")  # the last one wins, as in git
    target = os.path.normpath(os.path.join(root, os.path.expanduser(value)))
    if target.startswith(root.rstrip("/") + "/"):
        return os.path.relpath(target, root)
    return None


def _expand_git(root: str, protected: list[str], rootfd: int) -> list[str]:
    """`protected`, plus the configured core.hooksPath inside the root, plus hooks and config of every
    submodule git dir (.git/modules/**) for each protected entry under .git/. Nothing is followed: a .git
    or an entry of .git/modules that is a symlink is refused (git would follow it to a git dir nothing
    protects), and the walk of .git/modules is bounded (_hostfs.MAX_NODES entries, MAX_DEPTH levels).
    Raises _hostfs.Unsafe naming the path to remove or repair; OSError."""
    out = list(protected)
    if not any(p.startswith(".git/") for p in protected):
        return out
    git = _hostfs.lstat_beneath(rootfd, ".git")
    if git is None or not stat.S_ISDIR(git.st_mode):
        if git is not None and stat.S_ISLNK(git.st_mode):
            raise _hostfs.Unsafe(
                "lstat(.git)",
                os.path.join(root, ".git"),
                "a symlink (git would follow it to an unprotected git dir)",
            )
        return out  # no repository, or a gitdir pointer (_protect freezes it)
    hooks_path = _configured_hooks_path(root, rootfd)
    if hooks_path is not None:
        out.append(hooks_path)
    leaves = [p.split("/", 1)[1] for p in protected if p.startswith(".git/")]
    walk = _hostfs.Walk(os.path.join(root, ".git", "modules"))
    try:
        top = _hostfs.open_beneath(rootfd, ".git/modules", os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return out
        if err.errno in (errno.ELOOP, errno.EXDEV):
            raise _hostfs.Unsafe(
                "open(O_NOFOLLOW)", os.path.join(root, ".git", "modules"), "a symlink", err.errno
            ) from err
        raise
    try:
        _walk_modules(walk, top, ".git/modules", os.path.join(root, ".git", "modules"), 0, leaves, out)
    finally:
        os.close(top)
    return out


def _walk_modules(
    walk: _hostfs.Walk, fd: int, rel: str, path: str, depth: int, leaves: list[str], out: list[str]
) -> None:
    """`_expand_git`'s walk below the directory `fd` (`rel` under the root, `path` on the host): every
    directory is looked into until a git dir (HEAD a regular file), whose protected `leaves` are added to
    `out` and whose `modules/` is walked in turn (submodule names may contain slashes). Each directory is
    opened O_NOFOLLOW from its parent's fd and listed once, at most _hostfs.MAX_DEPTH levels (a git dir
    and its modules/ count as one) and MAX_NODES entries in all. (It used to resolve every directory, and
    every subdirectory's HEAD, again from the root: 9,000 directories planted under .git/modules cost the
    fork server ~0.4 s per spawn in that workdir, one spawn at a time for every tenant.) Raises
    _hostfs.Unsafe (a symlink among them: git would follow it to an unprotected git dir; over the bounds)."""
    entries = walk.list_fd(fd, path, depth)
    if depth > 0 and not any(
        stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or name == "HEAD" for name, mode in entries
    ):
        _note_empty(fd, path)  # no git dir, no link, nothing below: passed over unopened while it stays so
    if depth > 0 and ("HEAD", stat.S_IFREG) in entries:  # a git dir
        out += [f"{rel}/{leaf}" for leaf in leaves]
        todo = [("modules", depth)] if any(name == "modules" for name, _mode in entries) else []
    else:
        todo = []
        for name, mode in entries:
            if stat.S_ISLNK(mode):
                raise _hostfs.Unsafe(
                    "walk .git/modules",
                    os.path.join(path, name),
                    "a symlink among submodule git dirs (git would follow it to an unprotected git dir)",
                    40,
                )
            if stat.S_ISDIR(mode):
                todo.append((name, depth + 1))
    for name, sub_depth in reversed(todo):  # the order of the stack this walk replaced
        sub_path = os.path.join(path, name)
        if sub_depth > walk.max_depth:
            raise _hostfs.Unsafe(
                "walk (bounded)", sub_path, f"deeper than {walk.max_depth} levels below {walk.top}", 40
            )
        if _still_empty(fd, name, sub_path):
            continue
        sub = walk.open_sub(fd, name, sub_path)
        if sub is None:
            continue
        try:
            _walk_modules(walk, sub, f"{rel}/{name}", sub_path, sub_depth, leaves, out)
        finally:
            os.close(sub)


#: Directories under .git/modules found holding no subdirectory, no HEAD and no symlink (which is refused),
#: by host path: (device, inode, ctime) then. Adding, removing or renaming an entry moves a directory's ctime
#: (a sandbox cannot set one), so while it is the same the directory still holds nothing the walk looks at,
#: and one fstatat from its parent replaces an open, a listing and a close (9,000 planted empty directories:
#: ~0.12 -> ~0.03 s per walk, and the fork server walks for every spawn in that workdir, twice). Bounded.
_empty_dirs: dict[str, tuple[int, int, int]] = {}


def _note_empty(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if st.st_ctime_ns < time.time_ns() - _IDENTITY_MARGIN_NS:  # not changed within the clock's tick
        if len(_empty_dirs) >= 50_000:
            _empty_dirs.clear()
        _empty_dirs[path] = (st.st_dev, st.st_ino, st.st_ctime_ns)


def _still_empty(fd: int, name: str, path: str) -> bool:
    """Whether the subdirectory `name` of `fd` (at `path`) is, by its identity, as `_note_empty` found it."""
    seen = _empty_dirs.get(path)
    if seen is None:
        return False
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino, st.st_ctime_ns) == seen


#: The init's slot holding the scaffold (`_scaffold`), and its directories: what is bound from each.
_SCAFFOLD = _cinit.SLOT_SCAFFOLD
_SCAFFOLD_DIRS = (("run", 0o755), ("var-run", 0o755), ("dev", 0o755), ("cgroup", 0o755), ("empty", 0))


def _scaffold(plan: Plan) -> None:
    """One tmpfs for the parts of the view that hold nothing the sandbox may write (under Landlock) and that
    were each a tmpfs of their own: /run, a real /var/run, /dev (its node mount points and links),
    /sys/fs/cgroup (its hierarchies' mount points) and the empty directory every denied directory is
    hidden under. Each is a directory of this one tmpfs, bound at its place (`_from_scaffold`; a denied
    directory: OP_MOUNT_AT from the scaffold), with that place's mount flags; a bind's root is its
    directory, so no one of them leads to another (a link or rename between them is EXDEV: two mounts).

    Why: a tmpfs is a superblock of its own, made at the mount and torn down at the sandbox's exit (with
    an RCU-deferred free); five or more per sandbox were among the biggest costs of a spawn. The scaffold's
    root is mounted on /tmp, opened into the init's slot SLOT_SCAFFOLD, and covered by the private /tmp
    right after; the slot is closed when the view is done (emit_paths). Sizes: one `size=50%` for all of
    them, what /run alone had (/dev had 64k, /sys/fs/cgroup 16k); none is writable under Landlock."""
    _mount(plan, "tmpfs", "/tmp", "tmpfs", MS_NOSUID, "mode=0755,size=50%")
    # Each directory is the root of what it is bound at: exactly its mode, whatever the umask the init has
    # (this process's, the supervisor's): a chmod after the mkdir where the umask would take bits away.
    umask = _umask()
    for name, mode in _SCAFFOLD_DIRS:
        path = f"/tmp/{name}"
        _op(plan, _cinit.OP_MKDIR, "mkdir(scaffold directory)", path, a=(mode, int(bool(mode & umask))))
    _op(plan, _cinit.OP_OPEN_PATH, "open(O_PATH, the scaffold)", "/tmp", a=(_SCAFFOLD,))


@functools.cache
def _umask() -> int:
    """This process's umask, read once from /proc/self/status without changing it (os.umask would, for a
    moment, in every thread); 0o777 when it cannot be read (every scaffold directory is then chmodded)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _bind_from_slot(plan: Plan, slot: int, name: str, target: str, what: str) -> None:
    """Bind `name`, below the fd in the init's `slot`, at `target` (mount(2) from /proc/self/fd/N/name)."""
    plan.add(
        _cinit.OP_MOUNT,
        "mounts",
        f"mount(bind, {what})",
        a=(MS_BIND, slot + 1),
        s=(name, target),
        path=target,
    )


def _from_scaffold(plan: Plan, name: str, target: str, flags: int) -> None:
    """Bind the scaffold's directory `name` at `target` with the mount flags `flags` (MS_NOSUID and the
    like: those a tmpfs of its own had there)."""
    _bind_from_slot(plan, _SCAFFOLD, name, target, f"the scaffold's {name}")
    if flags != MS_NOSUID:  # (what the scaffold's mount, and so the bind, has already)
        _mount(plan, None, target, None, MS_BIND | MS_REMOUNT | flags)


def _hide_sockets(plan: Plan) -> None:
    """An empty /run (and a real /var/run) so no host unix socket is reachable by path (the host's /tmp is
    replaced too, by the private /tmp)."""
    _from_scaffold(plan, "run", "/run", MS_NOSUID | MS_NODEV)
    if os.path.isdir("/var/run") and not os.path.islink("/var/run"):
        _from_scaffold(plan, "var-run", "/var/run", MS_NOSUID | MS_NODEV)


def _etc_files(plan: Plan, denied: frozenset[str] = frozenset()) -> None:
    """The sandbox's own /etc/hosts and /etc/hostname, bound read-only over the host's: its hostname (its
    own UTS namespace's) resolves (Python's socket.getfqdn, Java's InetAddress.getLocalHost, `hostname -f`),
    and the host's name is not shown in /etc/hostname. The files are written into the private /run (after
    _hide_sockets), from the host's /etc/hosts (read here, in the fork server: a host file no sandbox can
    write) plus the sandbox's name on loopback.

    A file among `denied` (the deny targets) is left to `_deny`: it is hidden, not replaced. (Replaced, it
    could not be hidden: the bind's file is unlinked from /run, and move_mount onto an unlinked mount root
    fails with ENOENT, so `--deny /etc/hosts` made every run a setup failure.)"""
    from supervisor.sandbox.namespaces import HOSTNAME

    if os.path.isfile("/etc/hosts") and "/etc/hosts" not in denied:
        try:
            with open("/etc/hosts", "rb") as f:
                host = f.read(1 << 16).decode(errors="replace")
        except OSError:
            host = ""
        if host and not host.endswith("\n"):
            host += "\n"
        hosts = f"{host}127.0.0.1\t{HOSTNAME}\n::1\t{HOSTNAME}\n"
        _etc_file(plan, "/etc/hosts", "/run/.corral-hosts", hosts)
    if os.path.isfile("/etc/hostname") and "/etc/hostname" not in denied:
        _etc_file(plan, "/etc/hostname", "/run/.corral-hostname", f"{HOSTNAME}\n")


def _etc_file(plan: Plan, target: str, source: str, content: str) -> None:
    plan.add(
        _cinit.OP_WRITE, "mounts", "creat + write(/run file)", a=(0o644,), s=(source, content), path=source
    )
    _mount(plan, source, target, None, MS_BIND)
    _mount(plan, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _op(plan, _cinit.OP_UNLINK, "unlink(/run file)", source)  # the bind keeps the file; /run shows nothing


def _dev(plan: Plan, shm_size: str = "50%") -> None:
    """A fresh /dev with only harmless nodes and a private /dev/shm of `shm_size` (tmpfs size=). The host's
    /dev is opened (O_PATH, the init's slot SLOT_HOSTDEV) before the tmpfs covers it, and each node is bound
    from that fd (/proc/self/fd/N/name). (It used to be bound, with its submounts, on a helper directory in
    the private /run, then detached: two more mounts of /dev's tree per sandbox, made and torn down.)"""
    slot = _cinit.SLOT_HOSTDEV
    _op(plan, _cinit.OP_OPEN_PATH, "open(O_PATH, the host's /dev)", "/dev", a=(slot,))
    _from_scaffold(plan, "dev", "/dev", MS_NOSUID)
    for name in _DEV_NODES:
        path = f"/dev/{name}"
        _op(plan, _cinit.OP_CREAT, "creat(device mount point)", path, a=(0o666,))
        _bind_from_slot(plan, slot, name, path, f"the host's /dev/{name}")
    plan.add(_cinit.OP_CLOSE, "mounts", "close(the host's /dev)", a=(0, slot + 1), path="/dev")
    for name, target in _DEV_LINKS:
        _op(plan, _cinit.OP_SYMLINK, "symlink", f"/dev/{name}", s=(target, f"/dev/{name}"))
    for d in ("pts", "shm"):
        _op(plan, _cinit.OP_MKDIR, "mkdir", f"/dev/{d}", a=(0o755,))
    _mount(plan, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    _tmpfs(plan, "/dev/shm", "1777", size=shm_size)


def _net_class(plan: Plan, pooled_net: bool) -> None:
    """/sys is the host's sysfs, whose network devices (names, MACs, traffic counters) show even in a
    private network namespace: listed in class/net, and in the device tree, under devices/ (virtual/net,
    and each physical device's net/), where class/net's entries are symlinks to. A sysfs mounted now belongs
    to the new network namespace: its class/net and devices (only lo, in both) are bound over the host's;
    where sysfs cannot be mounted, an empty class/net hides the listing (the device tree stays the host's).
    A pooled namespace belongs to the initial user namespace, so the sandbox could not mount its sysfs: the
    fork server made one (detached, read-only, nosuid, nodev, noexec; the binds keep those) that the init
    finds in slot SLOT_NET_SYSFS."""
    if pooled_net:
        slot = _cinit.SLOT_NET_SYSFS + 1
        binds = []
        for sub in ("class/net", "devices"):
            binds.append(
                plan.add(
                    _cinit.OP_MOUNT,
                    "mounts",
                    f"mount(bind, the pooled namespace's sysfs {sub})",
                    a=(MS_BIND, slot),
                    s=(sub, f"/sys/{sub}"),
                    path=f"/sys/{sub}",
                )
            )
        plan.add(_cinit.OP_CLOSE, "mounts", "close(sysfs fd)", a=(0, slot))
        done = plan.jump()
        for index in binds:
            plan.land(index)
        plan.add(_cinit.OP_CLOSE, "mounts", "close(sysfs fd)", a=(0, slot))
        _tmpfs(plan, "/sys/class/net", "0555", readonly=True)
        plan.land(done)
        return
    tmp = "/run/.corral-sys"
    _op(plan, _cinit.OP_MKDIR, "mkdir(sysfs helper)", tmp, a=(0o700,))
    sysfs = _mount(plan, "sysfs", tmp, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for sub in ("class/net", "devices"):
        _mount(plan, f"{tmp}/{sub}", f"/sys/{sub}", None, MS_BIND)
        _mount(plan, None, f"/sys/{sub}", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _op(plan, _cinit.OP_UMOUNT, "umount2(sysfs helper)", tmp, a=(_MNT_DETACH,))
    _op(plan, _cinit.OP_RMDIR, "rmdir(sysfs helper)", tmp)
    done = plan.jump()
    plan.land(sysfs)  # sysfs could not be mounted: an empty read-only tmpfs instead
    _op(plan, _cinit.OP_RMDIR, "rmdir(sysfs helper)", tmp)
    _tmpfs(plan, "/sys/class/net", "0555", readonly=True)
    plan.land(done)


def _deny_targets(prepared: Prepared) -> list[str]:
    """The denied paths as the objects they name now: each resolved through every symlink (realpath).

    Hiding is by object, not by name: a denied name that a sandbox (of a policy without this deny) made a
    symlink to where it moved the secret hides the secret where it is now. Following a link here grants
    nothing: what is mounted over the target is an empty read-only directory or /dev/null, in the sandbox's
    own mount namespace. (Within a policy that denies a path the sandbox cannot move it or its ancestors at
    all: `_pin_ancestors`.) Raises SetupFailure when a denied name is a link to a directory the sandbox
    needs (`_vital`), which is refused rather than hidden."""
    from policies._roots import system_root
    from policies._validate import resolve_trusted

    out: list[str] = []
    roots: list[str] = prepared["write"]
    denied: list[str] = prepared["deny"]
    for path in denied:
        real = os.path.realpath(path)
        if real != path and (
            _vital(real, roots)
            or (real not in denied and system_root(real) is not None and resolve_trusted(path) != real)
        ):
            # A link at a denied name (one that did not exist: any sandbox that can write there may make
            # it) leading to a directory the sandbox needs, or into the host's system tree (`~/.netrc ->
            # /usr/lib/x86_64-linux-gnu/libc.so.6`): hiding it would break every later sandbox in ways
            # that do not say why (no /usr, no libc: every exec fails). Refuse, naming the link. Links no
            # sandbox could have planted (resolve_trusted: `/lib -> usr/lib`) are followed as before, and
            # a target the policy also denies by its own name is hidden as asked.
            raise _sys.SetupFailure(
                "mounts",
                "resolve denied path",
                errno.ELOOP,
                path,
                f"this denied path is a symlink to {real}, which corral will not hide (a sandbox needs it); "
                "if a sandbox made the link, remove it (to hide that target, deny it by its own name)",
            )
        if real not in out:
            out.append(real)
    for alias in _mount_aliases(out, roots):
        if alias not in out:
            out.append(alias)
    return out


class MountTable:
    """Tells when this process's mount table changed: POLLPRI on a /proc/self/mountinfo fd held for the
    object's life reports each change once; `generation()` counts them. A view planned at one generation
    hides each denied object under the names the mount table gave it then (`_mount_aliases`): a bind mount
    made since gives it another, so a plan (the fork server's cached views) or a sandbox built ahead of its
    command (which may have copied the new mount table with the old plan) of an older generation is not
    used. Without /proc, the generation never moves; nor after `close`."""

    def __init__(self) -> None:
        import select

        self._poll: select.poll | None = None
        self._fd = -1
        self._generation = 0
        try:
            fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLPRI)

    def generation(self) -> int:
        """The number of changes seen so far (a poll with no wait: about a microsecond)."""
        if self._poll is not None and self._poll.poll(0):
            self._generation += 1
        return self._generation

    def close(self) -> None:
        """Close the held fd (it keeps a reference to the mount namespace). Idempotent."""
        fd, self._fd, self._poll = self._fd, -1, None
        if fd >= 0:
            os.close(fd)


def _host_mounts() -> list[tuple[str, str, str]]:
    """(device "major:minor", root within its filesystem, mount point) of each mount of this process's
    mount namespace, in /proc/self/mountinfo's order (a later one on the same point covers an earlier one);
    none when it cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return []

    def text(raw: bytes) -> str:
        if b"\\" in raw:
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
        return os.fsdecode(raw)

    out: list[tuple[str, str, str]] = []
    for line in data.splitlines():
        fields = line.split(b" ", 5)
        if len(fields) > 4:
            out.append((os.fsdecode(fields[2]), text(fields[3]), text(fields[4])))
    return out


def _mount_aliases(targets: list[str], roots: Sequence[str] = ()) -> list[str]:
    """The other names the host's mount table gives each of the denied objects `targets` (real paths): where
    the same filesystem is also mounted (a bind mount of a directory above the object, `mount --bind ~/data
    /srv/data`, a second mount of the device), the object's path there; where a mount's root lies INSIDE a
    denied directory (a bind of `~/.ssh/keys` elsewhere), that mount's point. The same for each mount below a
    denied directory (a bind of `/srv/keys` at `~/.ssh/keys`: its source shows what the denied name holds),
    as a symlink there is followed to its target. A hiding mount covers one name (one mount's dentry): the
    object stayed readable under the others. Only names that lead to the same object now (device and inode,
    lstat) are returned, none that `_vital` (a system directory, or one above a writable root of `roots`:
    hiding it would break the sandbox); the host's mount table is read once. Never raises."""
    mounts = _host_mounts()
    by_dev: dict[str, list[tuple[str, str, str]]] = {}
    by_point: dict[str, tuple[str, str, str]] = {}
    for entry in mounts:
        by_dev.setdefault(entry[0], []).append(entry)
        by_point[entry[2]] = entry  # the last mount on a point covers the others
    if not any(len(same) > 1 for same in by_dev.values()):
        return []
    # (the mount it is found in, its path in that mount's filesystem, its name here)
    objects: list[tuple[tuple[str, str, str], str, str]] = []
    dirs: set[str] = set()
    for target in targets:
        # The mount the target lies in: the one on the deepest mount point above it.
        above = target
        best = by_point.get(above)
        while best is None and above != "/":
            above = os.path.dirname(above)
            best = by_point.get(above)
        if best is None:
            continue
        objects.append((best, best[1].rstrip("/") + target[len(best[2].rstrip("/")) :] or "/", target))
        if os.path.isdir(target) and not os.path.islink(target):
            dirs.add(target)
    for entry in by_point.values():  # the mounts below a denied directory
        point = entry[2]
        if point not in dirs and any(_under(point, (d,)) for d in dirs):
            objects.append((entry, entry[1], point))
    out: list[str] = []
    for mount, inside, name in objects:
        dev = mount[0]
        if len(by_dev[dev]) < 2:
            continue
        try:
            st = os.lstat(name)
        except OSError:
            continue
        for other in by_dev[dev]:
            _dev, other_root, other_point = other
            if other == mount:
                continue
            whole = False
            if _under(inside, (other_root,)):
                alias = other_point.rstrip("/") + inside[len(other_root.rstrip("/")) :] or "/"
            elif _under(other_root, (inside,)) and stat.S_ISDIR(st.st_mode):
                alias, whole = other_point, True  # a mount of something inside the object
            else:
                continue
            if alias in out or alias in targets or _under(alias, targets) or _vital(alias, list(roots)):
                continue
            try:
                a = os.lstat(alias)
            except OSError:
                continue
            if (a.st_dev == st.st_dev) if whole else ((a.st_dev, a.st_ino) == (st.st_dev, st.st_ino)):
                out.append(alias)
    return out


#: Directories a sandbox needs whole: hiding one of them, or an ancestor of a writable root, breaks it.
_VITAL = frozenset(
    (*_HIDDEN, "/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys")
) | {"/var"}


def _vital(real: str, roots: list[str]) -> bool:
    if real in _VITAL:
        return True
    prefix = real.rstrip("/") + "/"
    return any(root == real or root.startswith(prefix) for root in roots)


def _pin_ancestors(
    plan: Plan, root: str, denied: list[str], chains: Sequence[list[tuple[str, bool]]] = ()
) -> None:
    """Make every directory between writable `root` and a denied path that exists below it a mount point
    of its own (bound over itself, as writable as before, carrying the hiding mount below it along), and
    every symlink below `root` that a denied name passes through, with the directories above that link
    (`chains`: `_link_chains`).

    Why: the hiding mounts cover names. A sandbox that may write a parent of a denied path could rename
    the parent (`mv .config .cfg`), and the next sandbox, finding the old name missing, would hide
    nothing and read the secret under the new name. A mount point cannot be renamed, moved or removed
    (EBUSY), so neither can the denied path (itself a mount point) nor any directory above it up to the
    root (itself a mount point). The same for a link on the way to a denied path (a dotfile manager's
    `~/.ssh -> dotfiles/ssh`): the object it leads to is hidden, so a sandbox that retargeted or removed
    the link (`ln -sfn /nowhere ~/.ssh`) made the next one hide nothing and read `~/dotfiles/ssh` (a link
    can be a mount point too: bound over itself from its O_NOFOLLOW fd). Cost: one mount per such
    directory or link, only where a denied path exists inside a writable root (the home directory as
    workdir: ~/.config for ~/.config/gcloud), and an lstat per component of a denied name below a root."""
    prefix = root.rstrip("/") + "/"
    pinned: set[str] = set()

    def pin(path: str, link: bool) -> None:
        if path in pinned or path in denied or _under(path, denied):
            return  # done, or hidden itself: nothing below it is visible to move
        pinned.add(path)
        # Attributes as they are: the copy is as writable as the mount it was taken from (a read-only host
        # mount inside the root stays read-only).
        plan.add(
            _cinit.OP_MOUNT_AT,
            "mounts",
            f"bind over itself, to pin a {'link' if link else 'directory'} on the way to a denied path "
            "(open_tree + move_mount)",
            a=(_AT_SELF, 0, 0, _AT_LINK if link else _AT_SUBMOUNTS),
            s=(path,),
            path=path,
            hint=_LINK_HINT,
        )

    for chain in chains:
        if any(link and p.startswith(prefix) for p, link in chain):
            for p, link in chain:
                if p.startswith(prefix):
                    pin(p, link)
    for path in denied:
        if not path.startswith(prefix) or not os.path.lexists(path):
            continue
        parts = path[len(prefix) :].split("/")[:-1]
        for i in range(1, len(parts) + 1):
            ancestor = prefix + "/".join(parts[:i])
            if ancestor in denied:
                break  # hidden itself: nothing below it is visible to move
            pin(ancestor, False)


def _link_chains(names: Sequence[str]) -> list[list[tuple[str, bool]]]:
    """`_lookup_chain` of each denied name of `names` that passes through a symlink (its real path differs
    from it). Never raises."""
    out: list[list[tuple[str, bool]]] = []
    for name in names:
        try:
            if os.path.realpath(name) == name:
                continue
        except (OSError, ValueError):
            continue
        chain = _lookup_chain(name)
        if any(link for _p, link in chain):
            out.append(chain)
    return out


def _lookup_chain(name: str) -> list[tuple[str, bool]]:
    """What the kernel looks at to resolve the absolute path `name`: each directory passed through and each
    symlink met, as (its path with no symlink in it, whether it is a link), in order; up to the first
    missing or unreadable component, 40 links at most. The resolved object itself is left out. Never
    raises."""
    parts = [p for p in name.split("/") if p and p != "."]
    done = "/"
    out: list[tuple[str, bool]] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            done = os.path.dirname(done)
            continue
        path = os.path.join(done, part)
        try:
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                if parts:
                    out.append((path, False))
                done = path
                continue
            hops += 1
            if hops > 40:
                break
            target = os.readlink(path)
        except (OSError, ValueError):
            break
        out.append((path, True))
        if target.startswith("/"):
            done = "/"
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return out


def _kept_roots(prepared: Prepared, overlays: Sequence[str]) -> list[str]:
    """The roots (writable, readable) below an overlay of `overlays`: `keep_visible` binds them back."""
    if not overlays:
        return []
    roots: list[str] = [*prepared["write"], *prepared["read"]]
    return [r for r in roots if _under(r, overlays)]


def _overlay(plan: Plan, top: str, denied: list[str], share: Share | None = None) -> None:
    """Show host directory `top` through an overlay of its own (`overlay_roots`): read-only, nosuid, nodev.
    Its layers: a directory of whiteouts for the denied names below `top` that do not exist now
    (`_whiteouts`), so that the host creating one during the run (a first `git credential-store`, `aws
    configure`) does not show it either, over `top` itself; or, without absent names (or when that
    directory cannot be made), `top` over an empty directory (an overlay without an upper layer needs two).

    With `share` (the fork server, where the kernel lets it make one: a root caller's), the overlay is a copy
    of a detached one the fork server made for every sandbox of the view (OP_CLONE_AT: open_tree of its fd
    with what is mounted on it, moved onto `top`), not a new superblock per sandbox: a new one cost each
    sandbox ~0.2-0.4 ms of CPU with its lookups and teardown. Each sandbox's copy is its own mount (the
    hiding mounts made on it later are its own); the superblock, which every copy shares, belongs to the
    fork server's user namespace, over which no sandbox has a capability. Its dentries outlive each
    sandbox, so the fork server makes it anew often enough to show the host's changes
    (forkserver/_overlays.py). When the copy fails, the sandbox makes its own, as without `share`.

    When the kernel refuses its own overlay (no overlayfs, or one stacked too deep, as in a sandbox in a
    sandbox) the view goes on without it: the denied names are then hidden on the host's dentries, as
    before."""
    layer = _whiteouts(top, denied)
    fd = None
    if share is not None:
        empty = layer or _empty_layer()
        if empty is not None:
            fd = share(top, f"{layer}:{top}" if layer else f"{top}:{empty}")
    done = -1
    if fd is not None:
        what = "copy the shared overlay (open_tree + move_mount)"
        clone = _op(plan, _cinit.OP_CLONE_AT, what, top, a=(fd,))
        plan.add(_cinit.OP_CLOSE, "mounts", "close(the shared overlay's fd)", a=(fd, 0), path=top)
        done = plan.jump()
        plan.land(clone)
        plan.add(_cinit.OP_CLOSE, "mounts", "close(the shared overlay's fd)", a=(fd, 0), path=top)
    index = _mount(
        plan,
        "overlay",
        top,
        "overlay",
        MS_RDONLY | MS_NOSUID | MS_NODEV,
        f"lowerdir={layer}:{top}" if layer else f"lowerdir={top}:/tmp/empty",
    )
    plan.land(index)
    if done >= 0:
        plan.land(done)


def _empty_layer() -> str | None:
    """An empty directory of this process under /dev/shm (`_layer_home`), the lower layer under `top` of a
    shared overlay without whiteouts (the scaffold's, which a sandbox's own overlay uses, is not the fork
    server's). None when it cannot be made."""
    if _EMPTY:
        return _EMPTY[0]
    try:
        path = os.path.join(_layer_home(), "empty")
        os.mkdir(path, 0o755)
    except OSError:
        return None
    _EMPTY.append(path)
    return path


#: The whiteout layers this process made (`_whiteouts`), by what they stand for; and where it makes them.
_LAYERS: dict[tuple[object, ...], str] = {}
_LAYER_HOME: list[str] = []
#: The fd of `_LAYER_HOME` holding its maker's flock (`_sweep_layers`).
_LAYER_LOCK: list[int] = []
#: The prefix of a layer home's name until it is locked (the sweep passes over it).
_NEW_LAYER_HOME = "corral-whiteouts-new-"
_MAX_LAYERS = 256
#: `_empty_layer`'s directory, once made.
_EMPTY: list[str] = []


def _whiteouts(top: str, denied: list[str]) -> str | None:
    """A host directory that, as an overlay layer over `top`, hides every denied path below `top` that is
    missing now while its parent directory exists (a whiteout: the character device 0:0, which any user
    may make), with the mode and owner of `top` and of each directory on the way (an overlay shows a
    directory's attributes from the topmost layer that has it). None when there is no such path, or when a
    directory's owner cannot be given (an ordinary user's process and a directory of another account).

    Made once per set of names and attributes, each layer as `top` is, in a directory of this process
    under /dev/shm (mode 0711: traversable, not listable), which every sandbox's view replaces: no sandbox
    can see or change it. Removed at exit (atexit), or by the next process that makes one when this one
    was killed (`_sweep_layers`); at most _MAX_LAYERS (then None). Never raises."""
    names: list[tuple[str, ...]] = []
    dirs: dict[tuple[str, ...], tuple[int, int, int]] = {}
    prefix = top.rstrip("/") + "/"
    try:
        st = os.lstat(top)
    except OSError:
        return None
    dirs[()] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    for path in denied:
        if not path.startswith(prefix):
            continue
        parts = tuple(path[len(prefix) :].split("/"))
        try:
            os.lstat(path)
            continue  # exists: hidden by a mount on the overlay's dentry
        except FileNotFoundError:
            pass
        except OSError:
            continue
        ok = True
        for i in range(1, len(parts)):
            key = parts[:i]
            if key in dirs:
                continue
            try:
                d = os.lstat(prefix + "/".join(key))
            except OSError:
                ok = False
                break
            if not stat.S_ISDIR(d.st_mode):
                ok = False
                break
            dirs[key] = (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid)
        if ok:
            names.append(parts)
    if not names:
        return None
    used = {k: v for k, v in dirs.items() if any(n[: len(k)] == k and len(n) > len(k) for n in names)}
    wanted = (top, tuple(sorted(names)), tuple(sorted(used.items())))
    layer = _LAYERS.get(wanted)
    if layer is not None and os.path.isdir(layer):
        return layer
    if len(_LAYERS) >= _MAX_LAYERS:
        return None
    try:
        layer = _make_layer(names, used)
    except OSError:
        return None
    _LAYERS[wanted] = layer
    return layer


def _sweep_layers() -> None:
    """Remove the whiteout directories under /dev/shm of this account that no live process holds (a fork
    server killed runs no atexit handler). The maker holds a shared flock on its directory for its life
    (`_make_layer`), so a directory this can lock exclusively has no live maker: the pid in the name is not
    asked, since a fork server in a pid namespace of its own names its directory with a pid the host gives
    to another process. Never raises."""
    import fcntl
    import shutil

    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[:2] != ["corral", "whiteouts"] or not parts[2].isdigit():
            continue
        path = f"/dev/shm/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its maker is alive
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _layer_home() -> str:
    """This process's directory of whiteout layers under /dev/shm (`_whiteouts`), made on first use: mode
    0711, flocked for this process's life (`_sweep_layers`), removed at exit. Raises OSError."""
    if not _LAYER_HOME:
        import atexit
        import fcntl
        import shutil
        import tempfile

        _sweep_layers()
        # Made under a name the sweep passes over, locked (a shared flock held for this process's life, on
        # an fd every sandbox's init closes), then given its name: no sweep can take it in between.
        made = tempfile.mkdtemp(prefix=_NEW_LAYER_HOME, dir="/dev/shm")
        # Traversable, not listable: the sandbox's init resolves a layer's path as whoever it runs as.
        os.chmod(made, 0o711)
        lock = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fcntl.flock(lock, fcntl.LOCK_SH)
        _LAYER_LOCK.append(lock)
        home = f"/dev/shm/corral-whiteouts-{os.getpid()}-{os.path.basename(made)[len(_NEW_LAYER_HOME) :]}"
        os.rename(made, home)
        _LAYER_HOME.append(home)
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:  # not in a child that inherited the handler
                shutil.rmtree(home, ignore_errors=True)

        atexit.register(remove)
    return _LAYER_HOME[0]


def _make_layer(names: list[tuple[str, ...]], dirs: dict[tuple[str, ...], tuple[int, int, int]]) -> str:
    """Make one whiteout layer (see `_whiteouts`) and return its path. Raises OSError."""
    import tempfile

    layer = tempfile.mkdtemp(dir=_layer_home())
    me = os.geteuid()
    try:
        for key in sorted(dirs, key=len):
            path = os.path.join(layer, *key)
            if key:
                os.mkdir(path, 0o700)
            for n in names:
                if n[:-1] == key:
                    os.mknod(os.path.join(path, n[-1]), stat.S_IFCHR | 0o600, 0)
        for key in sorted(dirs, key=len, reverse=True):
            mode, uid, gid = dirs[key]
            path = os.path.join(layer, *key)
            if (uid, gid) != (me, os.getegid()):
                if me != 0:
                    raise PermissionError(errno.EPERM, "another account's directory", path)
                os.chown(path, uid, gid)
            os.chmod(path, mode)
    except OSError:
        import shutil

        shutil.rmtree(layer, ignore_errors=True)
        raise
    return layer


def _deny(plan: Plan, path: str, denied: list[str]) -> None:
    """Hide `path` if it exists (on the host, now), from the init's no-follow fd of it (OP_MOUNT_AT).
    `denied`: every deny target of the view (`_links_outside`). Raises SetupFailure when it cannot be
    looked up, or when it is a regular file with hard links that `denied` does not all hide."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # Missing, or unreachable for this uid (an ordinary user's sandbox and /root/.ssh): the command
        # cannot reach it either, so there is nothing to hide.
        return
    except OSError as err:
        raise _sys.SetupFailure("mounts", "lstat(deny path)", err.errno or 0, path) from err
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        _links_outside(path, st, denied)
    if stat.S_ISDIR(st.st_mode):
        what, operation, arg = (
            _AT_SCAFFOLD,
            "hide with the scaffold's empty mode-0 directory, read-only (open_tree + move_mount)",
            "empty",
        )
    else:
        what, operation, arg = _AT_SOURCE, "hide with /dev/null (open_tree + move_mount)", "/dev/null"
    plan.add(
        _cinit.OP_MOUNT_AT,
        "mounts",
        operation,
        a=(what, _RO_ATTRS, 0, 0),
        s=(path, arg),
        path=path,
        hint=_LINK_HINT,
    )


def _links_outside(path: str, st: os.stat_result, denied: list[str]) -> None:
    """Refuse a denied regular file (`st`: its lstat) that has more hard links than the denied names
    leading to it: its content is readable under the other names, which a mount over this name cannot hide
    and which no lookup finds short of walking every readable root (the whole filesystem). Raises
    SetupFailure (EMLINK) naming the file, its link count and what to do; never when every link is itself
    denied by name (the user hid them all)."""
    found = 0
    for other in denied:
        try:
            o = st if other == path else os.lstat(other)
        except OSError:
            continue
        found += (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino)
    if found >= st.st_nlink:
        return
    raise _sys.SetupFailure(
        "mounts",
        "hide denied file",
        errno.EMLINK,
        path,
        f"this denied file has {st.st_nlink} hard links and the policy hides {found} of them: its content "
        "would be readable under the other names (a mount hides a name, not a file). Deny every other "
        "name too, or remove the other names (find them: find / -xdev -samefile FILE)",
    )


# ----------------------------------------------------------------------------------------------------------
# The sandbox's own cgroup view.

CGROUP_ROOT = "/sys/fs/cgroup"
#: One entry of a cgroup view: ("mount", mount point, fstype, mount data) or ("link", path, target, None).
CgroupViewEntry = tuple[str, str, str, str | None]
_cgroup_views: dict[tuple[str, ...], tuple[CgroupViewEntry, ...]] = {}
_host_cgroup_mounts: list[tuple[str, str, str | None]] | None = None
_host_cgroup_links: list[tuple[str, str]] = []


def _host_cgroups() -> list[tuple[str, str, str | None]]:
    """The host's cgroup mounts as this process sees them (mount point, fstype, mount data for a fresh
    mount of the same hierarchy: v1 its controllers or name=, v2 nothing), read once; and, in
    _host_cgroup_links, the symlinks directly under /sys/fs/cgroup (cpu -> cpu,cpuacct)."""
    global _host_cgroup_mounts
    if _host_cgroup_mounts is None:
        from supervisor.sandbox.cgroups import parse_mountinfo

        try:
            with open("/proc/self/mountinfo") as f:
                entries = parse_mountinfo(f.read())
            with open("/proc/cgroups") as f:
                known = {line.split()[0] for line in f if line and not line.startswith("#")}
        except OSError:
            entries, known = [], set()
        found: list[tuple[str, str, str | None]] = []
        for e in entries:
            data = None
            if e.fstype == "cgroup":
                data = ",".join(sorted(o for o in e.options if o in known or o.startswith("name="))) or None
            found.append((e.mount_point, e.fstype, data))
        try:
            names = os.listdir(CGROUP_ROOT)
        except OSError:
            names = []
        for name in names:
            path = f"{CGROUP_ROOT}/{name}"
            if os.path.islink(path):
                with_target = os.readlink(path)
                if "/" not in with_target:
                    _host_cgroup_links.append((path, with_target))
        _host_cgroup_mounts = found
    return _host_cgroup_mounts


def cgroup_view(placement_files: Sequence[str], own_namespace: bool) -> tuple[CgroupViewEntry, ...]:
    """What `emit_cgroup_view` shows a sandbox placed by `placement_files` (its leaf's v1 `tasks` or v2
    `cgroup.procs` files): each hierarchy that holds one of them and is mounted directly on or under
    /sys/fs/cgroup, mounted afresh (so that, inside the sandbox's cgroup namespace, its root is the leaf),
    and the host's symlinks to those; nothing without `own_namespace` (a fresh mount would show the host's
    root) or without a leaf. Memoised by the leaves' parent directories (the same for every sandbox of a
    supervisor): per spawn, a tuple and a dict lookup."""
    if not own_namespace or not placement_files:
        return ()
    key = tuple(p.rsplit("/", 2)[0] for p in placement_files)
    view = _cgroup_views.get(key)
    if view is None:
        mounts = _host_cgroups()
        entries: list[CgroupViewEntry] = []
        for path in placement_files:
            best: tuple[str, str, str | None] | None = None
            for m in mounts:
                if path.startswith(m[0].rstrip("/") + "/") and (best is None or len(m[0]) > len(best[0])):
                    best = m
            if best is None or not (best[0] == CGROUP_ROOT or os.path.dirname(best[0]) == CGROUP_ROOT):
                continue
            entry: CgroupViewEntry = ("mount", best[0], best[1], best[2])
            if entry not in entries:
                entries.append(entry)
        shown = {os.path.basename(e[1]) for e in entries}
        entries += [("link", path, target, None) for path, target in _host_cgroup_links if target in shown]
        view = tuple(entries)
        if len(_cgroup_views) >= 64:
            _cgroup_views.clear()
        _cgroup_views[key] = view
    return view


def emit_cgroup_view(prepared: Prepared, view: tuple[CgroupViewEntry, ...], plan: Plan) -> None:
    """Step 8 (from emit_paths), in the cgroup namespace entered in step 7: /sys/fs/cgroup becomes the
    sandbox's own view (`view`, from `cgroup_view`), over anything bound under it before. The scaffold's
    cgroup directory (`_scaffold`) goes over /sys/fs/cgroup; on v2 (cgroup2 mounted on /sys/fs/cgroup
    itself) cgroup2 is mounted afresh on top of it (not directly over the host's mount: the kernel refuses
    a superblock mounted over its own root, EBUSY), otherwise each of the leaf's hierarchies afresh on a
    directory of the host's name.
    Mounted inside the sandbox's cgroup namespace, a hierarchy's root is the namespace's root: the
    sandbox's leaf. Everything is read-only (the leaf's files belong to the supervisor's uid, which the
    sandbox shares: a writable view would let it raise its own limits). A hierarchy that cannot be
    mounted (an older kernel) is left out: the host's tree is hidden either way. Only under `confine`
    (the read-only host tree), like the rest of the view."""
    if not prepared["confine"] or not os.path.isdir(CGROUP_ROOT):
        return
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _from_scaffold(plan, "cgroup", CGROUP_ROOT, flags)
    unified = [e for e in view if e[0] == "mount" and e[1] == CGROUP_ROOT]
    for kind, path, fstype, data in unified or view:
        if kind == "link":
            _op(plan, _cinit.OP_SYMLINK, "symlink", path, s=(fstype, path))
            continue
        if path != CGROUP_ROOT:
            _op(plan, _cinit.OP_MKDIR, "mkdir(cgroup mount point)", path, a=(0o555,))
        plan.land(_mount(plan, fstype, path, fstype, flags, data))  # on failure: on to the next op
    _setattr(plan, CGROUP_ROOT, MOUNT_ATTR_RDONLY, 0, recursive=True)
