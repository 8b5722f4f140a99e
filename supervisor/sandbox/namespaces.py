"""Linux namespaces: user (with uid/gid maps), pid, net (loopback only), mount, ipc, uts, cgroup.

The fork server creates them all at once with clone(2) flags, so the child is born inside them; the parent
(the fork server) then writes the id maps, which only a process in the parent user namespace may do with
arbitrary ids. The child is pid 1 of its pid namespace: when it exits, the kernel kills everything left in
the namespace, so no daemon outlives the sandbox.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING

from supervisor.sandbox import _sys
from supervisor.sandbox.probe import NAMESPACE_FLAGS

if TYPE_CHECKING:
    from policies import Policy
    from supervisor.sandbox.probe import KernelCaps

_HINTS = {
    "user": (
        "user namespaces are disabled (sysctl user.max_user_namespaces=0, "
        "kernel.unprivileged_userns_clone=0, or an AppArmor restriction as on Ubuntu 24.04: "
        "sysctl kernel.apparmor_restrict_unprivileged_userns=0); enable them, run as root, "
        "or set best_effort"
    ),
}


def wanted(policy: Policy) -> list[str]:
    """The namespaces `policy` asks for, user first."""
    names = ["user", "pid", "mount", "ipc", "uts", "cgroup"]
    if policy.network.mode == "none":
        names.append("net")
    return names


def prepare(policy: Policy, caps: KernelCaps) -> dict[str, object]:
    """Decide the clone flags and id maps. Raises SandboxSetupError when a wanted namespace is unavailable
    and the policy is not best_effort; with best_effort the missing ones are listed in "missing"."""
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
            hint = _HINTS.get(name, f"{name} namespace {reason}; set best_effort to run without it")
            if unprivileged and user.available and feat.errno == errno.EPERM:
                # A user namespace that can be made but grants nothing inside is what Ubuntu 24.04's
                # AppArmor restriction looks like.
                hint = (
                    f"{name} namespace {reason} inside a new user namespace: AppArmor's "
                    "kernel.apparmor_restrict_unprivileged_userns (Ubuntu 24.04) denies capabilities there; "
                    "allow it for this interpreter with an AppArmor profile, set the sysctl to 0, or set "
                    "best_effort"
                )
            raise SandboxSetupError(
                "namespaces",
                f"clone(CLONE_NEW{name.upper() if name != 'mount' else 'NS'})",
                feat.errno or user.errno,
                hint=hint,
            )
        missing.append([f"{name}_ns", reason])
    return {
        "flags": flags,
        "user": bool(flags & NAMESPACE_FLAGS["user"]),
        "uid": caps.uid,
        "gid": caps.gid,
        "net": bool(flags & NAMESPACE_FLAGS["net"]),
        "uts": bool(flags & NAMESPACE_FLAGS["uts"]),
        "hostname": "corral",
        "enforced": enforced,
        "missing": missing,
    }


def write_id_maps(pid: int, prepared: dict[str, object]) -> None:
    """Parent side, right after clone: map the caller's uid/gid to themselves inside the new user namespace.

    Identity maps keep file ownership meaningful for the workdir; the child has no capability over anything
    outside its namespaces. setgroups is denied first, as an unprivileged writer must. Raises SetupFailure.
    """
    if not prepared["user"]:
        return
    uid, gid = prepared["uid"], prepared["gid"]
    for name, data in (
        ("setgroups", b"deny"),
        ("uid_map", f"{uid} {uid} 1\n".encode()),
        ("gid_map", f"{gid} {gid} 1\n".encode()),
    ):
        path = f"/proc/{pid}/{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as err:
            raise _sys.SetupFailure(
                "namespaces",
                f"write {name}",
                err.errno or 0,
                path,
                "the fork server must be dumpable and own the child (PR_SET_DUMPABLE 1)",
            ) from err


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


_AT_CLONE = NAMESPACE_FLAGS["user"] | NAMESPACE_FLAGS["pid"]


def clone_flags(prepared: dict[str, object]) -> int:
    """The namespaces the fork server's clone creates: user and pid (see the module docstring)."""
    flags: int = prepared["flags"]  # type: ignore[assignment]
    return flags & _AT_CLONE


def apply(prepared: dict[str, object]) -> None:
    """Child side, first thing after its cgroup placement: unshare the mount, network, ipc and uts
    namespaces, set the hostname in the new UTS namespace and bring loopback up in the new network
    namespace (so servers and tests inside work; nothing outside is reachable). Raises SetupFailure."""
    rest = int(prepared["flags"]) & ~_AT_CLONE & ~NAMESPACE_FLAGS["cgroup"]  # type: ignore[call-overload]
    if rest:
        try:
            _sys.libc_call("unshare", rest)
        except OSError as err:
            raise _sys.SetupFailure("namespaces", f"unshare(flags={rest:#x})", err.errno or 0) from err
    if prepared["uts"]:
        try:
            socket.sethostname(str(prepared["hostname"]))
        except OSError as err:
            raise _sys.SetupFailure("namespaces", "sethostname", err.errno or 0) from err
    if prepared["net"]:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = struct.pack("16sH14s", b"lo", 0, b"")
                flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, ifr))[1]
                fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))
        except OSError as err:
            raise _sys.SetupFailure("namespaces", "ioctl(SIOCSIFFLAGS, lo up)", err.errno or 0) from err
