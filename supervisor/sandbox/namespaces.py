"""Linux namespaces: user (with uid/gid maps), pid, net (loopback only), mount, ipc, uts, cgroup.

The sandbox init (supervisor/sandbox/_cinit.c) is launched into new user and pid namespaces, and the
launched child writes its own id maps before its exec (one line mapping its own uid, and one its own gid,
is what any process may write into its new namespace); the init unshares the others itself, in the order
forkserver/server.py gives. It is pid 1 of its pid namespace: when it exits, the kernel kills everything
left in the namespace, so no daemon outlives the sandbox.
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
from typing import TYPE_CHECKING, TypedDict

from supervisor.sandbox import _cinit, _hostfs, _sys
from supervisor.sandbox.probe import NAMESPACE_FLAGS

if TYPE_CHECKING:
    from policies import Policy
    from supervisor._errors import SandboxSetupError
    from supervisor.sandbox._ops import Plan
    from supervisor.sandbox.probe import KernelCaps

_HINTS = {
    "user": (
        "user namespaces are disabled (sysctl user.max_user_namespaces=0, "
        "kernel.unprivileged_userns_clone=0, or an AppArmor restriction as on Ubuntu 24.04: "
        "sysctl kernel.apparmor_restrict_unprivileged_userns=0); enable them, run as root, "
        "or set best_effort"
    ),
}

#: The sandbox's hostname (its own UTS namespace); its /etc/hosts resolves it (mounts._etc_files).
HOSTNAME = "corral"


def wanted(policy: Policy) -> list[str]:
    """The namespaces `policy` asks for, user first."""
    names = ["user", "pid", "mount", "ipc", "uts", "cgroup"]
    if policy.network.mode != "host":  # "none", and "proxy": none plus corral's proxy on its loopback
        names.append("net")
    return names


class Prepared(TypedDict):
    """What `prepare` decides (builtins only: it crosses to the fork server with marshal)."""

    flags: int
    user: bool
    owner: bool
    uid: int
    gid: int
    net: bool
    uts: bool
    hostname: str
    proxy: int
    enforced: list[str]
    missing: list[list[str]]


def prepare(policy: Policy, caps: KernelCaps) -> Prepared:
    """Decide the clone flags and id maps. Raises SandboxSetupError when a wanted namespace is unavailable
    and the policy is not best_effort; with best_effort the missing ones are listed in "missing"."""
    from policies._network import PROXY_PORT
    from supervisor._errors import SandboxSetupError

    flags = 0
    enforced: list[str] = []
    missing: list[list[str]] = []
    user = caps.namespace("user")
    unprivileged = caps.uid != 0
    for name in wanted(policy):
        feat = caps.namespace(name)
        # Without a user namespace an ordinary user can create no other namespace either.
        if feat.available and (name == "user" or user.available or not unprivileged):
            flags |= NAMESPACE_FLAGS[name]
            enforced.append(f"{name}_ns")
            continue
        reason = feat.reason if not feat.available else "needs a user namespace, which is unavailable"
        if not policy.best_effort:
            raise _unavailable(name, reason, caps)
        missing.append([f"{name}_ns", reason])
    proxy = policy.network.mode == "proxy"
    if proxy and not flags & NAMESPACE_FLAGS["net"]:
        # Not even best_effort: the proxy's port would be bound on the host's loopback, and the command
        # would have the host's network besides.
        raise SandboxSetupError(
            "namespaces",
            "clone(CLONE_NEWNET)",
            caps.namespace("net").errno or errno.EPERM,
            hint='network mode "proxy" needs a network namespace of the sandbox\'s own; use "none" or "host"',
        )
    user_ns = bool(flags & NAMESPACE_FLAGS["user"])
    return {
        "flags": flags,
        "user": user_ns,
        # A root caller's sandbox runs as the owner of its workdir (see owner_maps); the fork server writes
        # its id maps, which only a process privileged over the parent namespace may.
        "owner": user_ns and caps.uid == 0,
        "uid": caps.uid,
        "gid": caps.gid,
        "net": bool(flags & NAMESPACE_FLAGS["net"]),
        "uts": bool(flags & NAMESPACE_FLAGS["uts"]),
        "hostname": HOSTNAME,
        "proxy": PROXY_PORT if proxy else 0,  # the port emit() has the init listen on
        "enforced": enforced,
        "missing": missing,
    }


def _unavailable(name: str, reason: str, caps: KernelCaps) -> SandboxSetupError:
    """The SandboxSetupError `prepare` raises when the wanted namespace `name` is unavailable (`reason`)."""
    from supervisor._errors import SandboxSetupError

    user = caps.namespace("user")
    feat = caps.namespace(name)
    hint = _HINTS.get(name, f"{name} namespace {reason}; set best_effort to run without it")
    if caps.uid != 0 and user.available and feat.errno == errno.EPERM:
        # A user namespace that can be made but grants nothing inside is what Ubuntu 24.04's
        # AppArmor restriction looks like.
        hint = (
            f"{name} namespace {reason} inside a new user namespace: AppArmor's "
            "kernel.apparmor_restrict_unprivileged_userns (Ubuntu 24.04) denies capabilities there; "
            "allow it with an AppArmor profile for this interpreter (which creates the namespace) "
            "and for supervisor/sandbox/corral-init (which runs in it), set the sysctl to 0, or set "
            "best_effort"
        )
    return SandboxSetupError(
        "namespaces",
        f"clone(CLONE_NEW{name.upper() if name != 'mount' else 'NS'})",
        feat.errno or user.errno,
        hint=hint,
    )


def clone_flags(prepared: Prepared) -> int:
    """The namespaces the init is launched into: user and pid (the init is pid 1 of the new one)."""
    flags = prepared["flags"]
    return flags & (NAMESPACE_FLAGS["user"] | NAMESPACE_FLAGS["pid"])


def launch_maps(prepared: Prepared) -> tuple[int, int] | None:
    """The init's own id maps, in the user namespace it is launched into: the caller's uid and gid mapped
    to themselves (identity maps keep file ownership meaningful for the workdir; the sandbox has no
    capability over anything outside its namespaces), as (uid, gid) for `_cinit.start(premap=...)`: the
    launched child writes them (setgroups denied first, as it must be) before its exec, so that mapped to
    root it keeps its capabilities across the exec. None without a user namespace. For a root caller's
    sandbox in another account's workdir the fork server writes them instead (owner_maps,
    write_owner_maps)."""
    if not prepared["user"]:
        return None
    return prepared["uid"], prepared["gid"]


def map_failure(operation: str, err: int) -> _sys.SetupFailure:
    """The failure of the id maps the launched child could not write (`operation`: which file)."""
    return _sys.SetupFailure("namespaces", operation, err, hint=_HINTS["user"])


def emit(prepared: Prepared, plan: Plan, pooled_net: bool = False) -> None:
    """The mount, network, ipc and uts namespaces (owned by the new user namespace), the hostname in the new
    UTS namespace, and loopback up in the new network namespace (so servers and tests inside work; nothing
    outside is reachable). The cgroup namespace comes later, once the sandbox is in its leaf (see
    forkserver/server.py). `pooled_net`: the init was launched into a network namespace of the fork
    server's pool, private to it and with loopback up already (forkserver/netpool.py), so it makes none."""
    flags = prepared["flags"]
    rest = flags & ~NAMESPACE_FLAGS["user"] & ~NAMESPACE_FLAGS["pid"] & ~NAMESPACE_FLAGS["cgroup"]
    if pooled_net:
        rest &= ~NAMESPACE_FLAGS["net"]
    if rest:
        plan.add(_cinit.OP_UNSHARE, "namespaces", f"unshare(flags={rest:#x})", a=(rest,))
    if prepared["uts"]:
        plan.add(_cinit.OP_SETHOSTNAME, "namespaces", "sethostname", s=(str(prepared["hostname"]),))
    if prepared["net"] and not pooled_net:
        plan.add(_cinit.OP_LOOPBACK_UP, "namespaces", "ioctl(SIOCSIFFLAGS, lo up)")
        # ICMP echo sockets (SOCK_DGRAM, IPPROTO_ICMP: what `ping` uses without CAP_NET_RAW) for the
        # sandbox's gid in its own namespace, which has only loopback. A new namespace allows no group
        # ("1 0"). The gids are read in our user namespace, where only the caller's gid is mapped. A
        # convenience, not a layer: a failure (read-only /proc/sys in a container, no such sysctl) is
        # skipped (the op's on-failure exit lands on the next op).
        gid = prepared["gid"]
        i = plan.add(
            _cinit.OP_WRITE,
            "namespaces",
            "write /proc/sys/net/ipv4/ping_group_range",
            s=("/proc/sys/net/ipv4/ping_group_range", f"{gid} {gid}"),
        )
        plan.land(i)
    port = prepared.get("proxy", 0)
    if port:
        # corral's proxy (network mode "proxy"): a listening socket on the new namespace's 127.0.0.1:3128,
        # sent to the supervisor, which serves it from the host side (supervisor/_proxy.py). Nothing of
        # the proxy runs in the sandbox; in a pooled namespace as in a new one.
        plan.add(
            _cinit.OP_PROXY_LISTEN,
            "network",
            f"listen on 127.0.0.1:{port} for corral's proxy",
            a=(port, 4096),
            hint="the port is taken in the sandbox's network namespace, or the supervisor's socket is gone",
        )


#: The id a root caller's sandbox runs as when its workdir's group is root's (any gid but 0 would do; this
#: is `nogroup`'s on Debian, and the kernel's overflow gid).
OWNER_FALLBACK_GID = 65534


#: owner_maps for a root-owned workdir: the launched child writes these itself (launch_maps), as any
#: caller's does.
ROOT_MAPS = (b"0 0 1\n", b"0 0 1\n")


def owner_maps(workdir: str) -> tuple[bytes, bytes]:
    """The uid_map and gid_map of a root caller's sandbox whose workdir is `workdir` (issue 11, item 2;
    docs/security.md, "Identity").

    0 is always mapped to itself: the init sets the sandbox up as root (the files its setup makes on the
    sandbox's own tmpfs need a mapped owner) and holds no capability over anything outside its namespaces.
    When the workdir belongs to another account (a developer's checkout, an unpacked sdist), that account's
    uid and gid are mapped to themselves too, and the init becomes them before it drops its capabilities
    (_cinit.c, OP_SETID): the command runs as the workdir's owner, writes what the owner could, and the files
    it makes belong to the owner. The owner is looked up without following any symlink (as the init opens
    the workdir): a workdir that is, or passes through, a link gives root's maps, and the init then refuses
    the link anyway. A group of 0 is replaced by OWNER_FALLBACK_GID: the sandbox never holds host gid 0
    as an account other than root.

    The owner decides the identity only when no third account could have put the directory there: a
    directory on the way that another account owns, or that every user may write (without the sticky
    bit), lets that account rename a directory of someone else (root's `build/` left by `sudo make` in a
    checkout, a colleague's directory) to the workdir's name, and so choose whom the next root caller's
    sandbox runs as: its code, written by that account, would then run as root or as the colleague.
    Raises _sys.SetupFailure (EPERM) naming that directory (`check_placement`); otherwise never raises."""
    root = ROOT_MAPS
    try:
        top = _hostfs.open_root("/")
    except OSError:
        return root
    try:
        fd = _hostfs.open_beneath(top, workdir.lstrip("/") or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return root
    finally:
        os.close(top)
    try:
        st = os.fstat(fd)
        check_placement(fd, st, workdir)
    finally:
        os.close(fd)
    if st.st_uid == 0:
        return root
    gid = owner_gid(st.st_uid, st.st_gid)
    return (f"0 0 1\n{st.st_uid} {st.st_uid} 1\n".encode(), f"0 0 1\n{gid} {gid} 1\n".encode())


#: The deepest path `check_placement` walks up (a path of PATH_MAX has at most 2048 components).
_MAX_DEPTH = 2048


def check_placement(fd: int, st: os.stat_result, workdir: str) -> None:
    """Raise _sys.SetupFailure (EPERM) when an account other than root and the workdir's owner could have
    moved the workdir into place: a directory above it (`..` from `fd`, the workdir opened without
    following a link, up to `/`) that such an account owns, or that is writable by every user without the
    sticky bit. Such an account may rename an entry it does not own in its own directory, and move its own
    directories, so it could put root's or a third account's directory at the workdir's name and choose the
    identity of a root caller's sandbox there (see owner_maps). A group-writable directory is not refused
    (its members are not looked up: docs/security.md, "Identity", Residual). Cost: an openat and an fstat
    per directory above the workdir."""
    owner = st.st_uid
    path = os.path.normpath(workdir)
    seen = (st.st_dev, st.st_ino)
    cur = os.dup(fd)
    try:
        for _ in range(_MAX_DEPTH):
            if path == "/":
                return
            nxt = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
            path = os.path.dirname(path)
            up = os.fstat(cur)
            if (up.st_dev, up.st_ino) == seen:
                return  # `/` (its `..` is itself)
            seen = (up.st_dev, up.st_ino)
            other = up.st_uid not in (0, owner)
            everyone = up.st_mode & 0o002 and not up.st_mode & 0o1000
            if other or everyone:
                who = f"{_name(up.st_uid)}, its owner" if other else "every user (mode o+w, no sticky bit)"
                them = _name(owner)
                fix = "root" if owner == 0 else f"root or {them}"
                hint = (
                    f"the workdir belongs to {them}, but {path} above it may be changed by {who}, who could "
                    f"have moved a directory of {them} to the workdir's name to make the sandbox run as "
                    f"{them}; corral does not run there: give {path} to {fix} (and no write access to "
                    "others), or use another workdir"
                )
                raise _sys.SetupFailure("namespaces", "look up the workdir's owner", errno.EPERM, path, hint)
    except OSError:
        return  # unreadable above: the owner stays as looked up (the init opens the workdir itself)
    finally:
        os.close(cur)


def _name(uid: int) -> str:
    """`name (uid N)` for messages, else ``uid N``."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OSError):
        return f"uid {uid}"


def owner_gid(uid: int, gid: int) -> int:
    """The gid a root caller's sandbox gets in a workdir owned by `uid` with group `gid`: OWNER_FALLBACK_GID
    for 0; else `gid` when the owner is a member of it (their primary group, or a supplementary one in the
    group database), else the owner's primary group (OWNER_FALLBACK_GID if that is 0). An account the
    password database does not know (an unpacked archive's ids) keeps the directory's group: there is no
    membership to check.

    Why: the directory's group is not the owner's to choose. A host-made set-gid directory passes its
    group (`adm`, say) to every directory made inside it, by the owner's sandbox too, so a sandbox could
    make itself the workdir of a later sandbox that ran as the owner WITH that group, which the owner
    never had (tests/kernel/test_attack_variants.py). Never raises."""
    if gid == 0:
        return OWNER_FALLBACK_GID
    groups = _groups(uid)
    if groups is not None and gid not in groups:
        gid = groups[0]
    return gid or OWNER_FALLBACK_GID


@functools.lru_cache(maxsize=64)
def _groups(uid: int) -> tuple[int, ...] | None:
    """`uid`'s primary group, then its other groups (password and group databases; cached for the fork
    server's life), or None for an account the password database does not know."""
    try:
        entry = pwd.getpwuid(uid)
        others = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except (KeyError, OSError, ValueError):
        return None
    return (entry.pw_gid, *(g for g in others if g != entry.pw_gid))


def write_owner_maps(pid: int, maps: tuple[bytes, bytes]) -> None:
    """Write `maps` (owner_maps) as the id maps of the init `pid`, which waits for its plan meanwhile.
    setgroups stays allowed when another account is mapped (the init then sheds the caller's supplementary
    groups with setgroups before it becomes the owner) and is denied otherwise, as for any other caller.
    Raises OSError (EPERM: root without CAP_SETUID/CAP_SETGID, as in some containers)."""
    uid_map, gid_map = maps
    files = [("uid_map", uid_map), ("gid_map", gid_map)]
    if uid_map.count(b"\n") == 1:
        files.insert(1, ("setgroups", b"deny"))
    for name, data in files:
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def emit_become_owner(prepared: Prepared, plan: Plan, supervisor_pidfd: int) -> None:
    """For a root caller: become the workdir's owner if the fork server mapped one (owner_maps), and arm
    PDEATHSIG again. Needs CAP_SETUID/CAP_SETGID, so before the capability drop."""
    if prepared.get("owner"):
        plan.add(
            _cinit.OP_SETID,
            "namespaces",
            "become the workdir's owner",
            a=(supervisor_pidfd,),
            hint="the workdir's owner could not be taken on (its uid and gid must be mapped)",
        )
